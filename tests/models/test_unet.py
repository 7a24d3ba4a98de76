"""UNet2DConditionModel: state-dict layout and forward parity with diffusers on tiny configs of every variant."""
from __future__ import annotations

import warnings

import diffusers
import pytest
import torch

from diffblocks.models.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from tests.fixtures.tiny import tiny_unet_config
from tests.models._helpers import TOL, max_diff, twin


def _inputs(cfg, batch=2, size=16, seq=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], size, size, generator=g)
    ctx = torch.randn(batch, seq, cfg["cross_attention_dim"], generator=g)
    added = None
    if cfg.get("addition_embed_type") == "text_time":
        n_ids = (cfg["projection_class_embeddings_input_dim"] - 32) // cfg["addition_time_embed_dim"]
        added = {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32, 6.0][:n_ids]] * batch),
        }
    return x, ctx, added


@pytest.fixture(scope="module")
def sd_pair():
    return twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, tiny_unet_config("sd"))


@pytest.mark.parametrize("kind", ["sd", "sd2", "inpaint", "sdxl", "sdxl_refiner"])
def test_forward_parity_per_variant(kind):
    cfg = tiny_unet_config(kind)
    ours, ref = twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, cfg)
    x, ctx, added = _inputs(cfg)
    with torch.no_grad():
        a = ours(x, 999, ctx, added_cond_kwargs=added).sample
        b = ref(x, 999, ctx, added_cond_kwargs=added).sample
    assert a.shape == (2, 4, 16, 16)
    assert max_diff(a, b) <= TOL
    assert a.abs().max() > 1e-3  # not a degenerate all-zero output


def test_sd1_style_three_blocks_and_odd_sizes():
    # SD 1.x layout (CrossAttn x2 + DownBlock2D), scalar head count, 2 transformer layers, size not divisible by 4
    cfg = dict(
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=24,
        attention_head_dim=4,
        transformer_layers_per_block=2,
        norm_num_groups=16,
        sample_size=16,
    )
    ours, ref = twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, cfg)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 18, 14, generator=g)
    ctx = torch.randn(1, 5, 24, generator=g)
    with torch.no_grad():
        a = ours(x, torch.tensor(10.5), ctx).sample
        b = ref(x, torch.tensor(10.5), ctx).sample
    assert a.shape == (1, 4, 18, 14)
    assert max_diff(a, b) <= TOL


def test_sd2_per_block_heads_follow_the_naming_quirk():
    # attention_head_dim is the number of heads per block (naming quirk): [2, 4] -> the 64-channel block has
    # 4 heads of 16; swapping to [4, 2] gives it 2 heads of 32
    cfg = tiny_unet_config("sd2")
    model = UNet2DConditionModel(**cfg)
    attn = model.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert (attn.heads, attn.dim_head) == (4, 16)
    attn_up = model.up_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert (attn_up.heads, attn_up.dim_head) == (4, 16)
    assert isinstance(model.down_blocks[1].attentions[0].proj_in, torch.nn.Linear)
    assert attn.upcast_attention is True
    swapped = UNet2DConditionModel(**dict(cfg, attention_head_dim=[4, 2]))
    attn = swapped.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert (attn.heads, attn.dim_head) == (2, 32)


@pytest.mark.parametrize(
    "timestep",
    [5, 5.5, torch.tensor(5), torch.tensor([5]), torch.tensor([5, 7]), torch.tensor(5.5, dtype=torch.float64)],
    ids=["int", "float", "0d", "1d-one", "1d-batch", "0d-f64"],
)
def test_timestep_forms(sd_pair, timestep):
    ours, ref = sd_pair
    cfg = tiny_unet_config("sd")
    x, ctx, _ = _inputs(cfg)
    with torch.no_grad():
        assert max_diff(ours(x, timestep, ctx).sample, ref(x, timestep, ctx).sample) <= TOL


def test_bad_timestep_length_is_a_clear_error(sd_pair):
    ours, _ = sd_pair
    x, ctx, _ = _inputs(tiny_unet_config("sd"), batch=2)
    with pytest.raises(ValueError, match=r"`timestep` has 3 values but the batch has 2"):
        ours(x, torch.tensor([1, 2, 3]), ctx)
    with pytest.raises(TypeError, match=r"`timestep` must be an int, a float or a torch.Tensor, got str"):
        ours(x, "10", ctx)


def test_masks_and_return_dict(sd_pair):
    ours, ref = sd_pair
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    enc_mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        a = ours(x, 3, ctx, encoder_attention_mask=enc_mask, return_dict=False)
        b = ref(x, 3, ctx, encoder_attention_mask=enc_mask, return_dict=False)
        plain = ours(x, 3, ctx).sample
    assert isinstance(a, tuple) and len(a) == 1
    assert max_diff(a[0], b[0]) <= TOL
    assert max_diff(a[0], plain) > 1e-4  # the mask changes the result


def test_controlnet_style_residuals(sd_pair):
    ours, ref = sd_pair
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    g = torch.Generator().manual_seed(5)
    # tiny sd: skips = conv_in + 2 resnets + downsample (32 ch, 16x16/8x8) + 2 resnets (64 ch, 8x8)
    shapes = [(2, 32, 16, 16)] * 3 + [(2, 32, 8, 8)] + [(2, 64, 8, 8)] * 2
    down = [torch.randn(s, generator=g) for s in shapes]
    mid = torch.randn(2, 64, 8, 8, generator=g)
    with torch.no_grad():
        a = ours(x, 3, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        b = ref(x, 3, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert max_diff(a, b) <= TOL
    with pytest.raises(ValueError, match="has 5 tensors but this UNet has 6 skip connections"):
        ours(x, 3, ctx, down_block_additional_residuals=down[:5], mid_block_additional_residual=mid)


def test_intrablock_residuals_do_not_mutate_caller_list(sd_pair):
    ours, ref = sd_pair
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    g = torch.Generator().manual_seed(6)
    adapters = [torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 64, 8, 8, generator=g)]
    mine = list(adapters)
    with torch.no_grad():
        a = ours(x, 3, ctx, down_intrablock_additional_residuals=mine).sample
        b = ref(x, 3, ctx, down_intrablock_additional_residuals=list(adapters)).sample
    assert max_diff(a, b) <= TOL
    assert len(mine) == 2


def test_sdxl_missing_added_cond_kwargs_error():
    model = UNet2DConditionModel(**tiny_unet_config("sdxl"))
    x, ctx, added = _inputs(tiny_unet_config("sdxl"))
    with pytest.raises(ValueError, match=r"requires the keyword argument `text_embeds` to be passed in `added_cond_kwargs`"):
        model(x, 1, ctx)
    with pytest.raises(ValueError, match=r"requires the keyword argument `time_ids`"):
        model(x, 1, ctx, added_cond_kwargs={"text_embeds": added["text_embeds"]})
    assert model.add_embedding.linear_1.in_features == 80
    assert model.config.addition_time_embed_dim == 8


def test_lcm_time_cond_and_class_embeddings():
    cfg = dict(tiny_unet_config("sd"), time_cond_proj_dim=16, class_embed_type="timestep")
    ours, ref = twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, cfg)
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    cond = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 400])
    with torch.no_grad():
        a = ours(x, 7, ctx, timestep_cond=cond, class_labels=labels).sample
        b = ref(x, 7, ctx, timestep_cond=cond, class_labels=labels).sample
    assert max_diff(a, b) <= TOL
    assert ours.config.time_cond_proj_dim == 16
    with pytest.raises(ValueError, match="class_labels should be provided"):
        ours(x, 7, ctx, timestep_cond=cond)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="`num_attention_heads` must be None"):
        UNet2DConditionModel(**dict(tiny_unet_config("sd"), num_attention_heads=4))
    with pytest.raises(ValueError, match=r"down block type 'SimpleCrossAttnDownBlock2D' is not supported"):
        UNet2DConditionModel(**dict(tiny_unet_config("sd"), down_block_types=["DownBlock2D", "SimpleCrossAttnDownBlock2D"]))
    with pytest.raises(ValueError, match=r"`addition_embed_type` 'image' is not supported"):
        UNet2DConditionModel(**dict(tiny_unet_config("sd"), addition_embed_type="image"))
    with pytest.raises(ValueError, match=r"Must provide the same number of `attention_head_dim`"):
        UNet2DConditionModel(**dict(tiny_unet_config("sd"), attention_head_dim=[2, 4, 8]))
    with pytest.raises(ValueError, match=r"`time_embedding_type` 'fourier' is not supported"):
        UNet2DConditionModel(**dict(tiny_unet_config("sd"), time_embedding_type="fourier"))


def test_config_defaults_match_diffusers():
    import inspect

    mine = inspect.signature(UNet2DConditionModel.__init__).parameters
    theirs = inspect.signature(diffusers.UNet2DConditionModel.__init__).parameters
    assert list(mine) == list(theirs)
    for name in theirs:
        assert mine[name].default == theirs[name].default, name


def test_builds_on_meta_device():
    with torch.device("meta"):
        model = UNet2DConditionModel(**tiny_unet_config("sdxl"))
    assert all(p.is_meta for p in model.parameters())


def test_attn_processor_names_and_plugging(sd_pair):
    ours, ref = sd_pair
    assert list(ours.attn_processors) == list(ref.attn_processors)
    names = list(ours.attn_processors)
    assert names[0] == "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"

    calls = []

    class Recorder:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            calls.append(kw.get("tag"))
            return torch.zeros_like(hidden_states)

    with pytest.raises(ValueError, match=r"number of processors 1 does not match the number of attention layers: 12"):
        ours.set_attn_processor({names[0]: Recorder()})
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    ours.set_attn_processor(Recorder())
    try:
        with torch.no_grad():
            ours(x, 1, ctx, cross_attention_kwargs={"tag": "t", "scale": 0.5})
        assert calls == ["t"] * 12
    finally:
        ours.set_default_attn_processor()
    with torch.no_grad():
        assert max_diff(ours(x, 1, ctx).sample, ref(x, 1, ctx).sample) <= TOL


def test_module_processor_becomes_submodule_and_state_dict_key():
    model = UNet2DConditionModel(**tiny_unet_config("sd"))

    class IPLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_k_ip = torch.nn.ModuleList([torch.nn.Linear(32, 64, bias=False)])

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            return hidden_states

    name = "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    procs = {k: (IPLike() if k == name else v) for k, v in model.attn_processors.items()}
    model.set_attn_processor(procs)
    assert f"{name}.to_k_ip.0.weight" in model.state_dict()
    model.set_default_attn_processor()
    assert f"{name}.to_k_ip.0.weight" not in model.state_dict()


def test_ip_adapter_hook_passes_text_and_image_states():
    model = UNet2DConditionModel(**tiny_unet_config("sd")).eval()
    seen = []

    class Proj(torch.nn.Module):
        def forward(self, image_embeds):
            return [e * 2 for e in image_embeds]

    class IPProc:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            if isinstance(encoder_hidden_states, tuple):
                seen.append((encoder_hidden_states[0].shape, encoder_hidden_states[1][0].shape))
            return torch.zeros_like(hidden_states)

    model.encoder_hid_proj = Proj()
    model.register_to_config(encoder_hid_dim_type="ip_image_proj")
    model.set_attn_processor({k: IPProc() if k.endswith("attn2.processor") else v for k, v in model.attn_processors.items()})
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    with pytest.raises(ValueError, match="requires the keyword argument `image_embeds`"):
        model(x, 1, ctx)
    with torch.no_grad():
        model(x, 1, ctx, added_cond_kwargs={"image_embeds": [torch.ones(2, 1, 4, 32)]})
    assert seen and seen[0] == (torch.Size([2, 7, 32]), torch.Size([2, 1, 4, 32]))
    # the default processor refuses image states with a clear message
    model.set_default_attn_processor()
    with pytest.raises(ValueError, match="does not handle image prompts"):
        model(x, 1, ctx, added_cond_kwargs={"image_embeds": [torch.ones(2, 1, 4, 32)]})


def test_lora_scale_through_peft(sd_pair):
    from peft import LoraConfig, inject_adapter_in_model

    ours, _ = sd_pair
    model = UNet2DConditionModel(**tiny_unet_config("sd")).eval()
    model.load_state_dict(ours.state_dict())
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False), model)
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    with torch.no_grad():
        base = ours(x, 1, ctx).sample
        full = model(x, 1, ctx).sample
        zero = model(x, 1, ctx, cross_attention_kwargs={"scale": 0.0}).sample
        again = model(x, 1, ctx).sample
    assert max_diff(zero, base) <= TOL
    assert max_diff(full, base) > 1e-4
    assert max_diff(again, full) <= TOL  # scale restored after the call


def test_gradient_checkpointing_same_gradients():
    cfg = tiny_unet_config("sd")
    torch.manual_seed(0)
    a = UNet2DConditionModel(**cfg)
    b = UNet2DConditionModel(**cfg)
    b.load_state_dict(a.state_dict())
    b.enable_gradient_checkpointing()
    x, ctx, _ = _inputs(cfg, batch=1)
    a(x, 1, ctx).sample.sum().backward()
    b(x, 1, ctx).sample.sum().backward()
    ga, gb = a.conv_in.weight.grad, b.conv_in.weight.grad
    assert max_diff(ga, gb) <= 1e-5 and ga.abs().max() > 0


def test_output_type():
    out = UNet2DConditionOutput(sample=torch.ones(1))
    assert out[0] is out.sample and out["sample"] is out.sample


def test_freeu_parity(sd_pair):
    ours, ref = sd_pair
    x, ctx, _ = _inputs(tiny_unet_config("sd"))
    with torch.no_grad():
        plain = ours(x, 4, ctx).sample
        ours.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
        ref.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
        try:
            a, b = ours(x, 4, ctx).sample, ref(x, 4, ctx).sample
        finally:
            ours.disable_freeu(), ref.disable_freeu()
        after = ours(x, 4, ctx).sample
    assert max_diff(a, b) <= TOL
    assert max_diff(a, plain) > 1e-4
    assert torch.equal(after, plain)
    with pytest.raises(TypeError, match="`b1` must be a number"):
        ours.enable_freeu(0.9, 0.2, "1.5", 1.6)


def test_ip_adapter_processor_parity_with_diffusers(sd_pair):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0 as RefIP

    from diffblocks.models.attention import IPAdapterAttnProcessor2_0

    ours, ref = sd_pair
    g = torch.Generator().manual_seed(8)
    procs_o, procs_r = {}, {}
    for name, proc in ours.attn_processors.items():
        if name.endswith("attn1.processor"):
            procs_o[name], procs_r[name] = proc, ref.attn_processors[name]
            continue
        hidden = 64  # every cross-attention layer of the tiny sd UNet is in the 64-channel blocks
        po = IPAdapterAttnProcessor2_0(hidden, cross_attention_dim=32, num_tokens=(4, 2), scale=[0.7, 0.0])
        pr = RefIP(hidden, cross_attention_dim=32, num_tokens=(4, 2), scale=[0.7, 0.0])
        for p in po.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.1
        pr.load_state_dict(po.state_dict())
        procs_o[name], procs_r[name] = po, pr
    ours.set_attn_processor(procs_o)
    ref.set_attn_processor(procs_r)
    try:
        key = "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.1.weight"
        assert key in ours.state_dict() and key in ref.state_dict()
        x, ctx, _ = _inputs(tiny_unet_config("sd"))
        image_states = [torch.randn(2, 4, 32, generator=g), torch.randn(2, 2, 32, generator=g)]
        with torch.no_grad():
            a = ours(x, 3, (ctx, image_states)).sample
            b = ref(x, 3, (ctx, image_states)).sample
            plain = ours(x, 3, (ctx, [s * 0 for s in image_states])).sample
        assert max_diff(a, b) <= TOL
        assert max_diff(a, plain) > 1e-4
    finally:
        ours.set_default_attn_processor()
        ref.set_default_attn_processor()


def test_missing_text_states_is_a_clear_error(sd_pair):
    ours, _ = sd_pair
    x, _, _ = _inputs(tiny_unet_config("sd"))
    with pytest.raises(ValueError, match="`encoder_hidden_states` is required"):
        ours(x, 1, None)
    with pytest.raises(ValueError, match=r"`sample` must be a 4-D tensor"):
        ours(x[0], 1, torch.zeros(1, 7, 32))
