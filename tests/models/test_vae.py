"""AutoencoderKL parity with diffusers: encode/decode, posterior sampling, slicing, tiling, old attention names."""
from __future__ import annotations

import json
import os

import diffusers
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffblocks.models.autoencoder_kl import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution
from tests.fixtures.tiny import tiny_vae_config
from tests.models._helpers import TOL, max_diff, twin


@pytest.fixture(scope="module")
def pair():
    return twin(AutoencoderKL, diffusers.AutoencoderKL, tiny_vae_config("sd"))


def _images(batch=2, h=32, w=32, seed=0):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_decode_parity(pair):
    ours, ref = pair
    x = _images()
    with torch.no_grad():
        a, b = ours.encode(x), ref.encode(x)
        assert isinstance(a, AutoencoderKLOutput) and isinstance(a.latent_dist, DiagonalGaussianDistribution)
        assert a.latent_dist.mean.shape == (2, 4, 16, 16)
        for name in ("mean", "logvar", "std", "var"):
            assert max_diff(getattr(a.latent_dist, name), getattr(b.latent_dist, name)) <= TOL
        assert max_diff(a.latent_dist.mode(), b.latent_dist.mode()) <= TOL
        assert max_diff(a.latent_dist.kl(), b.latent_dist.kl()) <= 1e-3
        z = a.latent_dist.mode()
        da, db = ours.decode(z), ref.decode(z)
        assert isinstance(da, DecoderOutput) and da.sample.shape == (2, 3, 32, 32)
        assert max_diff(da.sample, db.sample) <= TOL
        assert max_diff(ours(x).sample, ref(x).sample) <= TOL
        assert max_diff(ours.decode(z, return_dict=False)[0], db.sample) <= TOL


def test_posterior_sample_uses_the_same_noise(pair):
    ours, ref = pair
    x = _images()
    with torch.no_grad():
        a = ours.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(11))
        b = ref.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(11))
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        c = ours.encode(x).latent_dist.sample(generator=gens)
        d = ref.encode(x).latent_dist.sample(generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert max_diff(a, b) <= TOL and max_diff(c, d) <= TOL


def test_slicing_same_result(pair):
    ours, _ = pair
    x = _images(batch=3)
    with torch.no_grad():
        full_enc = ours.encode(x).latent_dist.mean
        full_dec = ours.decode(full_enc).sample
        ours.enable_slicing()
        try:
            assert max_diff(ours.encode(x).latent_dist.mean, full_enc) <= TOL
            assert max_diff(ours.decode(full_enc).sample, full_dec) <= TOL
        finally:
            ours.disable_slicing()


@pytest.mark.parametrize("size", [(64, 64), (80, 48)], ids=["square", "ragged"])
def test_tiling_matches_diffusers_tiling(pair, size):
    ours, ref = pair
    x = _images(batch=1, h=size[0], w=size[1], seed=2)
    z = torch.randn(1, 4, size[0] // 2, size[1] // 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain_dec = ours.decode(z).sample
        ours.enable_tiling(), ref.enable_tiling()
        try:
            assert (ours.tile_sample_min_size, ours.tile_latent_min_size, ours.tile_overlap_factor) == (32, 16, 0.25)
            ea, eb = ours.encode(x).latent_dist.mean, ref.encode(x).latent_dist.mean
            da, db = ours.decode(z).sample, ref.decode(z).sample
        finally:
            ours.disable_tiling(), ref.disable_tiling()
    assert ea.shape == eb.shape == (1, 4, size[0] // 2, size[1] // 2)
    assert max_diff(ea, eb) <= TOL
    assert da.shape == db.shape == (1, 3, size[0], size[1])
    assert max_diff(da, db) <= TOL
    assert max_diff(da, plain_dec) > 1e-4  # tiling really happened


def test_custom_tile_settings_follow_diffusers(pair):
    ours, ref = pair
    for m in (ours, ref):
        m.enable_tiling()
        m.tile_sample_min_size, m.tile_latent_min_size, m.tile_overlap_factor = 24, 12, 0.5
    z = torch.randn(1, 4, 20, 20, generator=torch.Generator().manual_seed(4))
    try:
        with torch.no_grad():
            assert max_diff(ours.decode(z).sample, ref.decode(z).sample) <= TOL
    finally:
        for m in (ours, ref):
            m.disable_tiling()
            m.tile_sample_min_size, m.tile_latent_min_size, m.tile_overlap_factor = 32, 16, 0.25


@pytest.mark.parametrize(
    "over",
    [{"mid_block_add_attention": False}, {"use_quant_conv": False, "use_post_quant_conv": False}],
    ids=["no-mid-attention", "no-quant-convs"],
)
def test_config_variants(over):
    cfg = dict(tiny_vae_config("sd"), **over)
    ours, ref = twin(AutoencoderKL, diffusers.AutoencoderKL, cfg)
    x = _images(batch=1)
    with torch.no_grad():
        assert max_diff(ours(x).sample, ref(x).sample) <= TOL
    if "use_quant_conv" in over:
        assert ours.quant_conv is None and ours.post_quant_conv is None


def test_old_attention_key_names_are_converted(tmp_path, pair):
    ours, ref = pair
    folder = tmp_path / "old_vae"
    ref.save_pretrained(str(folder))
    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    old = {}
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    n_renamed = 0
    for k, v in weights.items():
        for new, legacy in renames.items():
            marker = f".attentions.0.{new}."
            if marker in k:
                k = k.replace(marker, f".attentions.0.{legacy}.")
                if v.ndim == 2 and k.endswith("weight"):
                    v = v[:, :, None, None].contiguous()  # conv-shaped, as in the earliest checkpoints
                n_renamed += 1
        old[k] = v
    assert n_renamed == 16  # encoder + decoder mid attention: 4 projections x weight/bias x 2
    save_file(old, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    loaded = AutoencoderKL.from_pretrained(str(folder))
    x = _images(batch=1)
    with torch.no_grad():
        assert max_diff(loaded(x).sample, ref(x).sample) <= TOL
    converted = AutoencoderKL._convert_state_dict_keys(old)
    assert "decoder.mid_block.attentions.0.to_out.0.weight" in converted
    assert converted["decoder.mid_block.attentions.0.to_q.weight"].ndim == 2


def test_bad_input_is_named(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=r"`x` must be a 4-D tensor"):
        ours.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"`z` must be a 4-D tensor"):
        ours.decode(torch.zeros(4, 8, 8))


def test_config_defaults_match_diffusers():
    import inspect

    mine = inspect.signature(AutoencoderKL.__init__).parameters
    theirs = inspect.signature(diffusers.AutoencoderKL.__init__).parameters
    assert list(mine) == list(theirs)
    for name in theirs:
        assert mine[name].default == theirs[name].default, name
