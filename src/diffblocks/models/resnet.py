"""Convolutional building blocks: residual block and 2x down/up sampling.

Parameter names (``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``; ``conv`` in
the samplers) are the ones Stable Diffusion checkpoints in the diffusers layout use.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


# Inference on CPU: a float32 conv whose weight is much larger than its input is computed as a GEMM over the
# unfolded input (``F.unfold`` + ``bmm`` against the weight as stored) rather than through oneDNN, which copies
# the whole weight into its blocked layout on every call; with several threads that copy (59 MB for a 1280x1280
# 3x3 conv) mostly lands in freshly mapped memory, i.e. ~14k page faults per call.  In the SD 1.5 UNet at 32x32
# latents this concerns the 1280-channel convs at 4x4-16x16 (at 64x64 latents: 8x8-16x16).  Results equal
# oneDNN's to float rounding (different summation order).
_GEMM_MIN_WEIGHT_NUMEL = 1 << 22  # 16 MiB of float32
_GEMM_MAX_POSITIONS_PER_OUT_CHANNEL = 0.5  # batch * output positions <= out_channels / 2


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) with the CPU inference fast path described above."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            weight.numel() >= _GEMM_MIN_WEIGHT_NUMEL
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and input.ndim == 4
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))
        ):
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
            batch, _, height, width = input.shape
            out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            if out_h > 0 and out_w > 0 and 0 < batch * out_h * out_w <= self.out_channels * _GEMM_MAX_POSITIONS_PER_OUT_CHANNEL:
                cols = F.unfold(input, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
                # (batch, out_channels, positions): one GEMM per sample against the weight as stored
                out = torch.bmm(weight.view(1, self.out_channels, -1).expand(batch, -1, -1), cols)
                if self.bias is not None:
                    out += self.bias[:, None]
                return out.view(batch, self.out_channels, out_h, out_w)
        return super().forward(input)


def get_activation(name: str) -> nn.Module:
    """Activation module for a config name (``"silu"``/``"swish"``, ``"mish"``, ``"gelu"``, ``"relu"``)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _ACTIVATIONS:
        raise ValueError(f"activation function {name!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]()


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv, plus an optional time-embedding injection, twice, with a residual connection.

    ``time_embedding_norm``: ``"default"`` adds the projected time embedding before ``norm2``;
    ``"scale_shift"`` projects to twice the channels and modulates the normalised features
    (``h * (1 + scale) + shift``).  The output is ``(shortcut(x) + h) / output_scale_factor``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: Optional[int] = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: Optional[int] = 512,
        groups: int = 32,
        groups_out: Optional[int] = None,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        use_in_shortcut: Optional[bool] = None,
        conv_shortcut_bias: bool = True,
        skip_time_act: bool = False,
    ):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(
                f"`time_embedding_norm` must be 'default' or 'scale_shift', got {time_embedding_norm!r}"
            )
        out_channels = in_channels if out_channels is None else out_channels
        groups_out = groups if groups_out is None else groups_out
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.skip_time_act = skip_time_act

        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels is not None:
            proj_out = out_channels * 2 if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, proj_out)
        else:
            self.time_emb_proj = None
        self.norm2 = nn.GroupNorm(num_groups=groups_out, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)

        self.use_in_shortcut = (in_channels != out_channels) if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = None
        if self.use_in_shortcut:
            if conv_shortcut:
                self.conv_shortcut = Conv2d(in_channels, out_channels, 3, 1, 1, bias=conv_shortcut_bias)
            else:
                self.conv_shortcut = Conv2d(in_channels, out_channels, 1, 1, 0, bias=conv_shortcut_bias)

    def forward(self, input_tensor: torch.Tensor, temb: Optional[torch.Tensor] = None, *args, **kwargs) -> torch.Tensor:
        act = self.nonlinearity
        h = self.conv1(act(self.norm1(input_tensor)))

        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = act(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        else:
            temb = None

        if self.time_embedding_norm == "default":
            if temb is not None:
                h = h + temb
            h = self.norm2(h)
        else:
            if temb is None:
                raise ValueError("a ResnetBlock2D with time_embedding_norm='scale_shift' needs `temb`")
            scale, shift = torch.chunk(temb, 2, dim=1)
            h = self.norm2(h)
            h = h * (1 + scale) + shift

        h = self.conv2(self.dropout(act(h)))

        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        out = input_tensor + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Halve the spatial size with a stride-2 3x3 conv (``padding=0`` pads right/bottom by one first) or avg-pool."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        out_channels: Optional[int] = None,
        padding: int = 1,
        name: str = "conv",
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        if use_conv:
            self.conv = Conv2d(channels, self.out_channels, kernel_size=3, stride=2, padding=padding)
        else:
            if channels != self.out_channels:
                raise ValueError("Downsample2D without a conv cannot change the channel count")
            self.conv = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Double the spatial size (or resize to ``output_size``) by nearest neighbour, then a 3x3 conv."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        out_channels: Optional[int] = None,
        name: str = "conv",
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.conv = Conv2d(channels, self.out_channels, kernel_size=3, padding=1) if use_conv else None

    def forward(
        self, hidden_states: torch.Tensor, output_size: Optional[Tuple[int, int]] = None, *args, **kwargs
    ) -> torch.Tensor:
        if hidden_states.shape[0] >= 64:
            hidden_states = hidden_states.contiguous()
        if output_size is None:
            if hidden_states.numel() * 2 > 2**31:
                hidden_states = hidden_states.contiguous()
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=tuple(output_size), mode="nearest")
        if self.conv is not None:
            hidden_states = self.conv(hidden_states)
        return hidden_states
