"""Loading benchmarks: ``from_pretrained`` of a ~1 GB fp32 checkpoint (warm page cache).

The checkpoint is a plain ``ModelMixin`` model (16 Linear(4096, 4096) layers, 1.07 GB fp32) written once under
``bench/_work/loading_1gb`` and reused. Protocol: see ``bench/run.py``.

``python bench/cases/loading.py --list`` / ``--case NAME --impl IMPL``.
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
WORK = os.path.join(os.path.dirname(HERE), "_work", "loading_1gb")
WIDTH, DEPTH = 4096, 16

CASES = [
    {
        "name": "from_pretrained_1gb_time",
        "unit": "s",
        "target": 1.3,
        "impls": ["diffblocks", "read_bytes"],
        "description": "wall time of ModelMixin.from_pretrained on a 1.07 GB fp32 safetensors checkpoint (warm page "
                       "cache) vs reading the same file fully with plain Python I/O (f.read()). diffblocks maps the "
                       "file, so the weights become resident on first use; see the _resident case for the cost "
                       "including that first touch.",
    },
    {
        "name": "from_pretrained_1gb_time_resident",
        "unit": "s",
        "target": 1.3,
        "impls": ["diffblocks", "read_bytes"],
        "description": "as above, plus one pass reading every parameter (so every weight page is resident) vs "
                       "f.read() of the file.",
    },
    {
        "name": "from_pretrained_1gb_peak_rss",
        "unit": "MB",
        "target": 1.1,
        "impls": ["diffblocks", "weight_bytes"],
        "description": "peak RSS growth (ru_maxrss after minus the resident size before) of from_pretrained + one "
                       "pass over every parameter, vs the size of the weights.",
    },
    {
        "name": "from_pretrained_1gb_vs_diffusers_time",
        "unit": "s",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "from_pretrained alone (both libraries map the safetensors file lazily), diffblocks vs a "
                       "diffusers ModelMixin of the same architecture loading the same folder.",
    },
    {
        "name": "from_pretrained_1gb_vs_diffusers_time_resident",
        "unit": "s",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "from_pretrained + one pass over every parameter (dominated by faulting 1 GB of mapped pages, "
                       "the same work in both), diffblocks vs diffusers.",
    },
    {
        "name": "from_pretrained_1gb_vs_diffusers_peak_rss",
        "unit": "MB",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "peak RSS growth of the previous case, diffblocks vs diffusers.",
    },
    {
        "name": "tiny_unet_from_pretrained",
        "unit": "ms",
        "target": 1.0,
        "impls": ["diffblocks", "diffusers"],
        "description": "mean of 5 UNet2DConditionModel.from_pretrained calls on the tiny SD unet (per-call overhead: "
                       "config, file lookup, construction, assignment), after one warm-up call.",
    },
]


def _ours_class():
    import torch

    from diffblocks.configuration import ConfigMixin, register_to_config
    from diffblocks.models.modeling_utils import ModelMixin

    class LinearStack(ModelMixin, ConfigMixin):
        config_name = "config.json"

        @register_to_config
        def __init__(self, width: int = WIDTH, depth: int = DEPTH):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(depth)])

    return LinearStack


def _diffusers_class():
    import torch
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config

    class LinearStack(ModelMixin, ConfigMixin):
        config_name = "config.json"

        @register_to_config
        def __init__(self, width: int = WIDTH, depth: int = DEPTH):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(depth)])

    return LinearStack


def weights_file() -> str:
    return os.path.join(WORK, "diffusion_pytorch_model.safetensors")


def ensure_checkpoint() -> str:
    """Write the 1 GB checkpoint once (random weights, seed 0)."""
    if os.path.isfile(weights_file()) and os.path.isfile(os.path.join(WORK, "config.json")):
        return WORK
    import torch

    torch.manual_seed(0)
    model_cls = _ours_class()
    with torch.device("meta"):
        model = model_cls()
    state = {}
    for i in range(DEPTH):
        state[f"layers.{i}.weight"] = torch.randn(WIDTH, WIDTH) * 0.02
        state[f"layers.{i}.bias"] = torch.zeros(WIDTH)
    model.load_state_dict(state, assign=True)
    model.save_pretrained(WORK)
    return WORK


def warm_page_cache(path: str) -> None:
    """Read the file once through a small buffer so its pages are in the page cache (RSS stays flat)."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), falling back to the peak when /proc is unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def touch(model) -> float:
    total = 0.0
    for p in model.parameters():
        total += float(p.detach().sum())
    return total


def tiny_unet_folder() -> str:
    folder = os.path.join(os.path.dirname(WORK), "tiny_sd")
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
        from tests.fixtures.tiny import build_tiny_sd_folder

        build_tiny_sd_folder(folder + ".tmp")
        os.replace(folder + ".tmp", folder)
    return os.path.join(folder, "unet")


def run_tiny(impl: str) -> float:
    folder = tiny_unet_folder()
    if impl == "diffblocks":
        from diffblocks import UNet2DConditionModel
    else:
        from diffusers import UNet2DConditionModel
    UNet2DConditionModel.from_pretrained(folder)
    start = time.perf_counter()
    for _ in range(5):
        UNet2DConditionModel.from_pretrained(folder)
    return (time.perf_counter() - start) / 5 * 1000.0


def run(case: str, impl: str) -> float:
    if case == "tiny_unet_from_pretrained":
        return run_tiny(impl)
    folder = ensure_checkpoint()
    path = weights_file()
    if impl in ("diffblocks", "diffusers"):
        import torch  # noqa: F401  (import cost outside the measurement)

        model_cls = _ours_class() if impl == "diffblocks" else _diffusers_class()
        if impl == "diffblocks":  # diffusers imports its loading code with ModelMixin; do the same for ours
            import diffblocks.hub  # noqa: F401
            import diffblocks.models.weights  # noqa: F401
    warm_page_cache(path)
    gc.collect()

    if impl == "weight_bytes":
        return os.path.getsize(path) / 2**20
    if impl == "read_bytes":
        start = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        elapsed = time.perf_counter() - start
        assert len(data) == os.path.getsize(path)
        return elapsed

    before = current_rss_mb()  # growth = peak after - resident before (transient peaks included)
    start = time.perf_counter()
    model = model_cls.from_pretrained(folder)
    if case.endswith("_resident") or case.endswith("_peak_rss"):
        touch(model)
    elapsed = time.perf_counter() - start
    grown = peak_rss_mb() - before
    assert sum(p.numel() for p in model.parameters()) == DEPTH * (WIDTH * WIDTH + WIDTH)
    if case.endswith("peak_rss"):
        return grown
    return elapsed


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
    value = run(args.case, args.impl)
    print(json.dumps({"value": value}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
