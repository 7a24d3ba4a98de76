"""ControlNetModel / MultiControlNetModel parity with diffusers (SD and SDXL, guess mode, scales, channel order)."""
from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel as RefMulti

from diffblocks.models.controlnet import ControlNetModel, ControlNetOutput, MultiControlNetModel
from diffblocks.models.unet_2d_condition import UNet2DConditionModel
from tests.fixtures.tiny import tiny_unet_config
from tests.models._helpers import TOL, max_diff, perturb, twin

_UNET_ONLY = ("up_block_types", "sample_size", "out_channels")


def controlnet_config(kind: str = "sd", **over):
    cfg = {k: v for k, v in tiny_unet_config(kind).items() if k not in _UNET_ONLY}
    cfg.update(conditioning_embedding_out_channels=(8, 16), **over)
    return cfg


def _inputs(cfg, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    ctx = torch.randn(batch, 7, cfg["cross_attention_dim"], generator=g)
    image = torch.rand(batch, 3, 32, 32, generator=g)
    added = None
    if cfg.get("addition_embed_type") == "text_time":
        added = {"text_embeds": torch.randn(batch, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * batch)}
    return x, ctx, image, added


def _compare(ours, ref, cfg, **kw):
    x, ctx, image, added = _inputs(cfg)
    with torch.no_grad():
        a = ours(x, 500, ctx, image, added_cond_kwargs=added, **kw)
        b = ref(x, 500, ctx, image, added_cond_kwargs=added, **kw)
    assert len(a.down_block_res_samples) == len(b.down_block_res_samples) == 6
    for p, q in zip(a.down_block_res_samples, b.down_block_res_samples):
        assert max_diff(p, q) <= TOL
    assert max_diff(a.mid_block_res_sample, b.mid_block_res_sample) <= TOL
    assert a.mid_block_res_sample.abs().max() > 1e-4
    return a


@pytest.fixture(scope="module")
def sd_pair():
    cfg = controlnet_config("sd")
    return (*twin(ControlNetModel, diffusers.ControlNetModel, cfg), cfg)


@pytest.mark.parametrize(
    "kw",
    [{}, {"conditioning_scale": 0.6}, {"guess_mode": True}, {"guess_mode": True, "conditioning_scale": 0.5}],
    ids=["plain", "scale", "guess", "guess+scale"],
)
def test_sd_controlnet_parity(sd_pair, kw):
    ours, ref, cfg = sd_pair
    _compare(ours, ref, cfg, **kw)


def test_guess_mode_scales_residuals_by_logspace(sd_pair):
    ours, _, cfg = sd_pair
    x, ctx, image, _ = _inputs(cfg)
    with torch.no_grad():
        plain = ours(x, 5, ctx, image)
        guess = ours(x, 5, ctx, image, guess_mode=True)
    scales = torch.logspace(-1, 0, 7)
    for i, (p, g) in enumerate(zip(plain.down_block_res_samples, guess.down_block_res_samples)):
        assert max_diff(p * scales[i], g) <= 1e-6
    assert max_diff(plain.mid_block_res_sample, guess.mid_block_res_sample) <= 1e-6  # last scale is 1.0


def test_sdxl_controlnet_parity():
    cfg = controlnet_config("sdxl")
    ours, ref = twin(ControlNetModel, diffusers.ControlNetModel, cfg)
    _compare(ours, ref, cfg)
    _compare(ours, ref, cfg, guess_mode=True, conditioning_scale=0.7)
    x, ctx, image, _ = _inputs(cfg)
    with pytest.raises(ValueError, match="requires the keyword argument `text_embeds`"):
        ours(x, 1, ctx, image)


@pytest.mark.parametrize("over", [{"controlnet_conditioning_channel_order": "bgr"}, {"global_pool_conditions": True}])
def test_channel_order_and_global_pool(over):
    cfg = controlnet_config("sd", **over)
    ours, ref = twin(ControlNetModel, diffusers.ControlNetModel, cfg)
    out = _compare(ours, ref, cfg, guess_mode=True)
    if "global_pool_conditions" in over:
        assert out.mid_block_res_sample.shape[-2:] == (1, 1)


def test_from_unet_matches_diffusers_from_unet():
    ucfg = tiny_unet_config("sdxl")
    ours_unet, ref_unet = twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, ucfg)
    torch.manual_seed(0)
    ref = diffusers.ControlNetModel.from_unet(ref_unet, conditioning_embedding_out_channels=(8, 16))
    ours = ControlNetModel.from_unet(ours_unet, conditioning_embedding_out_channels=(8, 16))
    assert dict(ours.config)["addition_embed_type"] == "text_time"
    sd_o, sd_r = ours.state_dict(), ref.state_dict()
    assert set(sd_o) == set(sd_r)
    # encoder weights are copies of the UNet's; the new layers (cond embedding, zero convs) differ only by init
    for k in sd_r:
        if k.startswith(("down_blocks", "mid_block", "conv_in", "time_embedding", "add_embedding")):
            assert torch.equal(sd_o[k], sd_r[k]), k
    assert all(torch.count_nonzero(v) == 0 for k, v in sd_o.items() if k.startswith("controlnet_down_blocks"))
    with pytest.raises(TypeError, match="`unet` must be a UNet2DConditionModel"):
        ControlNetModel.from_unet(object())


def test_unet_consumes_controlnet_residuals(sd_pair):
    ours_cn, ref_cn, cfg = sd_pair
    ucfg = tiny_unet_config("sd")
    ours_unet, ref_unet = twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, ucfg)
    x, ctx, image, _ = _inputs(cfg)
    with torch.no_grad():
        d, m = ours_cn(x, 3, ctx, image, return_dict=False)
        a = ours_unet(x, 3, ctx, down_block_additional_residuals=d, mid_block_additional_residual=m).sample
        d2, m2 = ref_cn(x, 3, ctx, image, return_dict=False)
        b = ref_unet(x, 3, ctx, down_block_additional_residuals=d2, mid_block_additional_residual=m2).sample
    assert max_diff(a, b) <= TOL


def test_multi_controlnet_sums_residuals(sd_pair):
    ours1, ref1, cfg = sd_pair
    ours2, ref2 = twin(ControlNetModel, diffusers.ControlNetModel, controlnet_config("sd"), seed=7)
    multi, ref_multi = MultiControlNetModel([ours1, ours2]), RefMulti([ref1, ref2])
    x, ctx, image, _ = _inputs(cfg)
    image2 = torch.rand_like(image)
    with torch.no_grad():
        a = multi(x, 9, ctx, [image, image2], [0.3, 0.8])
        # quirk: diffusers' MultiControlNetModel ignores return_dict=True (and then mis-unpacks the outputs);
        # pipelines call it with return_dict=False, which is what we compare against
        b_down, b_mid = ref_multi(x, 9, ctx, [image, image2], [0.3, 0.8], return_dict=False)
        t_down, t_mid = multi(x, 9, ctx, [image, image2], [0.3, 0.8], return_dict=False)
    assert isinstance(a, ControlNetOutput)
    for p, q, r in zip(a.down_block_res_samples, b_down, t_down):
        assert max_diff(p, q) <= TOL and torch.equal(p, r)
    assert max_diff(a.mid_block_res_sample, b_mid) <= TOL
    with pytest.raises(ValueError, match="`controlnet_cond` has 1 images but there are 2 ControlNets"):
        multi(x, 9, ctx, [image], [1.0, 1.0])
    with pytest.raises(ValueError, match="non-empty list"):
        MultiControlNetModel([])


def test_multi_controlnet_save_and_load_layout(tmp_path, sd_pair):
    ours1, _, cfg = sd_pair
    ours2 = perturb(ControlNetModel(**controlnet_config("sd")), seed=3).eval()
    MultiControlNetModel([ours1, ours2]).save_pretrained(str(tmp_path / "cn"))
    assert (tmp_path / "cn" / "config.json").exists() and (tmp_path / "cn_1" / "config.json").exists()
    loaded = MultiControlNetModel.from_pretrained(str(tmp_path / "cn"))
    assert len(loaded.nets) == 2
    assert torch.equal(loaded.nets[1].controlnet_mid_block.weight, ours2.controlnet_mid_block.weight)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="`controlnet_conditioning_channel_order` must be 'rgb' or 'bgr'"):
        ControlNetModel(**controlnet_config("sd", controlnet_conditioning_channel_order="rbg"))
    model = ControlNetModel(**controlnet_config("sd"))
    x, ctx, image, _ = _inputs(controlnet_config("sd"))
    with pytest.raises(ValueError, match="`controlnet_cond` must be a 4-D tensor"):
        model(x, 1, ctx, image[0])
    with pytest.raises(ValueError, match="`encoder_hidden_states` is required"):
        model(x, 1, None, image)
    with pytest.raises(ValueError, match="`sample` must be a 4-D tensor"):
        model(x[0], 1, ctx, image)


def test_config_defaults_match_diffusers():
    import inspect

    mine = inspect.signature(ControlNetModel.__init__).parameters
    theirs = inspect.signature(diffusers.ControlNetModel.__init__).parameters
    assert list(mine) == list(theirs)
    for name in theirs:
        assert mine[name].default == theirs[name].default, name
