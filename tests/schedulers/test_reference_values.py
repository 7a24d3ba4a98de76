"""Independent check (no diffusers at run time): full-loop sums published by diffusers' own scheduler tests for
their deterministic dummy sample and dummy model ``sample * t / (t + 1)``."""
from __future__ import annotations

import pytest
import torch

import diffblocks.schedulers as ours


def _dummy_sample() -> torch.Tensor:
    b, c, h, w = 4, 3, 8, 8
    n = b * c * h * w
    return (torch.arange(n).reshape(c, h, w, b) / n).permute(3, 0, 1, 2)


def _loop(s, steps: int = 10, **step_kwargs) -> torch.Tensor:
    s.set_timesteps(steps)
    x = _dummy_sample() * s.init_noise_sigma
    for t in s.timesteps:
        xi = s.scale_model_input(x, t)
        x = s.step(xi * t / (t + 1), t, x, **step_kwargs).prev_sample
    return x


LINEAR = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


def test_ddim_full_loop_reference_values():
    x = _loop(ours.DDIMScheduler(clip_sample=True, **LINEAR), eta=0.0)
    assert x.abs().sum().item() == pytest.approx(172.0067, abs=1e-2)
    assert x.abs().mean().item() == pytest.approx(0.223967, abs=1e-3)


def test_pndm_full_loop_reference_values():
    x = _loop(ours.PNDMScheduler(**LINEAR))
    assert x.abs().sum().item() == pytest.approx(198.1318, abs=1e-2)
