"""Down, mid and up blocks of the Stable Diffusion UNet, and the encoder/decoder blocks of the VAE.

Block type names are the strings that appear in ``down_block_types`` / ``mid_block_type`` / ``up_block_types``
of diffusers configs; :func:`get_down_block`, :func:`get_mid_block`, :func:`get_up_block` build them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint
from torch import nn

from .attention import Attention, Transformer2DModel
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D", "DownEncoderBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D", "UpDecoderBlock2D")


def _per_layer(value: Union[int, Sequence[int]], n: int) -> list:
    return [value] * n if isinstance(value, int) else list(value)


def _run(module: nn.Module, checkpointing: bool, *args: Any) -> Any:
    if checkpointing:
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def _resnet_transformer_pairs(
    in_channels: Sequence[int],
    out_channels: int,
    temb_channels: Optional[int],
    transformer_layers: Sequence[int],
    *,
    dropout: float,
    resnet_eps: float,
    resnet_time_scale_shift: str,
    resnet_act_fn: str,
    resnet_groups: int,
    num_attention_heads: int,
    cross_attention_dim: int,
    output_scale_factor: float,
    use_linear_projection: bool,
    only_cross_attention: bool,
    upcast_attention: bool,
    resnet_skip_time_act: bool,
) -> Tuple[nn.ModuleList, nn.ModuleList]:
    """``(attentions, resnets)`` of a cross-attention down/up block: layer ``i`` is a resnet from ``in_channels[i]``
    to ``out_channels`` followed by a spatial transformer with ``transformer_layers[i]`` blocks (built in that
    order, like diffusers, so seeded initialisation matches)."""
    resnets, attentions = [], []
    for cin, layers in zip(in_channels, transformer_layers):
        resnets.append(
            ResnetBlock2D(
                in_channels=cin,
                out_channels=out_channels,
                temb_channels=temb_channels,
                eps=resnet_eps,
                groups=resnet_groups,
                dropout=dropout,
                time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor,
                skip_time_act=resnet_skip_time_act,
            )
        )
        attentions.append(
            Transformer2DModel(
                num_attention_heads,
                out_channels // num_attention_heads,
                in_channels=out_channels,
                num_layers=layers,
                cross_attention_dim=cross_attention_dim,
                norm_num_groups=resnet_groups,
                use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross_attention,
                upcast_attention=upcast_attention,
            )
        )
    return nn.ModuleList(attentions), nn.ModuleList(resnets)


def _fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the ``2*threshold`` lowest spatial frequencies of ``x`` by ``scale`` (computed in float32)."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.to(torch.float32), dim=(-2, -1)), dim=(-2, -1))
    b, c, h, w = freq.shape
    mask = torch.ones((b, c, h, w), device=x.device)
    ch, cw = h // 2, w // 2
    mask[..., ch - threshold : ch + threshold, cw - threshold : cw + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(dtype=x.dtype)


class _FreeUMixin:
    """FreeU (arXiv 2309.11497) on the two deepest up stages: boost half of the backbone channels by ``b1``/``b2``
    and damp the low frequencies of the skip features by ``s1``/``s2``.  Off while any factor is unset/zero."""

    s1 = s2 = b1 = b2 = None
    resolution_idx: Optional[int] = None

    def _freeu(self, hidden: torch.Tensor, skip: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not (self.s1 and self.s2 and self.b1 and self.b2) or self.resolution_idx not in (0, 1):
            return hidden, skip
        b, s = (self.b1, self.s1) if self.resolution_idx == 0 else (self.b2, self.s2)
        half = hidden.shape[1] // 2
        hidden = hidden.clone()
        hidden[:, :half] = hidden[:, :half] * b
        return hidden, _fourier_filter(skip, threshold=1, scale=s)


class _CheckpointFlag(nn.Module):
    """Blocks with ``gradient_checkpointing``: recompute activations in backward when it is on."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def _ckpt(self) -> bool:
        return self.gradient_checkpointing and torch.is_grad_enabled()


class DownBlock2D(_CheckpointFlag):
    """Resnets then an optional stride-2 downsampler; returns ``(hidden_states, skip_states)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: Optional[int],
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
        resnet_skip_time_act: bool = False,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=in_channels if i == 0 else out_channels,
                    out_channels=out_channels,
                    temb_channels=temb_channels,
                    eps=resnet_eps,
                    groups=resnet_groups,
                    dropout=dropout,
                    time_embedding_norm=resnet_time_scale_shift,
                    non_linearity=resnet_act_fn,
                    output_scale_factor=output_scale_factor,
                    skip_time_act=resnet_skip_time_act,
                )
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding)])
            if add_downsample
            else None
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None, *args, **kwargs
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        ckpt = self._ckpt()
        outputs: Tuple[torch.Tensor, ...] = ()
        for resnet in self.resnets:
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
            outputs += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            outputs += (hidden_states,)
        return hidden_states, outputs


class CrossAttnDownBlock2D(_CheckpointFlag):
    """Resnet + spatial transformer pairs, then an optional downsampler; returns ``(hidden_states, skips)``."""

    has_cross_attention = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: Optional[int],
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: Union[int, Sequence[int]] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        add_downsample: bool = True,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        resnet_skip_time_act: bool = False,
    ):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attentions, self.resnets = _resnet_transformer_pairs(
            [in_channels] + [out_channels] * (num_layers - 1),
            out_channels,
            temb_channels,
            _per_layer(transformer_layers_per_block, num_layers),
            dropout=dropout,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim,
            output_scale_factor=output_scale_factor,
            use_linear_projection=use_linear_projection,
            only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention,
            resnet_skip_time_act=resnet_skip_time_act,
        )
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding)])
            if add_downsample
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        additional_residuals: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        ckpt = self._ckpt()
        outputs: Tuple[torch.Tensor, ...] = ()
        last = len(self.resnets) - 1
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
            hidden_states = attn(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs=cross_attention_kwargs,
                attention_mask=attention_mask,
                encoder_attention_mask=encoder_attention_mask,
            )
            if i == last and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            outputs += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            outputs += (hidden_states,)
        return hidden_states, outputs


class UNetMidBlock2DCrossAttn(_CheckpointFlag):
    """``resnets.0`` then (transformer, resnet) pairs at the bottom of the UNet."""

    has_cross_attention = True

    def __init__(
        self,
        in_channels: int,
        temb_channels: Optional[int],
        out_channels: Optional[int] = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: Union[int, Sequence[int]] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: Optional[int] = 32,
        num_attention_heads: int = 1,
        output_scale_factor: float = 1.0,
        cross_attention_dim: int = 1280,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        resnet_skip_time_act: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_attention_heads = num_attention_heads
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        layers = _per_layer(transformer_layers_per_block, num_layers)

        def resnet(cin: int) -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=cin,
                out_channels=out_channels,
                temb_channels=temb_channels,
                eps=resnet_eps,
                groups=groups,
                dropout=dropout,
                time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor,
                skip_time_act=resnet_skip_time_act,
            )

        resnets = [resnet(in_channels)]
        attentions = []
        for i in range(num_layers):
            attentions.append(
                Transformer2DModel(
                    num_attention_heads,
                    out_channels // num_attention_heads,
                    in_channels=out_channels,
                    num_layers=layers[i],
                    cross_attention_dim=cross_attention_dim,
                    norm_num_groups=groups,
                    use_linear_projection=use_linear_projection,
                    upcast_attention=upcast_attention,
                )
            )
            resnets.append(resnet(out_channels))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        ckpt = self._ckpt()
        hidden_states = _run(self.resnets[0], ckpt, hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs=cross_attention_kwargs,
                attention_mask=attention_mask,
                encoder_attention_mask=encoder_attention_mask,
            )
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
        return hidden_states


class UNetMidBlock2D(_CheckpointFlag):
    """``resnets.0`` then (optional single-head self-attention, resnet) pairs — the VAE mid block."""

    def __init__(
        self,
        in_channels: int,
        temb_channels: Optional[int],
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: Optional[int] = 32,
        attn_groups: Optional[int] = None,
        add_attention: bool = True,
        attention_head_dim: Optional[int] = 1,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        if attn_groups is None:
            attn_groups = groups if resnet_time_scale_shift == "default" else None
        if attention_head_dim is None:
            attention_head_dim = in_channels
        self.add_attention = add_attention

        def resnet() -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=in_channels,
                out_channels=in_channels,
                temb_channels=temb_channels,
                eps=resnet_eps,
                groups=groups,
                dropout=dropout,
                time_embedding_norm=resnet_time_scale_shift,
                non_linearity=resnet_act_fn,
                output_scale_factor=output_scale_factor,
            )

        resnets = [resnet()]
        attentions = []
        for _ in range(num_layers):
            if add_attention:
                attentions.append(
                    Attention(
                        in_channels,
                        heads=in_channels // attention_head_dim,
                        dim_head=attention_head_dim,
                        rescale_output_factor=output_scale_factor,
                        eps=resnet_eps,
                        norm_num_groups=attn_groups,
                        residual_connection=True,
                        bias=True,
                        upcast_softmax=True,
                    )
                )
            else:
                attentions.append(None)
            resnets.append(resnet())
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None, *args, **kwargs) -> torch.Tensor:
        ckpt = self._ckpt()
        hidden_states = _run(self.resnets[0], ckpt, hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = attn(hidden_states, temb=temb)
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
        return hidden_states


def _up_resnet_channels(i: int, num_layers: int, in_channels: int, out_channels: int, prev_output_channel: int) -> int:
    skip = in_channels if i == num_layers - 1 else out_channels
    first = prev_output_channel if i == 0 else out_channels
    return first + skip


class UpBlock2D(_FreeUMixin, _CheckpointFlag):
    """Resnets over (hidden, popped skip) concatenations, then an optional 2x upsampler."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: Optional[int],
        resolution_idx: Optional[int] = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        resnet_skip_time_act: bool = False,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=_up_resnet_channels(i, num_layers, in_channels, out_channels, prev_output_channel),
                    out_channels=out_channels,
                    temb_channels=temb_channels,
                    eps=resnet_eps,
                    groups=resnet_groups,
                    dropout=dropout,
                    time_embedding_norm=resnet_time_scale_shift,
                    non_linearity=resnet_act_fn,
                    output_scale_factor=output_scale_factor,
                    skip_time_act=resnet_skip_time_act,
                )
                for i in range(num_layers)
            ]
        )
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )
        self.resolution_idx = resolution_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: Tuple[torch.Tensor, ...],
        temb: Optional[torch.Tensor] = None,
        upsample_size: Optional[Tuple[int, int]] = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        ckpt = self._ckpt()
        skips = list(res_hidden_states_tuple)
        for resnet in self.resnets:
            hidden_states, skip = self._freeu(hidden_states, skips.pop())
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(_FreeUMixin, _CheckpointFlag):
    """(resnet over hidden+skip, spatial transformer) pairs, then an optional 2x upsampler."""

    has_cross_attention = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        temb_channels: Optional[int],
        resolution_idx: Optional[int] = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        transformer_layers_per_block: Union[int, Sequence[int]] = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        num_attention_heads: int = 1,
        cross_attention_dim: int = 1280,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        resnet_skip_time_act: bool = False,
    ):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attentions, self.resnets = _resnet_transformer_pairs(
            [_up_resnet_channels(i, num_layers, in_channels, out_channels, prev_output_channel) for i in range(num_layers)],
            out_channels,
            temb_channels,
            _per_layer(transformer_layers_per_block, num_layers),
            dropout=dropout,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim,
            output_scale_factor=output_scale_factor,
            use_linear_projection=use_linear_projection,
            only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention,
            resnet_skip_time_act=resnet_skip_time_act,
        )
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )
        self.resolution_idx = resolution_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: Tuple[torch.Tensor, ...],
        temb: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        upsample_size: Optional[Tuple[int, int]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        ckpt = self._ckpt()
        skips = list(res_hidden_states_tuple)
        for resnet, attn in zip(self.resnets, self.attentions):
            hidden_states, skip = self._freeu(hidden_states, skips.pop())
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
            hidden_states = attn(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs=cross_attention_kwargs,
                attention_mask=attention_mask,
                encoder_attention_mask=encoder_attention_mask,
            )
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


class DownEncoderBlock2D(_CheckpointFlag):
    """VAE encoder stage: resnets without time embedding, then an optional downsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=in_channels if i == 0 else out_channels,
                    out_channels=out_channels,
                    temb_channels=None,
                    eps=resnet_eps,
                    groups=resnet_groups,
                    dropout=dropout,
                    time_embedding_norm=resnet_time_scale_shift,
                    non_linearity=resnet_act_fn,
                    output_scale_factor=output_scale_factor,
                )
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding)])
            if add_downsample
            else None
        )

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        ckpt = self._ckpt()
        for resnet in self.resnets:
            hidden_states = _run(resnet, ckpt, hidden_states, None)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
        return hidden_states


class UpDecoderBlock2D(_CheckpointFlag):
    """VAE decoder stage: resnets without time embedding, then an optional 2x upsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution_idx: Optional[int] = None,
        dropout: float = 0.0,
        num_layers: int = 1,
        resnet_eps: float = 1e-6,
        resnet_time_scale_shift: str = "default",
        resnet_act_fn: str = "swish",
        resnet_groups: int = 32,
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
        temb_channels: Optional[int] = None,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=in_channels if i == 0 else out_channels,
                    out_channels=out_channels,
                    temb_channels=temb_channels,
                    eps=resnet_eps,
                    groups=resnet_groups,
                    dropout=dropout,
                    time_embedding_norm=resnet_time_scale_shift,
                    non_linearity=resnet_act_fn,
                    output_scale_factor=output_scale_factor,
                )
                for i in range(num_layers)
            ]
        )
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        ckpt = self._ckpt()
        for resnet in self.resnets:
            hidden_states = _run(resnet, ckpt, hidden_states, temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states)
        return hidden_states


# --------------------------------------------------------------------------------------------------------------
# factories (config strings -> blocks)
# --------------------------------------------------------------------------------------------------------------


def _block_name(name: str) -> str:
    # some old configs prefix block names with "UNetRes"
    return name[7:] if name.startswith("UNetRes") else name


def get_down_block(
    down_block_type: str,
    *,
    num_layers: int,
    in_channels: int,
    out_channels: int,
    temb_channels: Optional[int],
    add_downsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    resnet_groups: Optional[int] = None,
    transformer_layers_per_block: Union[int, Sequence[int]] = 1,
    num_attention_heads: Optional[int] = None,
    cross_attention_dim: Optional[int] = None,
    downsample_padding: int = 1,
    use_linear_projection: bool = False,
    only_cross_attention: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    resnet_skip_time_act: bool = False,
    resnet_out_scale_factor: float = 1.0,
    dropout: float = 0.0,
) -> nn.Module:
    # like diffusers, the resnet output scale and skip-time-act options only apply to block types we do not
    # build (ResnetDownsampleBlock2D, SimpleCrossAttn*); they are accepted and have no effect here
    kind = _block_name(down_block_type)
    if kind == "DownBlock2D":
        return DownBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            num_layers=num_layers,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            add_downsample=add_downsample,
            downsample_padding=downsample_padding,
        )
    if kind == "CrossAttnDownBlock2D":
        if cross_attention_dim is None:
            raise ValueError("`cross_attention_dim` must be set for CrossAttnDownBlock2D")
        return CrossAttnDownBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            num_layers=num_layers,
            transformer_layers_per_block=transformer_layers_per_block,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim,
            downsample_padding=downsample_padding,
            add_downsample=add_downsample,
            use_linear_projection=use_linear_projection,
            only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention,
        )
    if kind == "DownEncoderBlock2D":
        return DownEncoderBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            dropout=dropout,
            num_layers=num_layers,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            add_downsample=add_downsample,
            downsample_padding=downsample_padding,
        )
    raise ValueError(f"down block type {down_block_type!r} is not supported; expected one of {list(DOWN_BLOCK_TYPES)}")


def get_up_block(
    up_block_type: str,
    *,
    num_layers: int,
    in_channels: int,
    out_channels: int,
    prev_output_channel: Optional[int],
    temb_channels: Optional[int],
    add_upsample: bool,
    resnet_eps: float,
    resnet_act_fn: str,
    resolution_idx: Optional[int] = None,
    resnet_groups: Optional[int] = None,
    transformer_layers_per_block: Union[int, Sequence[int]] = 1,
    num_attention_heads: Optional[int] = None,
    cross_attention_dim: Optional[int] = None,
    use_linear_projection: bool = False,
    only_cross_attention: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    resnet_skip_time_act: bool = False,
    resnet_out_scale_factor: float = 1.0,
    dropout: float = 0.0,
) -> nn.Module:
    kind = _block_name(up_block_type)
    if kind == "UpBlock2D":
        return UpBlock2D(
            in_channels=in_channels,
            prev_output_channel=prev_output_channel,
            out_channels=out_channels,
            temb_channels=temb_channels,
            resolution_idx=resolution_idx,
            dropout=dropout,
            num_layers=num_layers,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            add_upsample=add_upsample,
        )
    if kind == "CrossAttnUpBlock2D":
        if cross_attention_dim is None:
            raise ValueError("`cross_attention_dim` must be set for CrossAttnUpBlock2D")
        return CrossAttnUpBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            prev_output_channel=prev_output_channel,
            temb_channels=temb_channels,
            resolution_idx=resolution_idx,
            dropout=dropout,
            num_layers=num_layers,
            transformer_layers_per_block=transformer_layers_per_block,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            num_attention_heads=num_attention_heads,
            cross_attention_dim=cross_attention_dim,
            add_upsample=add_upsample,
            use_linear_projection=use_linear_projection,
            only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention,
        )
    if kind == "UpDecoderBlock2D":
        return UpDecoderBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            resolution_idx=resolution_idx,
            dropout=dropout,
            num_layers=num_layers,
            resnet_eps=resnet_eps,
            resnet_time_scale_shift=resnet_time_scale_shift,
            resnet_act_fn=resnet_act_fn,
            resnet_groups=resnet_groups,
            add_upsample=add_upsample,
            temb_channels=temb_channels,
        )
    raise ValueError(f"up block type {up_block_type!r} is not supported; expected one of {list(UP_BLOCK_TYPES)}")


def get_mid_block(
    mid_block_type: Optional[str],
    *,
    in_channels: int,
    temb_channels: Optional[int],
    resnet_eps: float,
    resnet_act_fn: str,
    resnet_groups: Optional[int],
    output_scale_factor: float = 1.0,
    transformer_layers_per_block: Union[int, Sequence[int]] = 1,
    num_attention_heads: Optional[int] = None,
    cross_attention_dim: Optional[int] = None,
    use_linear_projection: bool = False,
    upcast_attention: bool = False,
    resnet_time_scale_shift: str = "default",
    attention_head_dim: Optional[int] = 1,
    dropout: float = 0.0,
) -> Optional[nn.Module]:
    if mid_block_type is None:
        return None
    if mid_block_type == "UNetMidBlock2DCrossAttn":
        return UNetMidBlock2DCrossAttn(
            in_channels=in_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            transformer_layers_per_block=transformer_layers_per_block,
            resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn,
            output_scale_factor=output_scale_factor,
            resnet_time_scale_shift=resnet_time_scale_shift,
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads,
            resnet_groups=resnet_groups,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )
    if mid_block_type == "UNetMidBlock2D":
        return UNetMidBlock2D(
            in_channels=in_channels,
            temb_channels=temb_channels,
            dropout=dropout,
            num_layers=0,
            resnet_eps=resnet_eps,
            resnet_act_fn=resnet_act_fn,
            output_scale_factor=output_scale_factor,
            resnet_groups=resnet_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
            add_attention=False,
        )
    raise ValueError(f"mid block type {mid_block_type!r} is not supported; expected one of {list(MID_BLOCK_TYPES)} or None")
