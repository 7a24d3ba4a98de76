"""Checkpoints cross the library boundary: diffusers saves -> we load (same outputs), we save -> diffusers loads."""
from __future__ import annotations

import diffusers
import pytest
import torch

from diffblocks.models.autoencoder_kl import AutoencoderKL
from diffblocks.models.controlnet import ControlNetModel
from diffblocks.models.unet_2d_condition import UNet2DConditionModel
from tests.fixtures.tiny import tiny_unet_config, tiny_vae_config
from tests.models._helpers import TOL, max_diff, perturb
from tests.models.test_controlnet import controlnet_config


def _unet_inputs(cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg["in_channels"], 16, 16, generator=g)
    ctx = torch.randn(1, 5, cfg["cross_attention_dim"], generator=g)
    added = None
    if cfg.get("addition_embed_type") == "text_time":
        added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])}
    return x, ctx, added


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_unet_diffusers_saved_loads_here(tmp_path, kind):
    cfg = tiny_unet_config(kind)
    torch.manual_seed(0)
    ref = perturb(diffusers.UNet2DConditionModel(**cfg)).eval()
    ref.save_pretrained(str(tmp_path / "unet"))
    ours = UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"))
    assert not ours.training
    assert all(not p.is_meta for p in ours.parameters())
    x, ctx, added = _unet_inputs(cfg)
    with torch.no_grad():
        assert max_diff(ours(x, 10, ctx, added_cond_kwargs=added).sample, ref(x, 10, ctx, added_cond_kwargs=added).sample) <= TOL


def test_unet_saved_here_loads_in_diffusers(tmp_path):
    cfg = tiny_unet_config("sd2")
    ours = perturb(UNet2DConditionModel(**cfg), seed=4).eval()
    ours.save_pretrained(str(tmp_path / "unet"))
    ref = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "unet")).eval()
    assert ref.config.use_linear_projection is True and list(ref.config.attention_head_dim) == [2, 4]
    x, ctx, _ = _unet_inputs(cfg)
    with torch.no_grad():
        assert max_diff(ours(x, 10, ctx).sample, ref(x, 10, ctx).sample) <= TOL


def test_unet_fp16_variant_and_config_override(tmp_path):
    cfg = tiny_unet_config("sd")
    torch.manual_seed(0)
    ref = perturb(diffusers.UNet2DConditionModel(**cfg)).eval()
    ref.to(torch.float16).save_pretrained(str(tmp_path / "unet"), variant="fp16")
    ours = UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"), variant="fp16", torch_dtype=torch.float16)
    assert ours.dtype == torch.float16
    ref16 = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"), variant="fp16", torch_dtype=torch.float16)
    sd_o, sd_r = ours.state_dict(), ref16.state_dict()
    assert all(torch.equal(sd_o[k], sd_r[k]) for k in sd_r)
    # an inpainting UNet from the same config with in_channels overridden (random conv_in not loaded: mismatch)
    with pytest.raises((ValueError, RuntimeError), match="conv_in.weight"):
        UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"), variant="fp16", in_channels=9)


def test_vae_round_trip_both_ways(tmp_path):
    torch.manual_seed(0)
    ref = perturb(diffusers.AutoencoderKL(**tiny_vae_config("sdxl"))).eval()
    ref.save_pretrained(str(tmp_path / "ref"))
    ours = AutoencoderKL.from_pretrained(str(tmp_path / "ref"))
    assert ours.config.scaling_factor == 0.13025 and ours.config.force_upcast is True
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert max_diff(ours(x).sample, ref(x).sample) <= TOL
    ours.save_pretrained(str(tmp_path / "ours"))
    back = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        assert max_diff(back(x).sample, ref(x).sample) <= TOL


def test_controlnet_round_trip_both_ways(tmp_path):
    cfg = controlnet_config("sd")
    torch.manual_seed(0)
    ref = perturb(diffusers.ControlNetModel(**cfg)).eval()
    ref.save_pretrained(str(tmp_path / "ref"))
    ours = ControlNetModel.from_pretrained(str(tmp_path / "ref"))
    ours.save_pretrained(str(tmp_path / "ours"))
    back = diffusers.ControlNetModel.from_pretrained(str(tmp_path / "ours")).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx, img = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 5, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        a = ours(x, 3, ctx, img).mid_block_res_sample
        b = ref(x, 3, ctx, img).mid_block_res_sample
        c = back(x, 3, ctx, img).mid_block_res_sample
    assert max_diff(a, b) <= TOL and max_diff(c, b) <= TOL


def test_auto_model_picks_our_classes(tmp_path):
    from diffblocks.models import AutoModel

    torch.manual_seed(0)
    diffusers.AutoencoderKL(**tiny_vae_config("sd")).save_pretrained(str(tmp_path / "vae"))
    model = AutoModel.from_pretrained(str(tmp_path / "vae"))
    assert type(model) is AutoencoderKL
