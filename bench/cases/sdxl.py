"""Stable Diffusion XL per-step benchmarks on a tiny SDXL base folder (``bench/_work/sdxl_tiny``).

Implementations: ``diffblocks_classic`` (StableDiffusionXLPipeline), ``diffblocks_modular``
(StableDiffusionXLAutoBlocks().init_pipeline), and the same two from diffusers. Every run: CFG on (guidance 7.5),
batch 1, EulerDiscrete, 32x32, latent output, one intra-op thread; 1 warm-up call then 4 calls of 11 steps.

* step time: median interval between consecutive scheduler steps (one per denoising step, whatever number of UNet
  calls the step makes): calls of ``scheduler.step``, or of ``scheduler.next_sample``, which diffblocks' loops call
  instead (the outermost call is marked: a ``next_sample`` falling back to ``step`` counts once).
* non-UNet time per step: the step interval minus the time spent inside ``unet.forward`` during it.
* ``_stub_unet``: the UNet forward returns one precomputed prediction (the step interval is then the pipeline's own
  work only).

``python bench/cases/sdxl.py --list`` / ``--case NAME --impl IMPL`` (protocol: see ``bench/run.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(ROOT, "bench", "_work", "sdxl_tiny")
IMPLS = ["diffblocks_classic", "diffblocks_modular", "diffusers_classic", "diffusers_modular"]

CASES = [
    {
        "name": "sdxl_modular_vs_classic_step",
        "unit": "ms",
        "target": 1.02,
        "impls": ["diffblocks_modular", "diffblocks_classic"],
        "description": "time per denoising step, tiny SDXL: our modular pipeline vs our classic pipeline.",
    },
    {
        "name": "sdxl_modular_step",
        "unit": "ms",
        "target": 0.75,
        "impls": ["diffblocks_modular", "diffusers_modular"],
        "description": "time per denoising step, tiny SDXL: modular pipeline, diffblocks vs diffusers (whose "
                       "guider runs the UNet twice per step at batch 1).",
    },
    {
        "name": "sdxl_classic_step",
        "unit": "ms",
        "target": 1.0,
        "impls": ["diffblocks_classic", "diffusers_classic"],
        "description": "time per denoising step, tiny SDXL: classic StableDiffusionXLPipeline.",
    },
    {
        "name": "sdxl_step_overhead",
        "unit": "ms",
        "target": 0.5,
        "repeat": 5,  # varies from process to process (memory layout): more runs
        "impls": ["diffblocks_classic", "diffusers_classic"],
        "description": "non-UNet time per step (step interval minus UNet forward time), classic pipelines.",
    },
    {
        "name": "sdxl_step_overhead_stub_unet",
        "unit": "ms",
        "target": 0.5,
        "repeat": 5,  # varies from process to process (memory layout): more runs
        "impls": ["diffblocks_classic", "diffusers_classic"],
        "description": "step interval with a UNet whose forward returns a precomputed prediction: the pipeline's "
                       "own per-step work without the cache/allocator disturbance a real UNet call leaves.",
    },
    {
        "name": "sdxl_modular_step_overhead",
        "unit": "ms",
        "target": 0.5,
        "repeat": 5,  # varies from process to process (memory layout): more runs
        "impls": ["diffblocks_modular", "diffusers_classic"],
        "description": "non-UNet time per step of our modular pipeline vs diffusers' classic pipeline.",
    },
]


def build_folder() -> str:
    if os.path.exists(os.path.join(WORK, "model_index.json")):
        return WORK
    sys.path.insert(0, ROOT)
    from tests.fixtures.tiny import build_tiny_sdxl_folder

    tmp = WORK + ".tmp"
    build_tiny_sdxl_folder(tmp, "base")
    os.replace(tmp, WORK)
    return WORK


def _make(impl: str):
    import torch

    lib_name, kind = impl.split("_")
    lib = __import__(lib_name)
    if kind == "classic":
        pipe = lib.StableDiffusionXLPipeline.from_pretrained(WORK)
        pipe.set_progress_bar_config(disable=True)

        def run(steps, gen):
            return pipe("a tiny test", num_inference_steps=steps, guidance_scale=7.5, height=32, width=32,
                        output_type="latent", generator=gen).images
    else:
        blocks = __import__(f"{lib_name}.modular_pipelines", fromlist=["StableDiffusionXLAutoBlocks"])
        pipe = blocks.StableDiffusionXLAutoBlocks().init_pipeline(WORK)
        pipe.load_components(torch_dtype=torch.float32)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

        def run(steps, gen):
            return pipe(prompt="a tiny test", num_inference_steps=steps, height=32, width=32, output_type="latent",
                        generator=gen, output="images")
    pipe.scheduler = lib.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe, run


def measure(impl: str, overhead: bool, stub_unet: bool = False) -> float:
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    pipe, run = _make(impl)
    steps_at, unet_spans = [], []
    scheduler, unet = pipe.scheduler, pipe.unet
    forward = unet.forward
    depth = [0]

    def timed(method):
        def timed_step(*args, **kwargs):
            if not depth[0]:
                steps_at.append(time.perf_counter())
            depth[0] += 1
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1

        return timed_step

    canned = []

    def timed_forward(*args, **kwargs):
        t0 = time.perf_counter()
        if stub_unet:
            if not canned:
                canned.append(forward(*args, **kwargs))
            out = canned[0]
        else:
            out = forward(*args, **kwargs)
        unet_spans.append((t0, time.perf_counter()))
        return out

    scheduler.step = timed(scheduler.step)
    if hasattr(scheduler, "next_sample"):
        scheduler.next_sample = timed(scheduler.next_sample)
    unet.forward = timed_forward
    values = []
    for rep in range(5):
        steps_at.clear()
        unet_spans.clear()
        run(11, torch.Generator().manual_seed(0))
        if not rep:
            continue  # warm-up
        for a, b in zip(steps_at, steps_at[1:]):
            interval = b - a
            if overhead:
                interval -= sum(e - s for s, e in unet_spans if a <= s and e <= b)
            values.append(interval)
    return statistics.median(values) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl", choices=IMPLS)
    args = parser.parse_args()
    if args.list:
        print(json.dumps(CASES))
        return
    case = next((c for c in CASES if c["name"] == args.case), None)
    if case is None:
        parser.error(f"--case must be one of {[c['name'] for c in CASES]}")
    build_folder()
    value = measure(args.impl, overhead=args.case.endswith("overhead"), stub_unet=args.case.endswith("_stub_unet"))
    print(json.dumps({"value": value}))


if __name__ == "__main__":
    main()
