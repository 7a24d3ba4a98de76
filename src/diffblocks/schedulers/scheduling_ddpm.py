"""DDPM (Ho et al. 2020): ancestral sampling of the posterior q(x_{t-1} | x_t, x0)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ._alpha_common import clip_or_threshold, x0_and_eps
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    AlphaNoiseMixin,
    SchedulerMixin,
    SchedulerOutputWithX0,
    check_choice,
    check_num_inference_steps,
    check_prediction_type,
    check_spacing,
    draw_noise,
    make_alphas_cumprod,
    spaced_timesteps,
)

DDPMSchedulerOutput = SchedulerOutputWithX0

_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMScheduler(AlphaNoiseMixin, SchedulerMixin, ConfigMixin):
    """Denoising diffusion probabilistic models (stochastic at every step but the last)."""

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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction"), type(self).__name__)
        check_choice("variance_type", variance_type, _VARIANCE_TYPES, type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(
            self.config, type(self).__name__, extra=("sigmoid", "laplace"))
        self.alphas = 1.0 - self.betas
        self._abar = list(self.alphas_cumprod.numpy())  # float32 scalars: coefficients round like diffusers'
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type
        self._prev: Optional[Dict[int, int]] = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """DDPM needs no input scaling; returns ``sample`` unchanged."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[List[int]] = None,
    ) -> None:
        """Use ``num_inference_steps`` spaced timesteps, or a custom descending list ``timesteps``."""
        cfg = self.config
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            if len(ts) == 0:
                raise ValueError("`timesteps` must contain at least one timestep.")
            if any(b >= a for a, b in zip(ts, ts[1:])):
                raise ValueError("`custom_timesteps` must be in descending order.")
            if ts[0] >= cfg.num_train_timesteps:
                raise ValueError(
                    f"`timesteps` must start before `self.config.train_timesteps`: {cfg.num_train_timesteps}."
                )
            arr = np.array(ts, dtype=np.int64)
            self.custom_timesteps = True
        else:
            n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            self.num_inference_steps = n
            self.custom_timesteps = False
            arr = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset,
                                   round_linspace=True).astype(np.int64)
        self.timesteps = torch.from_numpy(arr).to(device)
        seq = arr.tolist()
        self._prev = {}
        for j, t in enumerate(seq):
            self._prev.setdefault(t, seq[j + 1] if j + 1 < len(seq) else -1)

    def previous_timestep(self, timestep: Union[int, torch.Tensor]) -> int:
        t = int(timestep)
        if self._prev is not None and (self.custom_timesteps or self.num_inference_steps):
            if t not in self._prev:
                raise ValueError(f"`timestep` {t} is not one of this scheduler's `timesteps`.")
            return self._prev[t]
        return t - 1

    def _variance(self, t: int, prev_t: int, predicted_variance: Optional[torch.Tensor], variance_type: str):
        a_t = self._abar[t]
        a_prev = self._abar[prev_t] if prev_t >= 0 else np.float32(1.0)
        beta_t = 1 - a_t / a_prev
        var = max(float((1 - a_prev) / (1 - a_t) * beta_t), 1e-20)
        beta_t = float(beta_t)
        if variance_type == "fixed_small":
            return var
        if variance_type == "fixed_small_log":
            return math.exp(0.5 * math.log(var))
        if variance_type == "fixed_large":
            return beta_t
        if variance_type == "fixed_large_log":
            return math.log(beta_t)
        if variance_type == "learned":
            return predicted_variance
        frac = (predicted_variance + 1) / 2  # learned_range
        return frac * math.log(beta_t) + (1 - frac) * math.log(var)

    def _get_variance(self, t: int, predicted_variance: Optional[torch.Tensor] = None, variance_type: Optional[str] = None):
        return self._variance(int(t), self.previous_timestep(t), predicted_variance, variance_type or self.config.variance_type)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        """Sample x_{t-1} from the posterior given the model's prediction at ``timestep``."""
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        a_t = self._abar[t]
        a_prev = self._abar[prev_t] if prev_t >= 0 else np.float32(1.0)
        cur_alpha = a_t / a_prev
        cur_beta = 1 - cur_alpha
        x0, _ = x0_and_eps(self.config.prediction_type, model_output, sample, a_t, type(self).__name__)
        x0 = clip_or_threshold(x0, self.config)
        c_x0 = float(a_prev**0.5 * cur_beta / (1 - a_t))
        c_x = float(cur_alpha**0.5 * (1 - a_prev) / (1 - a_t))
        prev = x0 * c_x0 + sample * c_x
        if t > 0:
            noise = draw_noise(model_output, generator)
            var = self._variance(t, prev_t, predicted_variance, self.variance_type)
            if self.variance_type == "fixed_small_log":
                prev = prev + var * noise
            elif self.variance_type == "learned_range":
                prev = prev + torch.exp(0.5 * var) * noise
            elif isinstance(var, torch.Tensor):
                prev = prev + var**0.5 * noise
            else:
                prev = prev + (var**0.5 if var >= 0 else float("nan")) * noise
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
