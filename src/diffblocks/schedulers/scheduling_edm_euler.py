"""Euler sampler in the EDM formulation (Karras et al. 2022): sigmas on a rho-ramp between ``sigma_min`` and
``sigma_max``, model inputs/outputs preconditioned with c_in, c_skip, c_out and timesteps c_noise = log(sigma)/4."""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from .scheduling_euler_discrete import _SCALE_WARNING, reject_integer_timestep
from .scheduling_utils import SchedulerMixin, SchedulerOutputWithX0, SigmaIndexMixin, check_choice, draw_noise

logger = logging.getLogger(__name__)

EDMEulerSchedulerOutput = SchedulerOutputWithX0


class EDMEulerScheduler(SigmaIndexMixin, SchedulerMixin, ConfigMixin):
    """EDM Euler sampler (optionally with churn), for EDM-parameterised models."""

    _compatibles: List[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
    ) -> None:
        owner = type(self).__name__
        check_choice("sigma_schedule", sigma_schedule, ("karras", "exponential"), owner)
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction"), owner)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), owner)
        self.num_inference_steps = None
        ramp = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self._install(ramp, None)
        self.is_scale_input_called = False

    @property
    def init_noise_sigma(self) -> float:
        return (self.config.sigma_max**2 + 1) ** 0.5

    def _ramp_to_sigmas(self, ramp: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.sigma_schedule == "karras":
            lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
            return (hi + ramp * (lo - hi)) ** cfg.rho
        return torch.linspace(math.log(cfg.sigma_min), math.log(cfg.sigma_max), len(ramp)).exp().flip(0)

    def _install(self, ramp: torch.Tensor, device) -> None:
        sig = self._ramp_to_sigmas(ramp).to(dtype=torch.float32, device=device)
        self.timesteps = self.precondition_noise(sig)
        last = sig[-1:] if self.config.final_sigmas_type == "sigma_min" else torch.zeros(1, device=sig.device)
        self.sigmas = torch.cat([sig, last]).to("cpu")
        self._sigma_values = self.sigmas.tolist()
        self._step_index = None
        self._begin_index = None

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      sigmas: Optional[Union[torch.Tensor, List[float]]] = None) -> None:
        """Sigmas from an even ramp of ``num_inference_steps`` points, or from a custom ramp ``sigmas`` in [0, 1]."""
        if sigmas is None:
            if num_inference_steps is None:
                raise ValueError("Must pass `num_inference_steps` or `sigmas`.")
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}")
            ramp = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        elif isinstance(sigmas, float):
            ramp = torch.tensor(sigmas, dtype=torch.float64)
        else:
            ramp = torch.as_tensor(sigmas).to(torch.float64)
        self.num_inference_steps = num_inference_steps
        self._install(ramp, device)

    def precondition_inputs(self, sample: torch.Tensor, sigma) -> torch.Tensor:
        return sample * self._get_conditioning_c_in(sigma)

    def precondition_noise(self, sigma) -> torch.Tensor:
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return 0.25 * torch.log(sigma)

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor, sigma) -> torch.Tensor:
        """Denoised estimate c_skip * sample + c_out * model_output."""
        s = np.float32(sigma)
        sd = self.config.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2) ** 0.5
        if self.config.prediction_type == "v_prediction":
            c_out = -c_out
        return sample * float(c_skip) + model_output * float(c_out)

    def _get_conditioning_c_in(self, sigma):
        return float(1 / (np.float32(sigma) ** 2 + self.config.sigma_data**2) ** 0.5)

    def scale_model_input(self, sample: torch.Tensor, timestep: Union[float, torch.Tensor]) -> torch.Tensor:
        """Scale the sample by c_in(sigma) for the model."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return self.precondition_inputs(sample, self._sigma_values[self._step_index])

    def step(self, model_output: torch.Tensor, timestep: Union[float, torch.Tensor], sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: Optional[torch.Generator] = None, return_dict: bool = True,
             pred_original_sample: Optional[torch.Tensor] = None):
        """One (optionally churned) Euler step in sigma."""
        reject_integer_timestep(timestep, type(self).__name__)
        if not self.is_scale_input_called:
            logger.warning(_SCALE_WARNING)
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sample = sample.to(torch.float32)
        sigma = self._sigma_values[i]
        gamma = min(s_churn / (len(self._sigma_values) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = float(np.float32(sigma) * np.float32(gamma + 1))
        if gamma > 0:
            noise = draw_noise(model_output, generator)
            sample = sample + (noise * s_noise) * float((np.float32(sigma_hat) ** 2 - np.float32(sigma) ** 2) ** 0.5)
        if pred_original_sample is None:
            pred_original_sample = self.precondition_outputs(sample, model_output, sigma_hat)
        dt = self._sigma_values[i + 1] - sigma_hat
        prev = (sample + ((sample - pred_original_sample) / sigma_hat) * dt).to(model_output.dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev, pred_original_sample)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=pred_original_sample)
