"""PNDM (Liu et al. 2022): pseudo linear multistep on epsilon, with an optional Runge-Kutta (PRK) warm-up."""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    AlphaNoiseMixin,
    SchedulerMixin,
    SchedulerOutput,
    check_num_inference_steps,
    check_prediction_type,
    check_spacing,
    make_alphas_cumprod,
    not_ready_error,
)

# Adams-Bashforth weights for 1..4 stored epsilons (newest first)
_PLMS_WEIGHTS = {2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


class PNDMScheduler(AlphaNoiseMixin, SchedulerMixin, ConfigMixin):
    """Pseudo numerical methods for diffusion models. Stable Diffusion 1.x ships with ``skip_prk_steps=True``."""

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
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "v_prediction"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__)
        self.alphas = 1.0 - self.betas
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self._abar = self.alphas_cumprod.tolist()
        self._abar_final = float(self.final_alpha_cumprod)
        self.init_noise_sigma = 1.0
        self.pndm_order = 4
        self.cur_model_output = 0
        self.counter = 0
        self.cur_sample = None
        self.ets: List[torch.Tensor] = []
        self.num_inference_steps = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Build the PRK + PLMS timestep sequence for ``num_inference_steps``."""
        cfg = self.config
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = n
        T = cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":
            base = np.linspace(0, T - 1, n).round().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            base = (np.arange(0, n) * (T // n)).round() + cfg.steps_offset
        else:
            base = np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1
        self._timesteps = base  # ascending
        if cfg.skip_prk_steps:
            self.prk_timesteps = np.array([])
            self.plms_timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
        else:
            half = T // n // 2
            prk = np.array(base[-self.pndm_order:]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = base[:-3][::-1].copy()
        ts = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device)
        self.ets = []
        self.counter = 0
        self.cur_model_output = 0
        self.cur_sample = None

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """PNDM needs no input scaling; returns ``sample`` unchanged."""
        return sample

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True):
        """Dispatch to the Runge-Kutta warm-up or the linear multistep update."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict=return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict=return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True):
        """Fourth-order Runge-Kutta stage (four model calls per inference step)."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        stage = self.counter % 4
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_t = int(timestep) - (0 if self.counter % 2 else half)
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        if stage == 0:
            self.cur_model_output = self.cur_model_output + model_output / 6
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + model_output / 3
        else:
            model_output = self.cur_model_output + model_output / 6
            self.cur_model_output = 0
        base = self.cur_sample if self.cur_sample is not None else sample
        prev = self._get_prev_sample(base, t, prev_t, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def step_plms(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, return_dict: bool = True):
        """Linear multistep update from the stored epsilons."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                f"{type(self).__name__} can only be run AFTER scheduler has been run in 'prk' mode for at least 12 "
                "iterations (set `skip_prk_steps=True` to use PLMS steps only)."
            )
        stride = self.config.num_train_timesteps // self.num_inference_steps
        t = int(timestep)
        prev_t = t - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_t, t = t, t + stride
        n = len(self.ets)
        if n == 1 and self.counter == 0:
            self.cur_sample = sample
        elif n == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        else:
            w = _PLMS_WEIGHTS[min(n, 4)]
            model_output = self.ets[-1] * w[0]
            for k in range(1, len(w)):
                model_output = torch.add(model_output, self.ets[-1 - k], alpha=w[k])
        prev = self._get_prev_sample(sample, t, prev_t, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _get_prev_sample(self, sample: torch.Tensor, timestep: int, prev_timestep: int, model_output: torch.Tensor) -> torch.Tensor:
        a_t = self._abar[timestep]
        a_prev = self._abar[prev_timestep] if prev_timestep >= 0 else self._abar_final
        if self.config.prediction_type == "v_prediction":
            model_output = torch.add(model_output * a_t**0.5, sample, alpha=(1 - a_t) ** 0.5)
        c_x = (a_prev / a_t) ** 0.5
        denom = a_t * (1 - a_prev) ** 0.5 + (a_t * (1 - a_t) * a_prev) ** 0.5
        return torch.add(sample * c_x, model_output, alpha=-(a_prev - a_t) / denom)
