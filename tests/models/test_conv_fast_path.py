"""The CPU inference fast path of ``resnet.Conv2d`` (big weight, few output positions -> unfold + bmm).

The size thresholds are lowered in these tests so that tiny layers take the path; the numbers must match
``F.conv2d`` (and diffusers' UNet) to float rounding, and the path must stay out of the way of autograd, peft
and non-float32 inputs.
"""
from __future__ import annotations

import diffusers
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffblocks.models import resnet
from diffblocks.models.resnet import Conv2d, ResnetBlock2D
from diffblocks.models.unet_2d_condition import UNet2DConditionModel
from tests.fixtures.tiny import tiny_unet_config
from tests.models._helpers import TOL, max_diff, twin


@pytest.fixture
def bmm_calls(monkeypatch):
    """Lower the weight-size threshold to 0 and count the fast path's GEMM calls."""
    monkeypatch.setattr(resnet, "_GEMM_MIN_WEIGHT_NUMEL", 0)
    calls = []
    real = torch.bmm

    def counting(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting)
    return calls


@pytest.mark.parametrize(
    "kwargs,batch,size",
    [
        (dict(kernel_size=3, stride=1, padding=1), 2, 4),
        (dict(kernel_size=3, stride=2, padding=1), 2, 6),
        (dict(kernel_size=3, stride=2, padding=0), 1, 5),
        (dict(kernel_size=1, stride=1, padding=0), 3, 3),
        (dict(kernel_size=3, stride=1, padding=1, bias=False), 1, 4),
        (dict(kernel_size=3, stride=1, padding=2, dilation=2), 2, 4),
    ],
)
def test_fast_path_matches_conv2d(bmm_calls, kwargs, batch, size):
    torch.manual_seed(0)
    conv = Conv2d(16, 128, **kwargs)
    x = torch.randn(batch, 16, size, size)
    with torch.no_grad():
        out = conv(x)
        ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    assert bmm_calls, "the fast path was not taken"
    assert out.shape == ref.shape
    assert out.is_contiguous()
    assert max_diff(out, ref) <= 1e-5
    assert ref.abs().max() > 0.1


def test_fast_path_skipped_for_many_positions_grad_and_other_dtypes(bmm_calls):
    torch.manual_seed(0)
    conv = Conv2d(16, 128, 3, padding=1)
    with torch.no_grad():
        conv(torch.randn(2, 16, 8, 8))  # 128 positions > 128 / 2
    assert bmm_calls == []

    # autograd: the standard conv runs and gradients flow to the weight
    x = torch.randn(1, 16, 4, 4)
    conv(x).sum().backward()
    assert bmm_calls == []
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0

    with torch.no_grad():
        conv.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert bmm_calls == []


def test_default_thresholds_keep_small_layers_on_the_standard_path(monkeypatch):
    calls = []
    real = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        Conv2d(320, 320, 3, padding=1)(torch.randn(1, 320, 2, 2))  # 0.9M weights < 16 MiB
    assert calls == []
    # SD 1.5's 1280-channel 3x3 conv (14.7M weights) takes the GEMM path at 8x8 with batch 2, not at 32x32
    big = Conv2d(1280, 1280, 3, padding=1)
    for size, expected in ((8, True), (32, False)):
        calls.clear()
        x = torch.randn(2, 1280, size, size)
        with torch.no_grad():
            out = big(x)
        assert bool(calls) is expected, size
        if expected:
            ref = F.conv2d(x, big.weight, big.bias, padding=1)
            assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_same_parameters_as_nn_conv2d():
    ours, plain = Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    assert isinstance(ours, nn.Conv2d)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    block = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=None, groups=4)
    assert type(block.conv1) is Conv2d and type(block.conv2) is Conv2d and type(block.conv_shortcut) is Conv2d


def test_peft_lora_on_a_fast_path_conv(bmm_calls):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=16, out_channels=32, temb_channels=None, groups=4).eval()
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        base = block(x)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["conv1"], init_lora_weights=False), block)
    assert not isinstance(block.conv1, Conv2d) and isinstance(block.conv1.base_layer, Conv2d)
    bmm_calls.clear()
    with torch.no_grad():
        lora = block(x)
    assert bmm_calls  # the wrapped base conv still takes the fast path
    assert max_diff(lora, base) > 1e-3  # and the LoRA delta is applied on top


def test_unet_parity_with_the_fast_path_forced(bmm_calls):
    cfg = tiny_unet_config("sd")
    ours, ref = twin(UNet2DConditionModel, diffusers.UNet2DConditionModel, cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg["in_channels"], 8, 8, generator=g)
    ctx = torch.randn(2, 7, cfg["cross_attention_dim"], generator=g)
    with torch.no_grad():
        a = ours(x, 999, ctx).sample
        assert bmm_calls, "no conv of the tiny UNet took the fast path"
        b = ref(x, 999, ctx).sample
    assert max_diff(a, b) <= TOL
    assert a.abs().max() > 1e-3
