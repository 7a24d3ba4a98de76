"""Tiny SD 1.x and SDXL ControlNet pipelines written by diffusers (the foreign checkpoints), loaded once per
session in both libraries; two perturbed ControlNets per family so the residuals are not zero."""
from __future__ import annotations

import os

import pytest
import torch

# the machine is shared: one intra-op thread (results are unaffected)
torch.set_num_threads(1)

_UNET_ONLY = ("up_block_types", "sample_size", "out_channels")


def controlnet_config(kind: str) -> dict:
    from tests.fixtures.tiny import tiny_unet_config

    cfg = {k: v for k, v in tiny_unet_config(kind).items() if k not in _UNET_ONLY}
    cfg["conditioning_embedding_out_channels"] = (8, 16)
    return cfg


def _perturbed_controlnet(kind: str, seed: int):
    import diffusers

    torch.manual_seed(seed)
    net = diffusers.ControlNetModel(**controlnet_config(kind)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _tokenizer(path: str, pad: str):
    from transformers import CLIPTokenizer

    from tests.fixtures.tiny import write_tiny_tokenizer

    return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(path, pad_token=pad))


def _clip(seed: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.fixtures.tiny import tiny_clip_text_config

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**tiny_clip_text_config(projection=projection))).eval()


def _scheduler(kind: str):
    import diffusers

    from tests.fixtures.tiny import tiny_scheduler_config

    cfg = tiny_scheduler_config(kind)
    return getattr(diffusers, cfg["_class_name"]).from_config({k: v for k, v in cfg.items() if not k.startswith("_")})


def build_sd_controlnet_folder(root: str) -> dict:
    """diffusers writes: an SD ControlNet pipeline (single net), a 9-channel inpainting UNet and a second net."""
    import diffusers

    from tests.fixtures.tiny import tiny_unet_config, tiny_vae_config

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config("sd")).eval()
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(**tiny_vae_config()).eval()
    torch.manual_seed(3)
    unet9 = diffusers.UNet2DConditionModel(**tiny_unet_config("inpaint")).eval()
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=_clip(2, False), tokenizer=_tokenizer(os.path.join(root, "tok"), "<|endoftext|>"),
        unet=unet, controlnet=_perturbed_controlnet("sd", 10), scheduler=_scheduler("sd"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    paths = {"pipe": os.path.join(root, "sd-controlnet"), "cn2": os.path.join(root, "cn2"),
             "unet9": os.path.join(root, "unet9")}
    pipe.save_pretrained(paths["pipe"])
    _perturbed_controlnet("sd", 11).save_pretrained(paths["cn2"])
    unet9.save_pretrained(paths["unet9"])
    return paths


def build_sdxl_controlnet_folder(root: str) -> dict:
    import diffusers

    from tests.fixtures.tiny import tiny_unet_config, tiny_vae_config

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config("sdxl")).eval()
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(**tiny_vae_config("sdxl")).eval()
    pipe = diffusers.StableDiffusionXLControlNetPipeline(
        vae=vae, text_encoder=_clip(2, False), text_encoder_2=_clip(3, True),
        tokenizer=_tokenizer(os.path.join(root, "tok1"), "<|endoftext|>"),
        tokenizer_2=_tokenizer(os.path.join(root, "tok2"), "!"),
        unet=unet, controlnet=_perturbed_controlnet("sdxl", 20), scheduler=_scheduler("sdxl"),
    )
    paths = {"pipe": os.path.join(root, "sdxl-controlnet"), "cn2": os.path.join(root, "xl-cn2")}
    pipe.save_pretrained(paths["pipe"])
    _perturbed_controlnet("sdxl", 21).save_pretrained(paths["cn2"])
    return paths


@pytest.fixture(scope="session")
def cn_folders(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("controlnet"))
    return {"sd": build_sd_controlnet_folder(root), "sdxl": build_sdxl_controlnet_folder(root)}


@pytest.fixture(scope="session")
def cn_loaded(cn_folders):
    """``cn_loaded(lib, kind)`` -> the ControlNet text-to-image pipeline of ``kind`` ("sd"/"sdxl") loaded by
    ``lib`` ("ours"/"theirs"), plus ``cn_loaded(lib, kind, "cn2")`` -> the second ControlNet and
    ``cn_loaded(lib, "sd", "unet9")`` -> the inpainting UNet (cached per session)."""
    cache = {}

    def get(lib: str, kind: str, what: str = "pipe"):
        key = (lib, kind, what)
        if key not in cache:
            if lib == "ours":
                import diffblocks as mod
            else:
                import diffusers as mod
            path = cn_folders[kind][what]
            if what == "pipe":
                cls = mod.StableDiffusionControlNetPipeline if kind == "sd" else mod.StableDiffusionXLControlNetPipeline
                obj = cls.from_pretrained(path)
                obj.set_progress_bar_config(disable=True)
            elif what == "cn2":
                obj = mod.ControlNetModel.from_pretrained(path).eval()
            else:
                obj = mod.UNet2DConditionModel.from_pretrained(path).eval()
            cache[key] = obj
        return cache[key]

    return get
