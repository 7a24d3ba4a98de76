"""Ancestral DPM-Solver-2: the midpoint step of KDPM2 aimed at sigma_down, plus fresh noise of size sigma_up."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..configuration import ConfigMixin, register_to_config  # noqa: F401
from .scheduling_euler_discrete import x0_from_output
from .scheduling_k_dpm_2_discrete import KDPM2DiscreteScheduler, repeat_after_first
from .scheduling_utils import SchedulerOutputWithX0, draw_noise, sigma_to_t

KDPM2AncestralDiscreteSchedulerOutput = SchedulerOutputWithX0


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """Stochastic second-order sampler (two model calls per step; pass a ``generator`` for reproducibility)."""

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None,
                      num_train_timesteps: Optional[int] = None) -> None:
        """Build the interleaved schedule with the ancestral split of every step."""
        ts, sig, log_base = self._base_schedule(num_inference_steps, num_train_timesteps)
        nxt = sig.roll(-1)
        nxt[-1] = 0.0
        up = (nxt**2 * (sig**2 - nxt**2) / sig**2) ** 0.5
        down = (nxt**2 - up**2) ** 0.5
        down[-1] = 0.0
        mid = sig.log().lerp(down.log(), 0.5).exp()
        mid[-2:] = 0.0
        self._store(sig, mid)
        self.sigmas_up = repeat_after_first(up)
        self.sigmas_down = repeat_after_first(down)
        self._up_values = self.sigmas_up.tolist()
        self._down_values = self.sigmas_down.tolist()
        t_mid = torch.from_numpy(sigma_to_t(mid.numpy(), log_base)).to(dtype=ts.dtype)
        inter = torch.stack((t_mid[:-2, None], ts[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([ts[:1], inter]).to(device)
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def _current_sigma_for_scaling(self) -> float:
        i = self._step_index
        return self._sigma_values[i] if self.state_in_first_order else self._mid_values[i - 1]

    def step(self, model_output: torch.Tensor, timestep: Union[float, torch.Tensor], sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        """Midpoint half-step (first call) or ancestral full step with noise (second call)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        kind = self.config.prediction_type
        if self.state_in_first_order:
            sigma, mid = self._sigma_values[i], self._mid_values[i]
            x0 = x0_from_output(kind, model_output, sample, sigma, type(self).__name__, False)
            d = (sample - x0) / sigma
            self.sample = sample
            self.dt = mid - sigma
            prev = sample + d * (mid - sigma)
        else:
            sigma, mid = self._sigma_values[i - 1], self._mid_values[i - 1]
            up, down = self._up_values[i - 1], self._down_values[i - 1]
            x0 = x0_from_output(kind, model_output, sample, mid, type(self).__name__, False)
            d = (sample - x0) / mid
            prev = self.sample + d * (down - sigma)
            self.sample = None
            noise = draw_noise(model_output, generator)
            prev = prev + noise * up
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
