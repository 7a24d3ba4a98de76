"""Linear multistep (LMS) sampler in sigma: the next sample integrates the Lagrange polynomial through the last
``order`` derivatives (k-diffusion's ``sample_lms``)."""
from __future__ import annotations

import logging
import warnings
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

logger = logging.getLogger(__name__)

LMSDiscreteSchedulerOutput = SchedulerOutputWithX0

# 4-point Gauss-Legendre rule: exact for the (at most cubic) Lagrange basis polynomials integrated here
_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)


def lms_coefficient(sigmas: List[float], order: int, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial that is 1 at sigma_{i-j} and 0 at the
    other ``order - 1`` previous sigmas."""
    a, b = sigmas[i], sigmas[i + 1]
    tau = 0.5 * (b - a) * _GL_X + 0.5 * (a + b)
    prod = np.ones_like(tau)
    for k in range(order):
        if k != j:
            prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
    return float(0.5 * (b - a) * np.dot(_GL_W, prod))


class LMSDiscreteScheduler(SigmaIndexMixin, SchedulerMixin, ConfigMixin):
    """Linear multistep sampler (deterministic; ``order`` in ``step`` chooses how many past slopes are used)."""

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
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "v_prediction", "sample"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__)
        self.alphas = 1.0 - self.betas
        self.num_inference_steps = None
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps, None)
        self.derivatives: List[torch.Tensor] = []
        self.is_scale_input_called = False
        self._step_index = None
        self._begin_index = None

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Space ``num_inference_steps`` timesteps per the config and interpolate (or ramp) their sigmas."""
        n = check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        self.num_inference_steps = n
        ts, sig, _ = discrete_sigma_schedule(self.config, self.alphas_cumprod, n, karras_bounds_from_config=False)
        self.sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self._sigma_values = self.sigmas.tolist()
        self.timesteps = torch.from_numpy(np.asarray(ts)).to(device=device, dtype=torch.float32)
        self._coeff_cache = {}
        self._step_index = None
        self._begin_index = None
        self.derivatives = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """LMS weight of the derivative ``current_order`` steps back, for step ``t`` with ``order`` terms."""
        key = (order, t, current_order)
        hit = self._coeff_cache.get(key)
        if hit is None:
            hit = self._coeff_cache[key] = lms_coefficient(self._sigma_values, order, t, current_order)
        return hit

    def step(self, model_output: torch.Tensor, timestep: Union[float, torch.Tensor], sample: torch.Tensor,
             order: int = 4, return_dict: bool = True):
        """Record this step's slope and move with the LMS combination of the last ``order`` slopes."""
        if not self.is_scale_input_called:
            warnings.warn(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example."
            )
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"`order` must be a positive int, got {order!r}")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sigma = self._sigma_values[i]
        x0 = x0_from_output(self.config.prediction_type, model_output, sample, sigma, type(self).__name__)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        use = min(i + 1, order)
        terms = [(self.get_lms_coefficient(use, i, k), d) for k, d in enumerate(reversed(self.derivatives))]
        prev = sample
        for c, d in terms:
            prev = prev + c * d
        self._step_index = i + 1
        if not return_dict:
            return (prev, x0)
        return SchedulerOutputWithX0(prev_sample=prev, pred_original_sample=x0)
