"""Trajectory Consistency Distillation sampling (Zheng et al. 2024): strategic stochastic sampling that jumps to
an intermediate timestep s = floor((1 - eta) * t_prev) and re-noises from there (``eta`` = gamma)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..models.outputs import BaseOutput
from ._alpha_common import x0_and_eps
from .scheduling_lcm import LCMScheduler
from .scheduling_utils import draw_noise, not_ready_error


@dataclass
class TCDSchedulerOutput(BaseOutput):
    """``prev_sample`` and ``pred_noised_sample`` (the estimate re-noised to the intermediate timestep s)."""

    prev_sample: torch.Tensor
    pred_noised_sample: Optional[torch.Tensor] = None


class TCDScheduler(LCMScheduler):
    """TCD sampler for TCD-distilled SD/SDXL checkpoints (``eta`` in ``step`` controls the stochasticity)."""

    def _origin_timesteps(self, original_inference_steps: Optional[int], strength: float):
        if original_inference_steps is None:
            return super()._origin_timesteps(None, strength)
        # an explicit original schedule length makes every training timestep eligible (reference behaviour)
        return np.asarray(list(range(0, int(self.config.num_train_timesteps * strength)))), original_inference_steps

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.3,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        """Estimate x0, re-noise it to s = floor((1 - eta) * t_prev), then (eta > 0) diffuse forward to t_prev."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if not 0 <= eta <= 1.0:
            raise ValueError(f"`eta` must be between 0 and 1, got {eta!r}")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        prev_t = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else torch.tensor(0)
        s_t = int(torch.floor((1 - eta) * prev_t).to(dtype=torch.long))
        prev_t = int(prev_t)
        a_t = self._abar_at(int(timestep))
        a_prev = self._abar_at(prev_t)
        a_s = self._abar[s_t]
        x0, eps = x0_and_eps(self.config.prediction_type, model_output, sample, a_t, type(self).__name__)
        noised = x0 * float(np.sqrt(a_s)) + eps * float(np.sqrt(1 - a_s))
        if eta > 0 and i != self.num_inference_steps - 1:
            noise = draw_noise(model_output, generator, dtype=noised.dtype)
            ratio = a_prev / a_s
            prev = noised * float(np.sqrt(ratio)) + noise * float(np.sqrt(1 - ratio))
        else:
            prev = noised
        self._step_index = i + 1
        if not return_dict:
            return (prev, noised)
        return TCDSchedulerOutput(prev_sample=prev, pred_noised_sample=noised)
