"""Tiny IP-Adapter repositories in the original checkpoint format (random weights), built at test time.

Layout written by ``build_ip_adapter_repo``::

    <root>/<subfolder>/image_encoder/{config.json, model.safetensors}   (transformers CLIPVisionModelWithProjection)
    <root>/<subfolder>/ip-adapter.bin                                    (plain; torch dict image_proj / ip_adapter)
    <root>/<subfolder>/ip-adapter.safetensors                            (plain; flat image_proj.* / ip_adapter.*)
    <root>/<subfolder>/ip-adapter-plus.bin / ip-adapter-plus.safetensors (plus: perceiver resampler)
    <root>/<subfolder>/ip-adapter-2.safetensors                          (a second plain adapter)

The ``ip_adapter`` tensors are numbered 1, 3, 5, ... over the cross-attention layers in diffusers' (the oracle's)
``attn_processors`` order, as the original checkpoints are.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch
from safetensors.torch import save_file

VISION_HIDDEN = 32
PROJECTION_DIM = 24
IMAGE_SIZE = 32
PLUS_QUERIES = 8
PLUS_HIDDEN = 32


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=VISION_HIDDEN, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=8, projection_dim=PROJECTION_DIM, num_channels=3,
    )


def build_image_encoder(seed: int = 7):
    from transformers import CLIPVisionModelWithProjection

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return CLIPVisionModelWithProjection(vision_config()).eval()
    finally:
        torch.random.set_rng_state(state)


def cross_layers(unet_config: Dict) -> List[Tuple[int, int]]:
    """(hidden, cross_dim) per cross-attention layer in checkpoint order, read from diffusers' UNet."""
    import diffusers

    unet = diffusers.UNet2DConditionModel(**unet_config)
    out = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        out.append((attn.to_k.out_features, attn.to_k.in_features))
    return out


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=0.2):
    return torch.randn(*shape, generator=gen) * scale


def ip_layers(layers: List[Tuple[int, int]], gen) -> Dict[str, torch.Tensor]:
    sd = {}
    for i, (hidden, cross) in enumerate(layers):
        sd[f"{1 + 2 * i}.to_k_ip.weight"] = _rand(gen, hidden, cross)
        sd[f"{1 + 2 * i}.to_v_ip.weight"] = _rand(gen, hidden, cross)
    return sd


def plain_state_dict(layers, cross_dim: int, seed: int) -> Dict[str, Dict[str, torch.Tensor]]:
    gen = _gen(seed)
    image_proj = {
        "proj.weight": _rand(gen, 4 * cross_dim, PROJECTION_DIM, scale=0.3),
        "proj.bias": _rand(gen, 4 * cross_dim),
        "norm.weight": 1 + _rand(gen, cross_dim),
        "norm.bias": _rand(gen, cross_dim),
    }
    return {"image_proj": image_proj, "ip_adapter": ip_layers(layers, gen)}


def plus_state_dict(layers, cross_dim: int, seed: int, depth: int = 4) -> Dict[str, Dict[str, torch.Tensor]]:
    gen = _gen(seed)
    h = PLUS_HIDDEN
    p = {
        "latents": torch.randn(1, PLUS_QUERIES, h, generator=gen) / h**0.5,
        "proj_in.weight": _rand(gen, h, VISION_HIDDEN), "proj_in.bias": _rand(gen, h),
        "proj_out.weight": _rand(gen, cross_dim, h), "proj_out.bias": _rand(gen, cross_dim),
        "norm_out.weight": 1 + _rand(gen, cross_dim), "norm_out.bias": _rand(gen, cross_dim),
    }
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            p[f"layers.{i}.0.{norm}.weight"] = 1 + _rand(gen, h)
            p[f"layers.{i}.0.{norm}.bias"] = _rand(gen, h)
        p[f"layers.{i}.0.to_q.weight"] = _rand(gen, 64, h)
        p[f"layers.{i}.0.to_kv.weight"] = _rand(gen, 128, h)
        p[f"layers.{i}.0.to_out.weight"] = _rand(gen, h, 64)
        p[f"layers.{i}.1.0.weight"] = 1 + _rand(gen, h)
        p[f"layers.{i}.1.0.bias"] = _rand(gen, h)
        p[f"layers.{i}.1.1.weight"] = _rand(gen, 4 * h, h)
        p[f"layers.{i}.1.3.weight"] = _rand(gen, h, 4 * h)
    return {"image_proj": p, "ip_adapter": ip_layers(layers, gen)}


def _flat(sd):
    return {f"{group}.{k}": v.contiguous() for group, part in sd.items() for k, v in part.items()}


def build_ip_adapter_repo(root: str, unet_config: Dict, subfolder: str = "models", seed: int = 0) -> str:
    """Write the tiny IP-Adapter repo for a UNet config; returns ``root``."""
    folder = os.path.join(root, subfolder)
    os.makedirs(folder, exist_ok=True)
    build_image_encoder(seed + 7).save_pretrained(os.path.join(folder, "image_encoder"))
    layers = cross_layers(unet_config)
    cross = unet_config["cross_attention_dim"]
    plain = plain_state_dict(layers, cross, seed + 1)
    plus = plus_state_dict(layers, cross, seed + 2)
    second = plain_state_dict(layers, cross, seed + 3)
    torch.save(plain, os.path.join(folder, "ip-adapter.bin"))
    save_file(_flat(plain), os.path.join(folder, "ip-adapter.safetensors"))
    torch.save(plus, os.path.join(folder, "ip-adapter-plus.bin"))
    save_file(_flat(plus), os.path.join(folder, "ip-adapter-plus.safetensors"))
    save_file(_flat(second), os.path.join(folder, "ip-adapter-2.safetensors"))
    return root


def reference_image(seed: int = 0, size: int = 40):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
