"""ComponentsManager benchmarks: pipelines sharing components through one manager.

* ``cm_second_pipeline_added_mb``: load a tiny pipeline fully with a manager (collection "test1"), then create a
  second ``ModularPipeline`` on the same manager (collection "test2") and give it every component from the
  manager (``get_components_by_names(pipe2.null_component_names)`` + ``update_components``, the seed's recipe).
  Value = RSS growth in MB caused by the second pipeline (goal: < 5 MB, i.e. nothing is copied).
* ``cm_second_pipeline_load_components_added_mb``: the same, but the second pipeline just calls
  ``load_components()`` (diffblocks reuses registered objects by load id; diffusers loads a second copy).
* ``cm_load_registered_vs_fresh``: time of ``pipe2.load_components()`` when every component is already
  registered in the manager (diffblocks reuses them by load id) vs the same call with no manager (fresh load),
  both after a warm-up load in the same process.

Checkpoints: tiny SDXL/SD folders written once under ``bench/_work/components_manager`` by the test fixtures.
diffusers' modular pipelines load the SDXL folder only; diffblocks uses the SDXL folder when its SDXL family is
available and the SD 1.x folder otherwise (the value measures overhead per pipeline, not weights).

``python bench/cases/components_manager.py --list`` / ``--case NAME --impl IMPL`` (protocol: ``bench/run.py``).
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
WORK = os.path.join(ROOT, "bench", "_work", "components_manager")

CASES = [
    {
        "name": "cm_second_pipeline_added_mb",
        "unit": "MB",
        "target": None,
        "impls": ["diffblocks", "diffusers"],
        "description": "RSS added by a second ModularPipeline that takes every component of a loaded first "
                       "pipeline from the shared ComponentsManager (goal < 5 MB). diffusers: tiny SDXL folder; "
                       "diffblocks: tiny SDXL folder when its SDXL family exists, else tiny SD 1.x.",
    },
    {
        "name": "cm_second_pipeline_load_components_added_mb",
        "unit": "MB",
        "target": None,
        "impls": ["diffblocks", "diffusers"],
        "description": "as above, but the second pipeline simply calls load_components(): diffblocks reuses the "
                       "registered objects by load id (RSS ~0), diffusers loads a second copy and only warns.",
    },
    {
        "name": "cm_load_registered_vs_fresh",
        "unit": "ms",
        "target": 0.5,
        "impls": ["reuse", "fresh"],
        "description": "diffblocks: pipe.load_components() when all components are already registered in the "
                       "manager (reused by load id) vs a fresh load without a manager (after a warm-up load).",
    },
]


def _folders() -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sdxl, sd = os.path.join(WORK, "sdxl"), os.path.join(WORK, "sd")
    if not (os.path.exists(os.path.join(sdxl, "model_index.json")) and os.path.exists(os.path.join(sd, "model_index.json"))):
        sys.path.insert(0, ROOT)
        from tests.fixtures.tiny import build_tiny_sd_folder, build_tiny_sdxl_folder

        for path, build in ((sdxl, lambda p: build_tiny_sdxl_folder(p, kind="base")),
                            (sd, lambda p: build_tiny_sd_folder(p, kind="sd"))):
            if not os.path.exists(os.path.join(path, "model_index.json")):
                tmp = path + ".tmp"
                build(tmp)
                os.replace(tmp, path)
    return {"sdxl": sdxl, "sd": sd}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settle() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def _lib(impl: str):
    if impl == "diffusers":
        import diffusers

        return diffusers
    import diffblocks

    return diffblocks


def _first_pipeline(lib, folders, manager, collection):
    errors = []
    for key in ("sdxl", "sd"):
        try:
            pipe = lib.ModularPipeline.from_pretrained(folders[key], components_manager=manager, collection=collection)
            pipe.load_components()
            if any(getattr(pipe, n, None) is not None for n in ("unet", "vae")):
                return pipe, folders[key]
        except Exception as e:  # the library cannot build this family: try the next folder
            errors.append(f"{key}: {e}")
    raise RuntimeError("no tiny folder could be loaded: " + "; ".join(errors))


def second_pipeline_added_mb(impl: str, via_load_components: bool = False) -> float:
    import logging

    logging.disable(logging.WARNING)  # the expected "already exists" warnings
    lib = _lib(impl)
    folders = _folders()
    manager = lib.ComponentsManager()
    pipe, path = _first_pipeline(lib, folders, manager, "test1")
    # warm-up of everything the second pipeline will touch (imports, caches), on a throwaway pipeline
    warm = lib.ModularPipeline.from_pretrained(path, components_manager=manager, collection="warm")
    warm.update_components(**manager.get_components_by_names(warm.null_component_names))
    for p in pipe.unet.parameters():  # warm the reduction kernels used below (and fault in pipe1's weights)
        p.data.sum()
    _settle()
    before = _rss_bytes()
    pipe2 = lib.ModularPipeline.from_pretrained(path, components_manager=manager, collection="test2")
    if via_load_components:
        pipe2.load_components()
        for p in pipe2.unet.parameters():  # touch the weights (mapped files count once read)
            p.data.sum()
    else:
        pipe2.update_components(**manager.get_components_by_names(pipe2.null_component_names))
    _settle()
    after = _rss_bytes()
    assert via_load_components or pipe2.unet is pipe.unet
    return (after - before) / 2**20


def load_registered_vs_fresh(impl: str) -> float:
    import logging

    logging.disable(logging.WARNING)
    lib = _lib("diffblocks")
    folders = _folders()
    manager = lib.ComponentsManager() if impl == "reuse" else None
    pipe, path = _first_pipeline(lib, folders, manager, "a" if manager else None)
    pipe2 = lib.ModularPipeline.from_pretrained(path, components_manager=manager, collection="b" if manager else None)
    t0 = time.perf_counter()
    pipe2.load_components()
    elapsed = time.perf_counter() - t0
    if impl == "reuse":
        assert pipe2.unet is pipe.unet
    else:
        assert pipe2.unet is not pipe.unet
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--impl")
    args = parser.parse_args()
    if args.list:
        print(json.dumps(CASES))
        return
    cases = {c["name"]: c for c in CASES}
    if args.case not in cases or args.impl not in cases[args.case]["impls"]:
        parser.error(f"--case must be one of {list(cases)} and --impl one of that case's impls")
    fn = {"cm_second_pipeline_added_mb": second_pipeline_added_mb,
          "cm_second_pipeline_load_components_added_mb": lambda impl: second_pipeline_added_mb(impl, True),
          "cm_load_registered_vs_fresh": load_registered_vs_fresh}[args.case]
    value = fn(args.impl)
    print(json.dumps({"value": value}))


if __name__ == "__main__":
    main()
