"""Parity harness: run the same fake denoising loop through a diffusers scheduler and ours."""
from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, Optional

import torch

import diffblocks.schedulers as ours

# Errors are measured relative to the largest magnitude of the reference tensor. Single steps from identical
# inputs and whole loops must agree to 1e-6; the one exception (third-order singlestep SDE-DPM-Solver++, whose
# long chains of float32 differences amplify last-bit rounding) gets 2e-6 (see test_parity.py).
STEP_TOL = 1e-6
LOOP_TOL = 1e-6


def both(name: str, config: Dict[str, Any]):
    import diffusers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, name)(**config)
    return ref, getattr(ours, name)(**config)


def fake_model(x: torch.Tensor, t: Any) -> torch.Tensor:
    """Deterministic stand-in for a UNet: depends on the sample and on the timestep."""
    tt = torch.as_tensor(t, dtype=torch.float32)
    return 0.1 * x + 0.05 * torch.cos(tt / 100.0) + 0.02 * torch.sin(x * 3.0)


def start_sample(scheduler) -> torch.Tensor:
    x = torch.linspace(-1.0, 1.0, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    return x * scheduler.init_noise_sigma


def run_loop(scheduler, num_steps: Optional[int], set_kwargs=None, step_kwargs=None, seed: Optional[int] = None,
             record_x0: bool = False):
    set_kwargs = dict(set_kwargs or {})
    if num_steps is not None:
        set_kwargs["num_inference_steps"] = num_steps
    scheduler.set_timesteps(**set_kwargs)
    x = start_sample(scheduler)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x0s = []
    logging.disable(logging.WARNING)
    try:
        for t in scheduler.timesteps:
            xi = scheduler.scale_model_input(x, t)
            kw = dict(step_kwargs or {})
            if gen is not None:
                kw["generator"] = gen
            out = scheduler.step(fake_model(xi, t), t, x, **kw)
            x = out.prev_sample
            if record_x0 and getattr(out, "pred_original_sample", None) is not None:
                x0s.append(out.pred_original_sample)
    finally:
        logging.disable(logging.NOTSET)
    return x, x0s


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().clamp(min=1e-12)
    return ((a.double() - b.double()).abs().max() / scale).item()


def assert_schedule_equal(ref, mine) -> None:
    """timesteps identical (values and dtype); sigmas (when the class has them) to 1e-6 relative."""
    assert mine.timesteps.dtype == ref.timesteps.dtype, (mine.timesteps.dtype, ref.timesteps.dtype)
    assert mine.timesteps.shape == ref.timesteps.shape, (mine.timesteps, ref.timesteps)
    if mine.timesteps.is_floating_point():
        torch.testing.assert_close(mine.timesteps, ref.timesteps, rtol=1e-6, atol=1e-5, equal_nan=True)
    else:
        assert torch.equal(mine.timesteps, ref.timesteps), (mine.timesteps, ref.timesteps)
    rs = getattr(ref, "sigmas", None)
    if isinstance(rs, torch.Tensor):
        ms = mine.sigmas
        assert ms.shape == rs.shape, (ms, rs)
        torch.testing.assert_close(ms.float(), rs.float(), rtol=1e-6, atol=1e-7, equal_nan=True)


def check_parity(name: str, config: Dict[str, Any], num_steps: Optional[int] = 10, set_kwargs=None,
                 step_kwargs=None, seed: Optional[int] = None, tol: float = LOOP_TOL) -> float:
    ref, mine = both(name, config)
    xr, x0r = run_loop(ref, num_steps, set_kwargs, step_kwargs, seed, record_x0=True)
    xm, x0m = run_loop(mine, num_steps, set_kwargs, step_kwargs, seed, record_x0=True)
    assert_schedule_equal(ref, mine)
    assert torch.isfinite(xm).all()
    err = rel_err(xm, xr)
    assert err <= tol, f"{name} {config}: full-loop relative error {err:.3e} > {tol}"
    if x0r and x0m:
        assert len(x0r) == len(x0m)
        e0 = rel_err(x0m[-1], x0r[-1])
        assert e0 <= tol, f"{name} {config}: pred_original_sample relative error {e0:.3e}"
    return err
