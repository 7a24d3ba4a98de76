"""Modular framework overhead: diffblocks vs diffusers' Modular Diffusers running the same blocks.

The blocks move tiny tensors between them but do no arithmetic, so the time measured is the framework's
(state reads/writes, aggregation of declarations, loop dispatch).

Cases (per pipeline call, tiny tensors, no model):
* ``modular_overhead``: a 30-block sequential pipeline followed by a loop wrapper running 3 blocks 50 times.
* ``modular_sequential_30``: the 30 sequential blocks alone.
* ``modular_loop_50x3``: the loop alone.

Usage: ``python bench/cases/modular.py --list`` or ``--case NAME --impl diffblocks|diffusers``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings

CASES = {
    "modular_overhead": "30-block sequential pipeline + 50-iteration loop of 3 blocks, tiny tensors, per call (ms)",
    "modular_sequential_30": "30-block sequential pipeline on tiny tensors, per call (ms)",
    "modular_loop_50x3": "loop wrapper running 3 blocks x 50 iterations on tiny tensors, per call (ms)",
}
IMPLS = ["diffblocks", "diffusers"]


def build(framework):
    """The same blocks written against either framework's modular API (identical code, different imports)."""
    import torch

    InputParam = framework.InputParam
    OutputParam = framework.OutputParam
    ModularPipelineBlocks = framework.ModularPipelineBlocks
    SequentialPipelineBlocks = framework.SequentialPipelineBlocks
    LoopSequentialPipelineBlocks = framework.LoopSequentialPipelineBlocks

    def make_step(k):
        class Step(ModularPipelineBlocks):
            model_name = "bench"

            @property
            def description(self):
                return f"step {k}"

            @property
            def inputs(self):
                return [InputParam("latents", required=True), InputParam("scale", default=1.0),
                        InputParam(f"extra_{k}", default=None)]

            @property
            def intermediate_outputs(self):
                return [OutputParam("latents"), OutputParam(f"value_{k}")]

            def __call__(self, components, state):
                bs = self.get_block_state(state)
                bs.latents = bs.latents if bs.scale else None  # data movement only: the framework is measured
                setattr(bs, f"value_{k}", k)
                self.set_block_state(state, bs)
                return components, state

        Step.__name__ = f"Step{k}"
        return Step

    class LoopBefore(ModularPipelineBlocks):
        model_name = "bench"

        @property
        def inputs(self):
            return [InputParam("latents", required=True)]

        @property
        def intermediate_outputs(self):
            return [OutputParam("model_input")]

        def __call__(self, components, block_state, i, t):
            block_state.model_input = block_state.latents
            return components, block_state

    class LoopDenoise(ModularPipelineBlocks):
        model_name = "bench"

        @property
        def inputs(self):
            return [InputParam("model_input", required=True)]

        @property
        def intermediate_outputs(self):
            return [OutputParam("noise_pred")]

        def __call__(self, components, block_state, i, t):
            block_state.noise_pred = block_state.model_input
            return components, block_state

    class LoopAfter(ModularPipelineBlocks):
        model_name = "bench"

        @property
        def inputs(self):
            return [InputParam("noise_pred", required=True), InputParam("latents", required=True)]

        @property
        def intermediate_outputs(self):
            return [OutputParam("latents")]

        def __call__(self, components, block_state, i, t):
            block_state.latents = block_state.noise_pred
            return components, block_state

    class Loop(LoopSequentialPipelineBlocks):
        model_name = "bench"

        @property
        def description(self):
            return "denoise loop"

        @property
        def loop_inputs(self):
            return [InputParam("num_inference_steps", default=50)]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            for i in range(bs.num_inference_steps):
                components, bs = self.loop_step(components, bs, i=i, t=i)
            self.set_block_state(state, bs)
            return components, state

    def sequential():
        return {f"step_{k}": make_step(k)() for k in range(30)}

    def loop():
        return Loop.from_blocks_dict({"before": LoopBefore(), "denoise": LoopDenoise(), "after": LoopAfter()})

    return sequential, loop, SequentialPipelineBlocks


def make_pipeline(impl: str, case: str):
    if impl == "diffblocks":
        import diffblocks.modular_pipelines as framework
    elif impl == "diffusers":
        logging.getLogger("diffusers").setLevel(logging.ERROR)
        import diffusers.modular_pipelines as framework
    else:
        raise SystemExit(f"unknown impl {impl!r}; choose from {IMPLS}")
    sequential, loop, Sequential = build(framework)
    if case == "modular_overhead":
        blocks = Sequential.from_blocks_dict({**sequential(), "loop": loop()})
    elif case == "modular_sequential_30":
        blocks = Sequential.from_blocks_dict(sequential())
    elif case == "modular_loop_50x3":
        blocks = Sequential.from_blocks_dict({"loop": loop()})
    else:
        raise SystemExit(f"unknown case {case!r}; choose from {list(CASES)}")
    return blocks.init_pipeline()


def measure(impl: str, case: str, calls: int = 30) -> float:
    import torch

    warnings.simplefilter("ignore")
    pipe = make_pipeline(impl, case)
    latents = torch.zeros(1, 4, 8, 8)
    for _ in range(3):  # warm-up
        pipe(latents=latents, num_inference_steps=50, output="latents")
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        out = pipe(latents=latents, num_inference_steps=50, output="latents")
        times.append(time.perf_counter() - start)
    assert out.shape == (1, 4, 8, 8)
    return statistics.median(times) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl")
    args = parser.parse_args()
    if args.list:
        # the combined case carries the target; the two parts are diagnostics (the loop alone is dominated by the
        # blocks' own bodies and the dispatch both frameworks share, so it has no target)
        print(json.dumps([{"name": name, "unit": "ms", "target": 0.5 if name == "modular_overhead" else None,
                           "impls": IMPLS, "description": desc} for name, desc in CASES.items()]))
        return
    if not args.case or not args.impl:
        parser.error("--case and --impl are required unless --list")
    print(json.dumps({"value": measure(args.impl, args.case)}))


if __name__ == "__main__":
    main()
