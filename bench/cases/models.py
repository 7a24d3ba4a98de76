"""Model benchmarks: full SD 1.5-size UNet ``from_pretrained`` (fp32 and the fp16 variant) and one forward.

The checkpoint is the real SD 1.5 UNet architecture with random weights (seed 0), written once under
``bench/_work/sd15_unet`` (fp32 ``diffusion_pytorch_model.safetensors`` + ``...fp16.safetensors``) and reused.
Page cache is warmed before every load measurement. Protocol: see ``bench/run.py``.

``python bench/cases/models.py --list`` / ``--case NAME --impl IMPL``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(os.path.dirname(HERE), "_work", "sd15_unet")

SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

CASES = [
    {
        "name": "sd15_unet_load_fp32",
        "unit": "s",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "UNet2DConditionModel.from_pretrained of a full SD 1.5-size UNet (3.4 GB fp32 safetensors, "
                       "warm page cache) plus one pass reading every parameter, diffblocks vs diffusers.",
    },
    {
        "name": "sd15_unet_load_fp16_variant",
        "unit": "s",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "as above with variant='fp16', torch_dtype=torch.float16 (1.7 GB).",
    },
    {
        "name": "sd15_unet_load_peak_rss",
        "unit": "MB",
        "target": 1.05,
        "impls": ["diffblocks", "weight_bytes"],
        "description": "peak RSS growth (ru_maxrss after minus before) of the fp32 load + one pass over every "
                       "parameter, vs the size of the fp32 weights file.",
    },
    {
        "name": "sd15_unet_forward_32x32_b2",
        "unit": "s",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "one SD 1.5 UNet forward (fp32, CPU) at 32x32 latents, batch 2, 77 text tokens, after a "
                       "warm-up call at 8x8; same weights for both libraries.",
    },
]


def ensure_checkpoint() -> str:
    """Write the random SD 1.5 UNet once: fp32 weights and the fp16 variant."""
    done = os.path.join(WORK, ".complete")
    if os.path.isfile(done):
        return WORK
    import torch

    sys.path.insert(0, os.path.join(ROOT, "src"))
    from diffblocks.models.unet_2d_condition import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel(**SD15_UNET_CONFIG)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, p in model.state_dict().items():
        if name.endswith("bias") or "norm" in name:
            state[name] = torch.zeros(p.shape) if name.endswith("bias") else torch.ones(p.shape)
        else:
            fan_in = max(1, p[0].numel())
            state[name] = torch.randn(p.shape, generator=gen) * (fan_in**-0.5)
    model.load_state_dict(state, assign=True)
    model.save_pretrained(WORK)
    model.to(torch.float16).save_pretrained(WORK, variant="fp16")
    open(done, "w").close()
    return WORK


def warm_page_cache(path: str) -> None:
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def touch(model) -> float:
    total = 0.0
    for p in model.parameters():
        total += float(p.detach().sum())
    return total


def _unet_class(impl: str):
    if impl == "diffblocks":
        from diffblocks.models.unet_2d_condition import UNet2DConditionModel

        import diffblocks.hub  # noqa: F401  (diffusers imports its loading code with the class; so do we)
        import diffblocks.models.weights  # noqa: F401
    else:
        from diffusers import UNet2DConditionModel
    return UNet2DConditionModel


def run(case: str, impl: str) -> float:
    folder = ensure_checkpoint()
    fp16 = case == "sd15_unet_load_fp16_variant"
    weights = os.path.join(folder, "diffusion_pytorch_model.fp16.safetensors" if fp16 else "diffusion_pytorch_model.safetensors")
    if impl == "weight_bytes":
        return os.path.getsize(weights) / 2**20

    import torch

    cls = _unet_class(impl)
    if case == "sd15_unet_forward_32x32_b2":
        model = cls.from_pretrained(folder).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 32, 32, generator=g)
        ctx = torch.randn(2, 77, 768, generator=g)
        t = torch.tensor(500)
        with torch.no_grad():
            model(x[:, :, :8, :8], t, ctx)  # warm-up at a small size (lazy kernel set-up), then one timed call
            start = time.perf_counter()
            model(x, t, ctx)
            return time.perf_counter() - start

    warm_page_cache(weights)
    gc.collect()
    kwargs = {"variant": "fp16", "torch_dtype": torch.float16} if fp16 else {}
    before = peak_rss_mb()
    start = time.perf_counter()
    model = cls.from_pretrained(folder, **kwargs)
    touch(model)
    elapsed = time.perf_counter() - start
    grown = peak_rss_mb() - before
    assert sum(p.numel() for p in model.parameters()) == 859520964
    return grown if case.endswith("peak_rss") else elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps(CASES))
        return 0
    names = {c["name"]: c for c in CASES}
    if args.case not in names:
        parser.error(f"--case must be one of {sorted(names)}, got {args.case!r}")
    if args.impl not in names[args.case]["impls"]:
        parser.error(f"--impl must be one of {names[args.case]['impls']}, got {args.impl!r}")
    print(json.dumps({"value": run(args.case, args.impl)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
