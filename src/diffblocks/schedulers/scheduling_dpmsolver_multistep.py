"""DPM-Solver / DPM-Solver++ multistep (Lu et al. 2022), orders 1-3, ODE or SDE variants."""
from __future__ import annotations

import math
from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ._multistep_common import MultistepMixin, flow_sigmas, lincomb, lincomb_fused
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerOutput,
    UnsupportedOptionError,
    check_choice,
    check_num_inference_steps,
    check_one_sigma_ramp,
    check_prediction_type,
    check_spacing,
    draw_noise,
    not_ready_error,
    sigma_to_t,
    train_sigmas,
)

_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")


class DPMSolverMultistepScheduler(MultistepMixin, ConfigMixin):
    """Fast high-order solver of the diffusion ODE (``dpmsolver++``: in data prediction) or SDE (``sde-*``)."""

    _compatibles = list(KARRAS_COMPATIBLES)
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        owner = type(self).__name__
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction", "flow_prediction"), owner)
        if solver_order not in (1, 2, 3):
            raise ValueError(f"`solver_order` must be 1, 2 or 3, got {solver_order!r}")
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), owner)
        self._init_tables(owner)
        if algorithm_type not in _ALGORITHMS:
            if algorithm_type == "deis":  # a DEIS config switched to DPM-Solver
                self.register_to_config(algorithm_type="dpmsolver++")
            else:
                check_choice("algorithm_type", algorithm_type, _ALGORITHMS, owner)
        if solver_type not in ("midpoint", "heun"):
            if solver_type in ("logrho", "bh1", "bh2"):  # DEIS / UniPC solver types map to midpoint
                self.register_to_config(solver_type="midpoint")
            else:
                check_choice("solver_type", solver_type, ("midpoint", "heun"), owner)
        if self.config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                f"{self.config.algorithm_type}. Please choose `sigma_min` instead."
            )
        if self.config.algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise UnsupportedOptionError("`algorithm_type`='sde-dpmsolver' supports `solver_order` 1 or 2 only.")

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        mu: Optional[float] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Build the schedule for ``num_inference_steps`` (or custom integer ``timesteps``)."""
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError("`mu` needs `use_dynamic_shifting=True` and `time_shift_type='exponential'`.")
            self.register_to_config(flow_shift=float(np.exp(mu)))
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"):
                if getattr(cfg, flag):
                    raise ValueError(f"Cannot use `timesteps` with `config.{flag} = True`")
            ts = np.array(timesteps).astype(np.int64)
            n = len(ts)
        else:
            n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            ts = self._spaced(n, last_timestep=int(cfg.num_train_timesteps - clipped.item()))
        base = train_sigmas(self.alphas_cumprod)
        log_base = np.log(base)
        round_ts = cfg.beta_schedule != "squaredcos_cap_v2"
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            sig, ts = self._ramped(n, round_karras=round_ts)
        elif cfg.use_lu_lambdas:
            lambdas = np.flip(log_base.copy())
            ramp = np.linspace(0, 1, n)
            lo, hi = float(lambdas[-1]), float(lambdas[0])
            sig = np.exp(hi + ramp * (lo - hi))
            ts = sigma_to_t(sig, log_base)
            if round_ts:
                ts = ts.round()
        elif cfg.use_flow_sigmas:
            sig = flow_sigmas(n, cfg.num_train_timesteps, cfg.flow_shift)
            ts = (sig * cfg.num_train_timesteps).copy()
        else:
            sig = np.interp(ts, np.arange(0, len(base)), base)
        last = self._sigma_min_train() if cfg.final_sigmas_type == "sigma_min" else 0.0
        self._finish_schedule(ts, np.concatenate([sig, [last]]).astype(np.float32), device)

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """The solver's working quantity: x0 for dpmsolver++ variants, epsilon for dpmsolver variants."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        cfg = self.config
        owner = type(self).__name__
        if cfg.variance_type in ("learned", "learned_range") and cfg.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            x0 = self._x0_from_output(model_output, sample, owner)
            return self._threshold(x0) if cfg.thresholding else x0
        a, s, _ = self._als(self._step_index)
        kind = cfg.prediction_type
        if kind == "epsilon":
            eps = model_output
        elif kind == "sample":
            eps = torch.add(sample, model_output, alpha=-float(a)) / float(s)
        elif kind == "v_prediction":
            eps = torch.add(model_output * float(a), sample, alpha=float(s))
        else:
            raise ValueError(
                f"prediction_type given as {kind} must be one of `epsilon`, `sample`, or `v_prediction` for the {owner}."
            )
        if cfg.thresholding:
            x0 = self._threshold(torch.add(sample, eps, alpha=-float(s)) / float(a))
            eps = torch.add(sample, x0, alpha=-float(a)) / float(s)
        return eps

    # ---------------------------------------------------------------- updates (coefficients as 0-d float32)
    def _first_order(self, m0: torch.Tensor, sample: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        i = self._step_index
        a_t, s_t, l_t = self._als(i + 1)
        a_s, s_s, l_s = self._als(i)
        h = l_t - l_s
        algo = self.config.algorithm_type
        if algo == "dpmsolver++":
            return lincomb([(float(s_t / s_s), sample), (-float(a_t * (torch.exp(-h) - 1.0)), m0)])
        if algo == "dpmsolver":
            return lincomb([(float(a_t / a_s), sample), (-float(s_t * (torch.exp(h) - 1.0)), m0)])
        if algo == "sde-dpmsolver++":
            return lincomb([(float(s_t / s_s * torch.exp(-h)), sample), (float(a_t * (1 - torch.exp(-2.0 * h))), m0),
                            (float(s_t * torch.sqrt(1.0 - torch.exp(-2 * h))), noise)])
        return lincomb([(float(a_t / a_s), sample), (-float(2.0 * (s_t * (torch.exp(h) - 1.0))), m0),
                        (float(s_t * torch.sqrt(torch.exp(2 * h) - 1.0)), noise)])

    def _second_order(self, sample: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        i = self._step_index
        a_t, s_t, l_t = self._als(i + 1)
        a_s0, s_s0, l_s0 = self._als(i)
        _, _, l_s1 = self._als(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = l_t - l_s0, l_s0 - l_s1
        r0 = h_0 / h
        d1 = (m0 - m1) * float(1.0 / r0)
        algo, heun = self.config.algorithm_type, self.config.solver_type == "heun"
        if algo == "dpmsolver++":
            c = a_t * (torch.exp(-h) - 1.0)
            c1 = a_t * ((torch.exp(-h) - 1.0) / h + 1.0) if heun else -0.5 * c
            return lincomb_fused([(float(s_t / s_s0), sample), (-float(c), m0), (float(c1), d1)])
        if algo == "dpmsolver":
            c = s_t * (torch.exp(h) - 1.0)
            c1 = -(s_t * ((torch.exp(h) - 1.0) / h - 1.0)) if heun else -0.5 * c
            return lincomb_fused([(float(a_t / a_s0), sample), (-float(c), m0), (float(c1), d1)])
        if algo == "sde-dpmsolver++":
            c = a_t * (1 - torch.exp(-2.0 * h))
            c1 = a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) if heun else 0.5 * c
            return lincomb_fused([(float(s_t / s_s0 * torch.exp(-h)), sample), (float(c), m0), (float(c1), d1),
                            (float(s_t * torch.sqrt(1.0 - torch.exp(-2 * h))), noise)])
        c = 2.0 * (s_t * (torch.exp(h) - 1.0))
        c1 = -(2.0 * (s_t * ((torch.exp(h) - 1.0) / h - 1.0))) if heun else -(s_t * (torch.exp(h) - 1.0))
        return lincomb_fused([(float(a_t / a_s0), sample), (-float(c), m0), (float(c1), d1),
                        (float(s_t * torch.sqrt(torch.exp(2 * h) - 1.0)), noise)])

    def _third_order(self, sample: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        i = self._step_index
        a_t, s_t, l_t = self._als(i + 1)
        a_s0, s_s0, l_s0 = self._als(i)
        _, _, l_s1 = self._als(i - 1)
        _, _, l_s2 = self._als(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = l_t - l_s0, l_s0 - l_s1, l_s1 - l_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0 = (m0 - m1) * float(1.0 / r0)
        d1_1 = (m1 - m2) * float(1.0 / r1)
        diff = d1_0 - d1_1
        d1 = torch.add(d1_0, diff, alpha=float(r0 / (r0 + r1)))
        d2 = diff * float(1.0 / (r0 + r1))
        algo = self.config.algorithm_type
        if algo == "dpmsolver++":
            e = torch.exp(-h) - 1.0
            return lincomb_fused([(float(s_t / s_s0), sample), (-float(a_t * e), m0), (float(a_t * (e / h + 1.0)), d1),
                            (-float(a_t * ((e + h) / h**2 - 0.5)), d2)])
        if algo == "dpmsolver":
            e = torch.exp(h) - 1.0
            return lincomb_fused([(float(a_t / a_s0), sample), (-float(s_t * e), m0), (-float(s_t * (e / h - 1.0)), d1),
                            (-float(s_t * ((e - h) / h**2 - 0.5)), d2)])
        e2 = 1.0 - torch.exp(-2.0 * h)
        return lincomb_fused([(float(s_t / s_s0 * torch.exp(-h)), sample), (float(a_t * e2), m0),
                        (float(a_t * (e2 / (-2.0 * h) + 1.0)), d1),
                        (float(a_t * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)), d2),
                        (float(s_t * torch.sqrt(1.0 - torch.exp(-2 * h))), noise)])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        """Advance one step with the highest order the stored history allows."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if self._step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        i, n = self._step_index, len(self.timesteps)
        final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        second_last = i == n - 2 and cfg.lower_order_final and n < 15
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [converted]
        sample = sample.to(torch.float32)
        noise = None
        if cfg.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            if variance_noise is None:
                noise = draw_noise(model_output, generator, dtype=torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or final:
            prev = self._first_order(converted, sample, noise)
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second_last:
            prev = self._second_order(sample, noise)
        else:
            prev = self._third_order(sample, noise)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        prev = prev.to(model_output.dtype)
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
