"""LoRA benchmarks, diffblocks vs diffusers, on a tiny SD 1.x folder.

* ``lora_load_first_image_ms``: with the pipeline already loaded, time ``load_lora_weights(folder,
  weight_name=...)`` (a kohya-layout file over the UNet attention projections and the text encoder) plus the first
  image (2 steps, 32x32, output_type="np").
* ``lora_fuse_ms``: with the LoRA loaded, time ``fuse_lora(lora_scale=0.8)``.
* ``lora_cold_first_image_ms``: in a fresh process (torch already imported), time importing the library,
  ``from_pretrained``, ``load_lora_weights`` and the first image: everything a script pays once.

The two warm cases start with peft imported and a garbage collection: ``import diffusers`` imports peft (and
transformers' modeling stack with it) up front, diffblocks only on the first LoRA load, and without the collection
the full GC that a big import leaves due lands in whichever timed call comes next.  That one-time import is what
the cold case measures.

Data (tiny SD folder + LoRA file) is written once under ``bench/_work/lora``.
``python bench/cases/lora.py --list`` / ``--case NAME --impl IMPL`` (protocol: ``bench/run.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(ROOT, "bench", "_work", "lora")
LORA_FILE = "lora_kohya.safetensors"

CASES = [
    {"name": "lora_load_first_image_ms", "unit": "ms", "target": 1.0, "impls": ["diffblocks", "diffusers"],
     "description": "load_lora_weights (kohya file, UNet attention + text encoder, rank 4) + first image "
                    "(tiny SD, 2 steps, 32x32), pipeline already loaded, peft imported."},
    {"name": "lora_fuse_ms", "unit": "ms", "target": 1.0, "impls": ["diffblocks", "diffusers"],
     "description": "fuse_lora(lora_scale=0.8) on the tiny SD pipeline with one LoRA loaded."},
    {"name": "lora_cold_first_image_ms", "unit": "ms", "target": 1.0, "impls": ["diffblocks", "diffusers"],
     "description": "fresh process: import + from_pretrained + load_lora_weights (same kohya file) + first image "
                    "(tiny SD, 2 steps, 32x32); torch imported before the clock starts."},
]


def _prepare(in_subprocess: bool = False) -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = os.path.join(WORK, "sd")
    if not os.path.exists(os.path.join(WORK, LORA_FILE)) and in_subprocess:
        # keep the libraries out of this process (the cold case times their import)
        import subprocess

        subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare"], check=True)
    if not os.path.exists(os.path.join(WORK, LORA_FILE)):
        sys.path.insert(0, ROOT)
        from safetensors.torch import save_file

        from diffblocks import StableDiffusionPipeline
        from tests.fixtures.tiny import build_tiny_sd_folder
        from tests.loaders.test_lora import make_lora

        if not os.path.exists(os.path.join(folder, "model_index.json")):
            build_tiny_sd_folder(folder + ".tmp")
            os.replace(folder + ".tmp", folder)
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        sd = make_lora(pipe, "kohya", seed=1, alpha=2.0)
        tmp = os.path.join(WORK, LORA_FILE + ".tmp")
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp)
        os.replace(tmp, os.path.join(WORK, LORA_FILE))
    return folder


def _pipe(impl: str, folder: str):
    if impl == "diffblocks":
        from diffblocks import StableDiffusionPipeline
    elif impl == "diffusers":
        from diffusers import StableDiffusionPipeline
    else:
        raise SystemExit(f"unknown impl {impl!r}; expected 'diffblocks' or 'diffusers'")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe):
    import torch

    return pipe("a tiny photo", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def run_case(name: str, impl: str) -> float:
    import gc

    import torch

    torch.set_num_threads(1)
    if name == "lora_cold_first_image_ms":
        folder = _prepare(in_subprocess=True)
        start = time.perf_counter()
        pipe = _pipe(impl, folder)
        pipe.load_lora_weights(WORK, weight_name=LORA_FILE, adapter_name="bench")
        _image(pipe)
        return (time.perf_counter() - start) * 1000.0
    folder = _prepare()
    pipe = _pipe(impl, folder)
    _image(pipe)  # warm-up without LoRA
    # `import diffusers` already imported peft (and transformers' modeling stack); diffblocks imports it on the first
    # LoRA load, which `lora_cold_first_image_ms` measures.  Collect the garbage that setup left behind.
    import peft  # noqa: F401

    gc.collect()
    if name == "lora_load_first_image_ms":
        start = time.perf_counter()
        pipe.load_lora_weights(WORK, weight_name=LORA_FILE, adapter_name="bench")
        _image(pipe)
        return (time.perf_counter() - start) * 1000.0
    if name == "lora_fuse_ms":
        pipe.load_lora_weights(WORK, weight_name=LORA_FILE, adapter_name="bench")
        start = time.perf_counter()
        pipe.fuse_lora(lora_scale=0.8)
        return (time.perf_counter() - start) * 1000.0
    raise SystemExit(f"unknown case {name!r}; expected one of {[c['name'] for c in CASES]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        _prepare()
        return
    if args.list:
        print(json.dumps(CASES))
        return
    if not args.case or not args.impl:
        parser.error("--case and --impl are required (or --list)")
    print(json.dumps({"value": run_case(args.case, args.impl)}))


if __name__ == "__main__":
    main()
