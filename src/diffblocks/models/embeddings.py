"""Timestep embeddings: the sinusoidal projection and the small MLP on top of it."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .resnet import get_activation


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> torch.Tensor:
    """Sinusoidal features of a 1-D tensor of (possibly fractional) timesteps, shape ``(N, embedding_dim)``.

    Frequencies are ``exp(-ln(max_period) * i / (embedding_dim // 2 - downscale_freq_shift))``; the result is
    ``[sin, cos]`` (``[cos, sin]`` when ``flip_sin_to_cos``), zero-padded by one column for odd dims.
    The computation is done in float32 whatever the input dtype.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"`timesteps` must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    freqs = torch.arange(0, half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    freqs = torch.exp(freqs / (half - downscale_freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    if scale != 1:
        args = scale * args
    if flip_sin_to_cos:
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    else:
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class Timesteps(nn.Module):
    """Parameter-free module wrapping :func:`get_timestep_embedding`."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(
            timesteps,
            self.num_channels,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
            scale=self.scale,
        )


class TimestepEmbedding(nn.Module):
    """``linear_1 -> act -> linear_2`` (optionally ``post_act``), with an optional ``cond_proj`` added to the input."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        out_dim: Optional[int] = None,
        post_act_fn: Optional[str] = None,
        cond_proj_dim: Optional[int] = None,
        sample_proj_bias: bool = True,
    ):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim, bias=sample_proj_bias)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, bias=sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError(
                    "`timestep_cond` was given but the model has no `time_cond_proj_dim` (no time_embedding.cond_proj)"
                )
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample
