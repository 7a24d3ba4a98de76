"""``AutoencoderKL``: the Stable Diffusion VAE (image <-> latent), with sliced and tiled encode/decode."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from .attention import AttentionProcessorMixin
from .modeling_utils import ModelMixin
from .outputs import BaseOutput
from .vae import Decoder, DecoderOutput, DiagonalGaussianDistribution, Encoder

__all__ = ["AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution"]


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """``latent_dist``: the posterior over latents (mean / log-variance of the encoder output)."""

    latent_dist: "DiagonalGaussianDistribution" = None


# pre-0.14 diffusers VAE attention names -> current names
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
_ATTENTION_WEIGHT = re.compile(r"^.*\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _check_image_batch(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"`{name}` must be a 4-D tensor (batch, channels, height, width), got shape {tuple(x.shape)}")


def _blend_rows(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the first ``extent`` rows/cols of ``b`` (along ``dim``) with the last ones of ``a``, in place."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    ramp = torch.arange(extent, dtype=torch.float64, device=b.device) / extent
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    w_b = ramp.to(b.dtype).view(shape)
    w_a = (1 - ramp).to(b.dtype).view(shape)
    tail = a.narrow(dim, a.shape[dim] - extent, extent)
    head = b.narrow(dim, 0, extent)
    head.copy_(tail * w_a + head * w_b)
    return b


class AutoencoderKL(ModelMixin, AttentionProcessorMixin, ConfigMixin):
    """KL-regularised autoencoder of Stable Diffusion.

    ``encode(x)`` -> ``AutoencoderKLOutput(latent_dist)``; ``decode(z)`` -> ``DecoderOutput(sample)``.  Pipelines
    multiply latents by ``config.scaling_factor`` (and subtract ``shift_factor`` when set) themselves.
    ``enable_slicing()`` processes one image at a time; ``enable_tiling()`` splits large inputs into overlapping
    tiles of ``tile_sample_min_size`` pixels (``tile_latent_min_size`` latents) and cross-fades the seams over
    ``tile_overlap_factor`` of a tile, exactly as diffusers does.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: Tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: Tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: Optional[float] = None,
        latents_mean: Optional[Tuple[float, ...]] = None,
        latents_std: Optional[Tuple[float, ...]] = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
            raise ValueError(
                f"`down_block_types` ({len(down_block_types)}), `up_block_types` ({len(up_block_types)}) and "
                f"`block_out_channels` ({len(block_out_channels)}) must have the same length"
            )
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            double_z=True,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    # ------------------------------------------------------------------------------------------------------
    # loading: old attention parameter names
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def _convert_state_dict_keys(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Rename ``query/key/value/proj_attn`` attention weights to ``to_q/to_k/to_v/to_out.0``; squeeze 1x1-conv
        shaped (4-D) attention weights to linear (2-D)."""
        if not any(_OLD_ATTENTION_KEY.match(k) or (_ATTENTION_WEIGHT.match(k) and v.ndim == 4) for k, v in state_dict.items()):
            return state_dict
        out: Dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            m = _OLD_ATTENTION_KEY.match(key)
            if m:
                key = f"{m.group(1)}.{_OLD_ATTENTION_NAMES[m.group(2)]}.{m.group(3)}"
            if value.ndim == 4 and _ATTENTION_WEIGHT.match(key):
                value = value[:, :, 0, 0]
            out[key] = value
        return out

    # ------------------------------------------------------------------------------------------------------
    # slicing / tiling switches
    # ------------------------------------------------------------------------------------------------------
    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Encode/decode large inputs tile by tile (overlapping tiles, blended seams)."""
        self.use_tiling = bool(use_tiling)

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Encode/decode a batch one item at a time to lower peak memory."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # ------------------------------------------------------------------------------------------------------
    # encode
    # ------------------------------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (x.shape[-1] > self.tile_sample_min_size or x.shape[-2] > self.tile_sample_min_size):
            return self._tiled_encode(x)
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h

    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> Union[AutoencoderKLOutput, Tuple[DiagonalGaussianDistribution]]:
        """Encode images ``x`` (B, C, H, W, values in [-1, 1]) into a latent distribution."""
        _check_image_batch("x", x)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        tile, tile_lat = self.tile_sample_min_size, self.tile_latent_min_size
        stride = int(tile * (1 - self.tile_overlap_factor))
        blend = int(tile_lat * self.tile_overlap_factor)
        keep = tile_lat - blend
        rows: List[List[torch.Tensor]] = []
        for top in range(0, x.shape[2], stride):
            row = []
            for left in range(0, x.shape[3], stride):
                h = self.encoder(x[:, :, top : top + tile, left : left + tile])
                if self.quant_conv is not None:
                    h = self.quant_conv(h)
                row.append(h)
            rows.append(row)
        return self._stitch(rows, blend, keep)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> Union[AutoencoderKLOutput, Tuple]:
        """Tiled :meth:`encode` regardless of the input size."""
        _check_image_batch("x", x)
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    # ------------------------------------------------------------------------------------------------------
    # decode
    # ------------------------------------------------------------------------------------------------------
    def _decode(self, z: torch.Tensor, return_dict: bool = True) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        if self.use_tiling and (z.shape[-1] > self.tile_latent_min_size or z.shape[-2] > self.tile_latent_min_size):
            return self.tiled_decode(z, return_dict=return_dict)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        dec = self.decoder(z)
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: Optional[torch.Generator] = None
    ) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """Decode latents ``z`` (B, latent_channels, h, w; already divided by ``scaling_factor``) into images."""
        _check_image_batch("z", z)
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(part).sample for part in z.split(1)])
        else:
            decoded = self._decode(z).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """Decode tile by tile (tiles of ``tile_latent_min_size`` latents, seams blended)."""
        tile, tile_lat = self.tile_sample_min_size, self.tile_latent_min_size
        stride = int(tile_lat * (1 - self.tile_overlap_factor))
        blend = int(tile * self.tile_overlap_factor)
        keep = tile - blend
        rows: List[List[torch.Tensor]] = []
        for top in range(0, z.shape[2], stride):
            row = []
            for left in range(0, z.shape[3], stride):
                part = z[:, :, top : top + tile_lat, left : left + tile_lat]
                if self.post_quant_conv is not None:
                    part = self.post_quant_conv(part)
                row.append(self.decoder(part))
            rows.append(row)
        dec = self._stitch(rows, blend, keep)
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)

    def blend_v(self, a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
        """Blend the top rows of ``b`` with the bottom rows of ``a`` (modifies and returns ``b``)."""
        return _blend_rows(a, b, blend_extent, 2)

    def blend_h(self, a: torch.Tensor, b: torch.Tensor, blend_extent: int) -> torch.Tensor:
        """Blend the left columns of ``b`` with the right columns of ``a`` (modifies and returns ``b``)."""
        return _blend_rows(a, b, blend_extent, 3)

    @staticmethod
    def _stitch(rows: List[List[torch.Tensor]], blend: int, keep: int) -> torch.Tensor:
        # tiles are blended in place in raster order, so later tiles blend against already-blended neighbours
        out_rows = []
        for i, row in enumerate(rows):
            pieces = []
            for j, tile in enumerate(row):
                if i > 0:
                    _blend_rows(rows[i - 1][j], tile, blend, 2)
                if j > 0:
                    _blend_rows(row[j - 1], tile, blend, 3)
                pieces.append(tile[:, :, :keep, :keep])
            out_rows.append(torch.cat(pieces, dim=3))
        return torch.cat(out_rows, dim=2)

    # ------------------------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> Union[DecoderOutput, Tuple[torch.Tensor]]:
        """Encode then decode ``sample`` (the posterior mode, or a draw when ``sample_posterior``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        if not return_dict:
            return (dec,)
        return DecoderOutput(sample=dec)
