"""Euler sampler (Karras et al. 2022, algorithm 2) over a discrete-time noise schedule, with optional churn."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerMixin,
    SchedulerOutputWithX0,
    SigmaIndexMixin,
    apply_sigma_ramp,
    check_choice,
    check_num_inference_steps,
    check_one_sigma_ramp,
    check_prediction_type,
    check_spacing,
    draw_noise,
    make_alphas_cumprod,
    not_ready_error,
    sigma_to_t,
    spaced_timesteps,
    train_sigmas,
)

logger = logging.getLogger(__name__)

EulerDiscreteSchedulerOutput = SchedulerOutputWithX0

_F32 = torch.float32

_SCALE_WARNING = (
    "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
    "See `StableDiffusionPipeline` for a usage example."
)


def reject_integer_timestep(timestep, owner: str) -> None:
    """Sigma samplers are indexed by the values of ``timesteps``; a loop counter passed by mistake is refused."""
    if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
        raise ValueError(
            f"Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `{owner}.step()` is not "
            "supported. Make sure to pass one of the `scheduler.timesteps` as a timestep."
        )


def x0_from_output(kind: str, model_output: torch.Tensor, sample: torch.Tensor, sigma: float, owner: str,
                   allow_sample: bool = True) -> torch.Tensor:
    """Denoised estimate for a sigma-parameterised sample (``sample`` is x0 + sigma * noise)."""
    if kind == "epsilon":
        return torch.add(sample, model_output, alpha=-sigma)
    if kind == "v_prediction":
        s = np.float32(sigma)  # float32 scalar maths, as the reference computes it
        return model_output * float(-s / np.sqrt(s * s + 1)) + sample / float(s * s + 1)
    if kind in ("sample", "original_sample") and allow_sample:
        return model_output
    if kind == "sample":
        raise NotImplementedError(f"prediction_type not implemented yet: sample (for {owner})")
    raise ValueError(f"prediction_type given as {kind} must be one of `epsilon`, or `v_prediction`")


class EulerDiscreteScheduler(SigmaIndexMixin, SchedulerMixin, ConfigMixin):
    """First-order Euler steps between noise levels; ``s_churn`` adds fresh noise before a step (Karras' SDE
    variant)."""

    _compatibles = list(KARRAS_COMPATIBLES)
    order = 1
    _fast_plan = None  # (config dict it was built for, _epsilon_plan()) once an epsilon step has run

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "v_prediction", "sample", "original_sample"), type(self).__name__)
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"), type(self).__name__)
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"), type(self).__name__)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__, terminal_floor=True)
        self.alphas = 1.0 - self.betas
        sig = torch.from_numpy(train_sigmas(self.alphas_cumprod)).flip(0)
        self.num_inference_steps = None
        if self._continuous_v():
            self.timesteps = 0.25 * sig.log()
        else:
            self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy()).float()
        self._set_sigmas(torch.cat([sig, torch.zeros(1)]))
        self.is_scale_input_called = False
        self.use_karras_sigmas = use_karras_sigmas
        self.use_exponential_sigmas = use_exponential_sigmas
        self.use_beta_sigmas = use_beta_sigmas
        self._step_index = None
        self._begin_index = None

    def _continuous_v(self) -> bool:
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def _set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.to("cpu")
        self._sigma_values = self.sigmas.tolist()
        self._fast_plan = None

    def _epsilon_plan(self) -> List[Optional[Tuple[float, float]]]:
        """Per step index, ``(-sigma, sigma_next - sigma)`` when a churn-free epsilon step folds into one add
        (see ``step``), else None. Built once per schedule so a step reads two ready floats."""
        values = self._sigma_values
        plan = []
        for sigma, sigma_next in zip(values[:-1], values[1:]):
            fused = sigma * sigma + 1.0 <= 16.0 * (sigma_next * sigma_next + 1.0)
            plan.append((-sigma, sigma_next - sigma) if fused else None)
        return plan

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[List[float]] = None,
        sigmas: Optional[List[float]] = None,
    ) -> None:
        """Choose the inference schedule: ``num_inference_steps`` spaced per the config, or custom ``timesteps``
        or ``sigmas`` (one more than the number of steps, ending with the final sigma)."""
        cfg = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` should be set.")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas`.")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if getattr(cfg, flag):
                    raise ValueError(f"Cannot set `timesteps` with `config.{flag} = True`.")
            if self._continuous_v():
                raise ValueError(
                    "Cannot set `timesteps` with `config.timestep_type = 'continuous'` and "
                    "`config.prediction_type = 'v_prediction'`."
                )
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
            if num_inference_steps < 1:
                raise ValueError("`timesteps`/`sigmas` must describe at least one step.")
        else:
            num_inference_steps = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = num_inference_steps

        base = train_sigmas(self.alphas_cumprod)
        log_base = np.log(base)
        if sigmas is not None:
            sig = np.array(sigmas).astype(np.float32)
            ts = sigma_to_t(sig[:-1], log_base)
        else:
            if timesteps is not None:
                ts = np.array(timesteps).astype(np.float32)
            else:
                ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, num_inference_steps,
                                      cfg.steps_offset, round_linspace=False).astype(np.float32)
            if cfg.interpolation_type == "linear":
                sig = np.interp(ts, np.arange(0, len(base)), base)
            else:
                sig = torch.linspace(float(np.log(base[-1])), float(np.log(base[0])), num_inference_steps + 1).exp().numpy()
            ramp = apply_sigma_ramp(cfg, sig, num_inference_steps)
            if ramp is not None:
                sig = ramp
                ts = sigma_to_t(sig, log_base)
            last = float(base[0]) if cfg.final_sigmas_type == "sigma_min" else 0.0
            sig = np.concatenate([sig, [last]]).astype(np.float32)
        sig_t = torch.from_numpy(sig).to(dtype=torch.float32)
        if self._continuous_v():
            self.timesteps = (0.25 * sig_t[:-1].log()).to(device=device)
        else:
            self.timesteps = torch.from_numpy(np.asarray(ts).astype(np.float32)).to(device=device)
        self._set_sigmas(sig_t)
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        """Move ``sample`` from this step's sigma to the next one with one Euler step."""
        entry = None if s_churn else self._plain_entry(model_output, timestep, sample)
        if entry is not None:
            x0 = sample.add(model_output, alpha=entry[0])
            prev = sample.add(model_output, alpha=entry[1])
            self._step_index += 1
            if not return_dict:
                return (prev, x0)
            return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
        if type(timestep) is int or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            reject_integer_timestep(timestep, type(self).__name__)
        if self.num_inference_steps is None:
            raise not_ready_error()
        if not self.is_scale_input_called:
            logger.warning(_SCALE_WARNING)
        i = self._step_index
        if i is None:
            self._init_step_index(timestep)
            i = self._step_index
        values = self._sigma_values
        sigma = values[i]
        sigma_next = values[i + 1]
        if s_churn and s_tmin <= sigma <= s_tmax:
            gamma = min(s_churn / (len(values) - 1), 2**0.5 - 1)
        else:
            gamma = 0.0
        sigma_hat = sigma * (gamma + 1)
        out_dtype = model_output.dtype
        if sample.dtype != torch.float32:
            sample = sample.to(torch.float32)
        if gamma > 0:
            noise = draw_noise(model_output, generator)
            sample = sample + noise * (s_noise * (sigma_hat**2 - sigma**2) ** 0.5)
        dt = sigma_next - sigma_hat
        kind = self._internal_dict["prediction_type"]
        if kind == "epsilon":
            fast = self._fast_plan
            if fast is None or fast[0] is not self._internal_dict:
                self._fast_plan = (self._internal_dict, self._epsilon_plan())
            x0 = sample.add(model_output, alpha=-sigma_hat)
        else:
            x0 = x0_from_output(kind, model_output, sample, sigma, type(self).__name__)
        # slope measured through x0 (not taken as the raw output) so huge sigmas round as in diffusers
        if sigma_hat * sigma_hat + 1.0 <= 16.0 * (sigma_next * sigma_next + 1.0):
            # the result keeps at least a quarter of the sample's scale, so folding
            # (sample - x0) / sigma_hat * dt into one scaled add only moves last-bit rounding (the loop parity
            # tests hold it to 1e-6). Only `add` kernels (a - b == add(a, b, alpha=-1) exactly): right after a UNet
            # call every distinct kernel pays a cold-cache start, so fewer kernel types are measurably cheaper
            if kind == "epsilon" and out_dtype == torch.float32:
                # (sample - x0) / sigma_hat is the prediction itself up to the rounding of sample's scale
                prev = sample.add(model_output, alpha=dt)
            else:
                prev = sample.add(sample.add(x0, alpha=-1.0), alpha=dt / sigma_hat)
        else:
            # a large drop in noise level (e.g. the first step of a zero-SNR schedule) cancels most of the
            # sample: keep the reference's operation order so the rounding matches
            prev = sample + ((sample - x0) / sigma_hat) * dt
        if prev.dtype != out_dtype:
            prev = prev.to(out_dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)

    def _plain_entry(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor):
        """``(-sigma, sigma_next - sigma)`` when this step folds into single adds (``_epsilon_plan``): epsilon
        prediction on float32, index known, plan built for the current config; else None (the general path)."""
        fast = self._fast_plan
        i = self._step_index
        if (
            fast is None
            or i is None
            or fast[0] is not self._internal_dict
            or not self.is_scale_input_called
            or type(timestep) is int
            or sample.dtype is not _F32
            or model_output.dtype is not _F32
        ):
            return None
        entry = fast[1][i]
        if entry is not None and isinstance(timestep, torch.Tensor) and not timestep.is_floating_point():
            return None
        return entry

    def next_sample(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, s_churn: float = 0.0,
                    generator: Optional[torch.Generator] = None, **kwargs: Any) -> torch.Tensor:
        """``step(...).prev_sample``; a plain epsilon step skips computing ``pred_original_sample`` (one add)."""
        entry = None if s_churn or kwargs else self._plain_entry(model_output, timestep, sample)
        if entry is None:
            return self.step(model_output, timestep, sample, s_churn=s_churn, generator=generator, return_dict=False,
                             **kwargs)[0]
        prev = sample.add(model_output, alpha=entry[1])
        self._step_index += 1
        return prev

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target at ``timesteps`` (values of ``self.timesteps``)."""
        reject_integer_timestep(timesteps, type(self).__name__)
        idx = self._noise_indices(timesteps, sample.device) if self._begin_index is None else [
            self.index_for_timestep(t, self.timesteps.to(sample.device)) for t in timesteps.to(sample.device)]
        a = self.alphas_cumprod.to(sample)[idx]
        shape = (-1,) + (1,) * (sample.ndim - 1)
        return a.sqrt().reshape(shape) * noise - (1 - a).sqrt().reshape(shape) * sample
