"""VAE encoder and decoder networks and the diagonal Gaussian latent distribution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .outputs import BaseOutput
from .unet_blocks import UNetMidBlock2D, get_down_block, get_up_block


@dataclass
class DecoderOutput(BaseOutput):
    """``sample``: the decoded images, shape ``(batch, channels, height, width)``."""

    sample: torch.Tensor = None
    commit_loss: Optional[torch.FloatTensor] = None


class Encoder(nn.Module):
    """Image -> moments: ``conv_in``, down blocks, mid block (with attention), norm, act, ``conv_out``.

    With ``double_z`` the output has ``2 * out_channels`` channels (mean and log-variance).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        double_z: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList([])
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=None,
                    add_downsample=i < len(block_out_channels) - 1,
                    resnet_eps=1e-6,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    downsample_padding=0,
                )
            )
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1],
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            output_scale_factor=1,
            resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups,
            add_attention=mid_block_add_attention,
        )
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        conv_out_channels = 2 * out_channels if double_z else out_channels
        self.conv_out = nn.Conv2d(block_out_channels[-1], conv_out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        sample = self.mid_block(sample)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return sample


class Decoder(nn.Module):
    """Latents -> image: ``conv_in``, mid block, up blocks (``layers_per_block + 1`` resnets), norm, act, ``conv_out``."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        if norm_type != "group":
            raise ValueError(f"`norm_type` {norm_type!r} is not supported; only 'group' is")
        self.layers_per_block = layers_per_block
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList([])
        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1],
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            output_scale_factor=1,
            resnet_time_scale_shift="default",
            attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups,
            add_attention=mid_block_add_attention,
        )
        reversed_channels = list(reversed(block_out_channels))
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_out, out_ch = out_ch, reversed_channels[i]
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    num_layers=layers_per_block + 1,
                    in_channels=prev_out,
                    out_channels=out_ch,
                    prev_output_channel=None,
                    temb_channels=None,
                    add_upsample=i < len(block_out_channels) - 1,
                    resnet_eps=1e-6,
                    resnet_act_fn=act_fn,
                    resolution_idx=i,
                    resnet_groups=norm_num_groups,
                )
            )
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, latent_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        sample = self.conv_in(sample)
        sample = self.mid_block(sample, latent_embeds)
        # the up blocks may be kept in another dtype than the mid block (e.g. an fp32 decoder tail)
        first = next(iter(self.up_blocks.parameters()), None)
        up_dtype = first.dtype if first is not None else sample.dtype
        sample = sample.to(up_dtype)
        for block in self.up_blocks:
            sample = block(sample, latent_embeds)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return sample


class DiagonalGaussianDistribution:
    """Gaussian with diagonal covariance from ``parameters`` = ``[mean, logvar]`` stacked on dim 1.

    ``logvar`` is clamped to ``[-30, 20]``.  ``sample(generator)`` draws ``mean + std * noise`` with the same
    noise stream as diffusers for the same generator; ``mode()`` is the mean.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean, device=parameters.device, dtype=parameters.dtype)

    def sample(self, generator: Union[torch.Generator, List[torch.Generator], None] = None) -> torch.Tensor:
        try:
            from ..utils.torch_utils import randn_tensor
        except ImportError:  # pragma: no cover - the utils module ships with the package
            randn_tensor = None
        shape = tuple(self.mean.shape)
        if randn_tensor is not None:
            noise = randn_tensor(shape, generator=generator, device=self.parameters.device, dtype=self.parameters.dtype)
        else:  # pragma: no cover
            noise = torch.randn(shape, generator=generator, device=self.parameters.device, dtype=self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: Optional["DiagonalGaussianDistribution"] = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over C, H, W."""
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            return 0.5 * torch.sum(torch.pow(self.mean, 2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(
            torch.pow(self.mean - other.mean, 2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=[1, 2, 3],
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return torch.Tensor([0.0])
        return 0.5 * torch.sum(
            np.log(2.0 * np.pi) + self.logvar + torch.pow(sample - self.mean, 2) / self.var, dim=list(dims)
        )
