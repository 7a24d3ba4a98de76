"""Tiny SD 1.x / 2.x / inpainting pipelines written by diffusers, loaded once per session in both libraries."""
from __future__ import annotations

import os

import pytest
import torch

# the machine is shared by several jobs: one intra-op thread avoids oversubscription (results are unaffected)
torch.set_num_threads(1)


def _build_diffusers_folder(path: str, kind: str, seed: int = 0) -> str:
    """Build a tiny pipeline with diffusers' own classes and ``save_pretrained`` it (the foreign checkpoint)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.fixtures.tiny import (
        tiny_clip_text_config,
        tiny_scheduler_config,
        tiny_unet_config,
        tiny_vae_config,
        write_tiny_tokenizer,
    )

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config(kind)).eval()
    torch.manual_seed(seed + 1)
    vae = diffusers.AutoencoderKL(**tiny_vae_config()).eval()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config())).eval()
    tok_dir = write_tiny_tokenizer(os.path.join(path + "_tok"), pad_token="!" if kind == "sd2" else "<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    sched_cfg = {k: v for k, v in tiny_scheduler_config(kind).items() if not k.startswith("_")}
    scheduler_cls = getattr(diffusers, tiny_scheduler_config(kind)["_class_name"])
    scheduler = scheduler_cls.from_config(sched_cfg)
    cls = diffusers.StableDiffusionInpaintPipeline if kind == "inpaint" else diffusers.StableDiffusionPipeline
    pipe = cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory):
    """{"sd": SD 1.x (PNDM), "sd2": SD 2.x (DDIM, v-prediction), "inpaint": 9-channel inpainting UNet}."""
    root = tmp_path_factory.mktemp("sd-family")
    return {kind: _build_diffusers_folder(str(root / kind), kind) for kind in ("sd", "sd2", "inpaint")}


@pytest.fixture(scope="session")
def loaded(sd_folders):
    """Lazily loaded pipelines: ``loaded(lib, kind)`` with lib in {"ours", "theirs"} (cached per session)."""
    cache = {}

    def get(lib: str, kind: str):
        key = (lib, kind)
        if key not in cache:
            if lib == "ours":
                import diffblocks as mod
            else:
                import diffusers as mod
            cls = mod.StableDiffusionInpaintPipeline if kind == "inpaint" else mod.StableDiffusionPipeline
            pipe = cls.from_pretrained(sd_folders[kind])
            pipe.set_progress_bar_config(disable=True)
            cache[key] = pipe
        return cache[key]

    return get

