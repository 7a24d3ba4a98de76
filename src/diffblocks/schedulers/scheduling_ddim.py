"""DDIM (Song et al. 2020): deterministic (eta=0) or partially stochastic jumps between training timesteps."""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ._alpha_common import clip_or_threshold, x0_and_eps
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    AlphaNoiseMixin,
    SchedulerMixin,
    SchedulerOutputWithX0,
    check_num_inference_steps,
    check_prediction_type,
    check_spacing,
    draw_noise,
    make_alphas_cumprod,
    not_ready_error,
    spaced_timesteps,
)

DDIMSchedulerOutput = SchedulerOutputWithX0


class DDIMScheduler(AlphaNoiseMixin, SchedulerMixin, ConfigMixin):
    """Denoising diffusion implicit models; ``eta`` in ``step`` blends in DDPM-like noise."""

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
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__)
        self.alphas = 1.0 - self.betas
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self._abar = self.alphas_cumprod.tolist()
        self._abar_final = float(self.final_alpha_cumprod)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """DDIM needs no input scaling; returns ``sample`` unchanged."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Space ``num_inference_steps`` integer timesteps per ``timestep_spacing``."""
        cfg = self.config
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = n
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset, round_linspace=True)
        self.timesteps = torch.from_numpy(ts.astype(np.int64)).to(device)

    def _abar_at(self, t: int) -> float:
        return self._abar[t] if t >= 0 else self._abar_final

    def _get_variance(self, timestep: int, prev_timestep: int) -> float:
        a_t, a_prev = self._abar_at(int(timestep)), self._abar_at(int(prev_timestep))
        return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Optional[torch.Generator] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ):
        """Jump from ``timestep`` to the previous inference timestep."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        t = int(timestep)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        a_t, a_prev = self._abar_at(t), self._abar_at(prev_t)
        x0, eps = x0_and_eps(self.config.prediction_type, model_output, sample, a_t, type(self).__name__)
        x0 = clip_or_threshold(x0, self.config)
        std = eta * self._get_variance(t, prev_t) ** 0.5
        if use_clipped_model_output:
            eps = torch.add(sample, x0, alpha=-(a_t**0.5)) / ((1 - a_t) ** 0.5)
        direction = max(1 - a_prev - std**2, 0.0) ** 0.5
        prev = torch.add(x0 * (a_prev**0.5), eps, alpha=direction)
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure that either `generator` or "
                    "`variance_noise` stays `None`."
                )
            if variance_noise is None:
                variance_noise = draw_noise(model_output, generator)
            prev = prev + std * variance_noise
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
