"""Scheduler benchmarks: ``set_timesteps(50)`` + a full 50-step loop on a 1x4x128x128 (SDXL-size) latent.

One case per scheduler (``sched_<Class>``), impls ``diffblocks`` and ``diffusers``, value in milliseconds, target
ratio 1.0. The fake model output is a fixed tensor (so only scheduler work is timed); stochastic samplers get a
seeded CPU generator. Each process runs the loop once untimed (imports, lazy caches), then times it REPEATS
times on fresh scheduler objects and reports the fastest run (one torch thread; the machine is shared and very
noisy, the minimum is the least disturbed estimate of the work itself).

``python bench/cases/schedulers.py --list`` / ``--case NAME --impl IMPL`` (protocol: ``bench/run.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

SCHEDULERS = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "LCMScheduler", "TCDScheduler", "EDMEulerScheduler",
]
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STEPS = 50
REPEATS = 10

CASES = [
    {
        "name": f"sched_{name}",
        "unit": "ms",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": f"{name}: set_timesteps({STEPS}) + every step (scale_model_input + step) on a "
                       "1x4x128x128 fp32 latent with a fixed fake model output (CPU, 1 thread, best of "
                       f"{REPEATS} runs in the process).",
    }
    for name in SCHEDULERS
]


def _config(name: str) -> dict:
    if name == "EDMEulerScheduler":
        return {}
    if name in ("LCMScheduler", "TCDScheduler"):
        return dict(SD, original_inference_steps=STEPS)
    if name == "PNDMScheduler":
        return dict(SD, skip_prk_steps=True, steps_offset=1)
    return dict(SD)


def _run_once(scheduler, latents, model_output, torch) -> float:
    stochastic = "generator" in scheduler.step.__code__.co_varnames
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    scheduler.set_timesteps(STEPS)
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)
        if stochastic:
            x = scheduler.step(model_output, t, x, generator=gen).prev_sample
        else:
            x = scheduler.step(model_output, t, x).prev_sample
    return (time.perf_counter() - start) * 1000.0


def measure(name: str, impl: str) -> float:
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    if impl == "diffblocks":
        import diffblocks.schedulers as lib
    elif impl == "diffusers":
        import diffusers as lib
    else:
        raise ValueError(f"--impl must be 'diffblocks' or 'diffusers', got {impl!r}")
    cls = getattr(lib, name)
    latents = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0))
    model_output = 0.1 * torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(1))
    _run_once(cls(**_config(name)), latents, model_output, torch)  # warm-up
    return min(_run_once(cls(**_config(name)), latents, model_output, torch) for _ in range(REPEATS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl")
    args = parser.parse_args()
    if args.list:
        print(json.dumps(CASES))
        return
    names = {c["name"]: c["name"][len("sched_"):] for c in CASES}
    if args.case not in names:
        parser.error(f"--case must be one of {sorted(names)}, got {args.case!r}")
    print(json.dumps({"value": measure(names[args.case], args.impl)}))


if __name__ == "__main__":
    main()
