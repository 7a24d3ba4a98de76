"""Shared inputs and the run-in-both-libraries helper of the ControlNet tests."""
from __future__ import annotations

import numpy as np
import PIL.Image
import torch

TOL = 1e-4


def rgb(seed: int, size: int = 32) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def mask(size: int = 32) -> PIL.Image.Image:
    m = np.zeros((size, size), dtype=np.uint8)
    m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return PIL.Image.fromarray(m)


def lib(name: str):
    if name == "ours":
        import diffblocks as mod
    else:
        import diffusers as mod
    return mod


def make(cn_loaded, which: str, kind: str, cls_name: str, multi: bool = False, unet9: bool = False):
    """A ``cls_name`` pipeline of library ``which`` sharing the session pipeline's components (two ControlNets
    with ``multi``; the 9-channel inpainting UNet with ``unet9``)."""
    base = cn_loaded(which, kind)
    components = dict(base.components)
    if multi:
        components["controlnet"] = [base.controlnet, cn_loaded(which, kind, "cn2")]
    if unet9:
        components["unet"] = cn_loaded(which, kind, "unet9")
    pipe = getattr(lib(which), cls_name)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_np(images) -> np.ndarray:
    if isinstance(images, list) and isinstance(images[0], PIL.Image.Image):
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def run_both(cn_loaded, kind: str, cls_name: str, multi: bool = False, unet9: bool = False, seed: int = 0,
             **kwargs):
    out = {}
    for which in ("theirs", "ours"):
        pipe = make(cn_loaded, which, kind, cls_name, multi=multi, unet9=unet9)
        kwargs.setdefault("num_inference_steps", 2)
        out[which] = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    return out["ours"], out["theirs"]


def assert_close(ours, theirs, tol: float = TOL) -> float:
    a, b = as_np(ours), as_np(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float(np.abs(a - b).max())
    assert diff <= tol, f"max abs diff {diff}"
    return diff
