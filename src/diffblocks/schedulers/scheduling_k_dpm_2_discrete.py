"""DPM-Solver-2 in k-diffusion's form: an Euler half-step to the log-midpoint sigma, then a full step using the
slope measured there. Like Heun it calls the model twice per step (``order = 2``)."""
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
    sigma_to_t,
)

KDPM2DiscreteSchedulerOutput = SchedulerOutputWithX0


def repeat_after_first(values: torch.Tensor) -> torch.Tensor:
    """[v0, v1, v1, ..., vN, vN, vN]: the layout of the two-evaluation schedules."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class KDPM2DiscreteScheduler(SigmaIndexMixin, SchedulerMixin, ConfigMixin):
    """Second-order DPM-Solver-2 sampler (deterministic)."""

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
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "v_prediction"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__)
        self.alphas = 1.0 - self.betas
        self.set_timesteps(num_train_timesteps, None, num_train_timesteps)
        self._step_index = None
        self._begin_index = None

    def _base_schedule(self, num_inference_steps: int, num_train_timesteps: Optional[int]):
        n = check_num_inference_steps(num_inference_steps, num_train_timesteps or self.config.num_train_timesteps)
        self.num_inference_steps = n
        ts, sig, log_base = discrete_sigma_schedule(self.config, self.alphas_cumprod, n, num_train_timesteps,
                                                    round_karras=True)
        self.log_sigmas = torch.from_numpy(log_base)
        sig = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        return torch.from_numpy(np.asarray(ts)), sig, log_base

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None,
                      num_train_timesteps: Optional[int] = None) -> None:
        """Build the interleaved (sigma, midpoint sigma) schedule for ``num_inference_steps``."""
        ts, sig, log_base = self._base_schedule(num_inference_steps, num_train_timesteps)
        mid = sig.log().lerp(sig.roll(1).log(), 0.5).exp()
        self._store(sig, mid)
        t_mid = torch.from_numpy(sigma_to_t(mid.numpy(), log_base)).to(dtype=ts.dtype)
        inter = torch.stack((t_mid[1:-1, None], ts[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([ts[:1], inter]).to(device)
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def _store(self, sig: torch.Tensor, mid: torch.Tensor) -> None:
        self.sigmas = repeat_after_first(sig).to("cpu")
        self.sigmas_interpol = repeat_after_first(mid).to("cpu")
        self._sigma_values = self.sigmas.tolist()
        self._mid_values = self.sigmas_interpol.tolist()

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def _current_sigma_for_scaling(self) -> float:
        i = self._step_index
        return self._sigma_values[i] if self.state_in_first_order else self._mid_values[i]

    def step(self, model_output: torch.Tensor, timestep: Union[float, torch.Tensor], sample: torch.Tensor,
             return_dict: bool = True):
        """Half-step to the midpoint sigma (first call) or full step with the midpoint slope (second call)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if self.state_in_first_order:
            sigma, target = self._sigma_values[i], self._mid_values[i + 1]
            x0 = x0_from_output(self.config.prediction_type, model_output, sample, sigma, type(self).__name__, False)
            d = (sample - x0) / sigma
            self.sample = sample
            prev = sample + d * (target - sigma)
        else:
            sigma, mid, nxt = self._sigma_values[i - 1], self._mid_values[i], self._sigma_values[i]
            x0 = x0_from_output(self.config.prediction_type, model_output, sample, mid, type(self).__name__, False)
            d = (sample - x0) / mid
            prev = self.sample + d * (nxt - sigma)
            self.sample = None
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
