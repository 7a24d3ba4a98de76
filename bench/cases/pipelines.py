"""Classic pipeline base benchmarks on the tiny SD 1.x folder of ``bench/cases/sd.py`` (``bench/_work/sd_tiny``).

* ``pipeline_from_pretrained``: ``DiffusionPipeline.from_pretrained(folder)`` wall time, libraries already
  imported and one warm-up load done (so the page cache and lazy imports are warm for both).
* ``from_pipe_rss_mb``: resident memory added by ``StableDiffusionImg2ImgPipeline.from_pipe(pipe)`` on a pipeline
  loaded in float32 (both libraries should add ~0: the components are shared).
* ``from_pipe_fp16_rss_mb``: the same on a pipeline loaded with ``torch_dtype=torch.float16``. diffusers casts the
  shared components to float32 inside ``from_pipe`` (issue 12754), allocating new weights and changing the source
  pipeline; diffblocks shares them unchanged.

``python bench/cases/pipelines.py --list`` / ``--case NAME --impl IMPL`` (protocol: see ``bench/run.py``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

CASES = [
    {
        "name": "pipeline_from_pretrained",
        "unit": "ms",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "DiffusionPipeline.from_pretrained(tiny SD 1.x folder), warm (imports done, one warm-up load).",
    },
    {
        "name": "from_pipe_rss_mb",
        "unit": "MB",
        "target": None,
        "impls": ["diffblocks", "diffusers"],
        "description": "RSS added by StableDiffusionImg2ImgPipeline.from_pipe(pipe), pipe loaded in float32 "
                       "(tiny SD; both should be ~0).",
    },
    {
        "name": "from_pipe_fp16_rss_mb",
        "unit": "MB",
        "target": None,
        "impls": ["diffblocks", "diffusers"],
        "description": "RSS added by from_pipe on a float16 pipeline: diffusers casts the shared components to "
                       "float32 (issue 12754); diffblocks shares them unchanged.",
    },
]


def _folder() -> str:
    sys.path.insert(0, HERE)
    import sd  # noqa: E402  (bench/cases/sd.py builds and caches the folder)

    return sd.build_folder()


def _lib(impl: str):
    if impl == "diffblocks":
        import diffblocks

        return diffblocks
    import diffusers

    return diffusers


def _rss_mb() -> float:
    gc.collect()
    with open("/proc/self/status", "r", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


def from_pretrained_ms(impl: str) -> float:
    lib, folder = _lib(impl), _folder()
    lib.DiffusionPipeline.from_pretrained(folder)  # warm-up
    start = time.perf_counter()
    lib.DiffusionPipeline.from_pretrained(folder)
    return (time.perf_counter() - start) * 1000.0


def from_pipe_mb(impl: str, fp16: bool) -> float:
    import torch

    lib, folder = _lib(impl), _folder()
    kwargs = {"torch_dtype": torch.float16} if fp16 else {}
    pipe = lib.StableDiffusionPipeline.from_pretrained(folder, **kwargs)
    before = _rss_mb()
    new = lib.StableDiffusionImg2ImgPipeline.from_pipe(pipe, **kwargs)
    after = _rss_mb()
    assert new.unet is pipe.unet
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl", choices=["diffblocks", "diffusers"])
    args = parser.parse_args()
    if args.list:
        print(json.dumps(CASES))
        return
    if args.case is None or args.impl is None:
        parser.error("--case and --impl are required unless --list is given")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.case == "pipeline_from_pretrained":
        value = from_pretrained_ms(args.impl)
    elif args.case == "from_pipe_rss_mb":
        value = from_pipe_mb(args.impl, fp16=False)
    elif args.case == "from_pipe_fp16_rss_mb":
        value = from_pipe_mb(args.impl, fp16=True)
    else:
        parser.error(f"unknown case {args.case!r}; known: {[c['name'] for c in CASES]}")
    print(json.dumps({"value": value}))


if __name__ == "__main__":
    main()
