"""Tiny SDXL base and refiner folders (written once per session) and lazily loaded pipelines of both libraries."""
from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

# the machine is shared by several jobs: one intra-op thread avoids oversubscription (results are unaffected)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sdxl_folders(tmp_path_factory):
    """{"base": tiny SDXL base folder, "refiner": tiny SDXL refiner folder} (diffusers layout)."""
    from tests.fixtures.tiny import build_tiny_sdxl_folder

    root = tmp_path_factory.mktemp("sdxl")
    folders = {kind: build_tiny_sdxl_folder(str(root / kind), kind) for kind in ("base", "refiner")}
    folders["inpaint9"] = _inpaint9_folder(str(root / "inpaint9"), folders["base"])
    return folders


def _inpaint9_folder(path: str, base: str) -> str:
    """The base folder with a 9-channel (inpainting) UNet: latents + mask + masked-image latents."""
    import shutil

    from diffblocks import UNet2DConditionModel
    from tests.fixtures.tiny import tiny_unet_config

    shutil.copytree(base, path)
    shutil.rmtree(os.path.join(path, "unet"))
    torch.manual_seed(7)
    unet = UNet2DConditionModel(**{**tiny_unet_config("sdxl"), "in_channels": 9}).eval()
    unet.save_pretrained(os.path.join(path, "unet"))
    return path


@pytest.fixture(scope="session")
def sdxl_loaded(sdxl_folders):
    """``sdxl_loaded(lib, cls_name, kind)`` -> a pipeline (lib "ours" or "theirs"), cached per session."""
    cache = {}

    def get(lib: str, cls_name: str, kind: str = "base"):
        key = (lib, cls_name, kind)
        if key not in cache:
            if lib == "ours":
                import diffblocks as mod
            else:
                import diffusers as mod
            pipe = getattr(mod, cls_name).from_pretrained(sdxl_folders[kind])
            pipe.set_progress_bar_config(disable=True)
            cache[key] = pipe
        return cache[key]

    return get


def write_modular_repo(folder: str, source: str, names, configs=None) -> str:
    """A "modular repo": a folder holding only ``modular_model_index.json`` whose components point at the
    subfolders of another (classic) folder, like the seed's YiYiXu/modular-demo-auto."""
    classes = json.load(open(os.path.join(source, "model_index.json")))
    index = {"_class_name": "StableDiffusionXLModularPipeline", "_blocks_class_name": "StableDiffusionXLAutoBlocks",
             "_diffusers_version": "0.35.0"}
    index.update(configs or {})
    for name in names:
        library, cls = classes[name]
        index[name] = [library, cls, {"pretrained_model_name_or_path": source, "subfolder": name, "variant": None,
                                      "revision": None, "type_hint": [library, cls]}]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "modular_model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder


@pytest.fixture(scope="session")
def modular_repos(sdxl_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-modular")
    demo = write_modular_repo(
        str(root / "modular-demo-auto"), sdxl_folders["base"],
        ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler"],
        {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False},
    )
    refiner = write_modular_repo(
        str(root / "modular_refiner"), sdxl_folders["refiner"],
        ["text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"],
        {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True},
    )
    return {"t2i": demo, "refiner": refiner}


def as_np(images):
    if isinstance(images, list) and isinstance(images[0], PIL.Image.Image):
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def max_diff(a, b) -> float:
    a, b = as_np(a), as_np(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def make_image(seed: int = 0, size: int = 32) -> PIL.Image.Image:
    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


def make_mask(size: int = 32) -> PIL.Image.Image:
    mask = np.zeros((size, size), dtype="uint8")
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return PIL.Image.fromarray(mask)
