"""Helpers of the alpha-parameterised (DDPM-family) schedulers: x0 / epsilon from a model output."""
from __future__ import annotations

from typing import Any, Tuple

import torch

from .scheduling_utils import threshold_sample


def x0_and_eps(kind: str, model_output: torch.Tensor, sample: torch.Tensor, abar: float, owner: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) for a sample sqrt(abar) x0 + sqrt(1 - abar) eps and a prediction of type ``kind``."""
    a, b = float(abar**0.5), float((1 - abar) ** 0.5)
    if kind == "epsilon":
        return torch.add(sample, model_output, alpha=-b) / a, model_output
    if kind == "sample":
        return model_output, torch.add(sample, model_output, alpha=-a) / b
    if kind == "v_prediction":
        return torch.add(sample * a, model_output, alpha=-b), torch.add(model_output * a, sample, alpha=b)
    raise ValueError(
        f"prediction_type given as {kind} must be one of `epsilon`, `sample`, or `v_prediction` for {owner}."
    )


def clip_or_threshold(x0: torch.Tensor, config: Any) -> torch.Tensor:
    """Apply dynamic thresholding or plain clipping of x0 as the config asks."""
    if config.thresholding:
        return threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if getattr(config, "clip_sample", False):
        return x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0
