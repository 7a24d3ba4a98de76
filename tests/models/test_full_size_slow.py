"""Opt-in (``pytest -m slow``): the real SD 1.5 UNet and VAE architectures with random weights, saved by diffusers,
loaded here, one forward compared. Needs ~8 GB RAM and a few minutes of CPU."""
from __future__ import annotations

import diffusers
import pytest
import torch

from diffblocks.models.autoencoder_kl import AutoencoderKL
from diffblocks.models.unet_2d_condition import UNet2DConditionModel
from tests.models._helpers import max_diff

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512,
}


@pytest.mark.slow
def test_sd15_unet_full_size(tmp_path):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**SD15_UNET).eval()
    ref.save_pretrained(str(tmp_path / "unet"))
    ours = UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"))
    assert sum(p.numel() for p in ours.parameters()) == 859520964
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        a, b = ours(x, 501, ctx).sample, ref(x, 501, ctx).sample
    assert max_diff(a, b) <= 1e-4


@pytest.mark.slow
def test_sd15_vae_full_size(tmp_path):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**SD15_VAE).eval()
    ref.save_pretrained(str(tmp_path / "vae"))
    ours = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert max_diff(ours.decode(z).sample, ref.decode(z).sample) <= 1e-4
        assert max_diff(ours.encode(x).latent_dist.mean, ref.encode(x).latent_dist.mean) <= 1e-4
