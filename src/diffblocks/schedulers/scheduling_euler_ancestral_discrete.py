"""Ancestral Euler sampler: an Euler step down to sigma_down, then fresh noise of size sigma_up."""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from .scheduling_euler_discrete import _SCALE_WARNING, reject_integer_timestep, x0_from_output
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerMixin,
    SchedulerOutputWithX0,
    SigmaIndexMixin,
    check_num_inference_steps,
    check_prediction_type,
    check_spacing,
    draw_noise,
    make_alphas_cumprod,
    not_ready_error,
    spaced_timesteps,
    train_sigmas,
)

logger = logging.getLogger(__name__)

EulerAncestralDiscreteSchedulerOutput = SchedulerOutputWithX0


def ancestral_split(sigma_from: float, sigma_to: float) -> Tuple[float, float]:
    """(sigma_down, sigma_up) with sigma_down**2 + sigma_up**2 == sigma_to**2 (k-diffusion's ancestral step)."""
    if sigma_from == 0:
        return 0.0, 0.0
    up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    down = (sigma_to**2 - up**2) ** 0.5
    return down, up


class EulerAncestralDiscreteScheduler(SigmaIndexMixin, SchedulerMixin, ConfigMixin):
    """Euler ancestral sampling (stochastic; pass a ``generator`` for reproducible noise)."""

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
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "v_prediction", "sample"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__, terminal_floor=True)
        self.alphas = 1.0 - self.betas
        sig = np.concatenate([train_sigmas(self.alphas_cumprod)[::-1], [0.0]]).astype(np.float32)
        self._set_sigmas(torch.from_numpy(sig))
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self.is_scale_input_called = False
        self._step_index = None
        self._begin_index = None

    def _set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.to("cpu")
        self._sigma_values = self.sigmas.tolist()
        self._split = [ancestral_split(a, b) for a, b in zip(self._sigma_values[:-1], self._sigma_values[1:])]

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Space ``num_inference_steps`` timesteps per the config and interpolate their sigmas."""
        cfg = self.config
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        self.num_inference_steps = n
        ts = spaced_timesteps(cfg.timestep_spacing, cfg.num_train_timesteps, n, cfg.steps_offset,
                              round_linspace=False).astype(np.float32)
        base = train_sigmas(self.alphas_cumprod)
        sig = np.concatenate([np.interp(ts, np.arange(0, len(base)), base), [0.0]]).astype(np.float32)
        self._set_sigmas(torch.from_numpy(sig))
        self.timesteps = torch.from_numpy(ts).to(device=device)
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        """One ancestral Euler step; noise is drawn like diffusers draws it for the same ``generator``."""
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
        sigma = self._sigma_values[i]
        down, up = self._split[i]
        out_dtype = model_output.dtype
        if sample.dtype != torch.float32:
            sample = sample.to(torch.float32)
        kind = self._internal_dict["prediction_type"]
        if kind == "epsilon":
            x0 = torch.add(sample, model_output, alpha=-sigma)
        else:
            x0 = x0_from_output(kind, model_output, sample, sigma, type(self).__name__, allow_sample=False)
        if sigma * sigma + 1.0 <= 16.0 * (down * down + 1.0):
            # no large cancellation: (sample - x0) / sigma * (down - sigma) folded into one scaled add; `add`
            # kernels only (a - b == add(a, b, alpha=-1) exactly), cheaper right after a UNet call
            prev = torch.add(sample, torch.add(sample, x0, alpha=-1.0), alpha=(down - sigma) / sigma)
        else:  # a large drop in noise level: the reference's operation order keeps the rounding identical
            prev = sample + ((sample - x0) / sigma) * (down - sigma)
        noise = draw_noise(model_output, generator)
        prev = torch.add(prev, noise, alpha=up)
        if prev.dtype != out_dtype:
            prev = prev.to(out_dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
