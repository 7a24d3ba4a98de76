"""Heun's method (Karras et al. 2022, algorithm 1): an Euler predictor and a trapezoidal corrector per step.

Each sigma except the first appears twice in ``sigmas``/``timesteps``: the model is called once for the
predictor and once for the corrector, so a pipeline loop of ``len(timesteps)`` iterations makes 2N-1 calls.
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from .scheduling_euler_discrete import x0_from_output
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerMixin,
    SchedulerOutputWithX0,
    SigmaIndexMixin,
    check_num_inference_steps,
    check_one_sigma_ramp,
    check_prediction_type,
    check_spacing,
    discrete_sigma_schedule,
    make_alphas_cumprod,
)

HeunDiscreteSchedulerOutput = SchedulerOutputWithX0


def interleave(values: torch.Tensor, keep_last: bool = True) -> torch.Tensor:
    """[v0, v1, v1, v2, v2, ...]: every entry after the first repeated (the last one only if ``keep_last``)."""
    if keep_last:
        return torch.cat([values[:1], values[1:-1].repeat_interleave(2), values[-1:]])
    return torch.cat([values[:1], values[1:].repeat_interleave(2)])


class HeunDiscreteScheduler(SigmaIndexMixin, SchedulerMixin, ConfigMixin):
    """Second-order deterministic sampler (two model evaluations per step)."""

    _compatibles = list(KARRAS_COMPATIBLES)
    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        clip_sample: Optional[bool] = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "v_prediction", "sample"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__, extra=("exp",))
        self.alphas = 1.0 - self.betas
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self.use_karras_sigmas = use_karras_sigmas
        self._step_index = None
        self._begin_index = None

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        num_train_timesteps: Optional[int] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Build the interleaved schedule for ``num_inference_steps`` (or custom ``timesteps``)."""
        cfg = self.config
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if getattr(cfg, flag):
                    raise ValueError(f"Cannot set `timesteps` with `config.{flag} = True`.")
            n = len(timesteps)
        else:
            n = check_num_inference_steps(num_inference_steps, num_train_timesteps or cfg.num_train_timesteps)
        self.num_inference_steps = n
        ts, sig, _ = discrete_sigma_schedule(cfg, self.alphas_cumprod, n, num_train_timesteps, timesteps)
        sig = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self.sigmas = interleave(sig).to("cpu")
        self._sigma_values = self.sigmas.tolist()
        self.timesteps = interleave(torch.from_numpy(np.asarray(ts)), keep_last=False).to(device=device, dtype=torch.float32)
        self.prev_derivative = None
        self.dt = None
        self.sample = None
        self._step_index = None
        self._begin_index = None

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        return_dict: bool = True,
    ):
        """Predictor (Euler) on even calls, corrector (average of the two slopes) on odd calls."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        first = self.state_in_first_order
        if first:
            sigma, sigma_next = self._sigma_values[i], self._sigma_values[i + 1]
        else:
            sigma, sigma_next = self._sigma_values[i - 1], self._sigma_values[i]
        cfg = self.config
        sigma_in = sigma if first else sigma_next
        x0 = x0_from_output(cfg.prediction_type, model_output, sample, sigma_in, type(self).__name__)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        derivative = (sample - x0) / sigma_in
        if first:
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
            prev = sample + derivative * dt
        else:
            slope = (self.prev_derivative + derivative) / 2
            prev = self.sample + slope * self.dt
            self.prev_derivative = self.dt = self.sample = None
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
