"""IP-Adapter image projections: CLIP image features -> extra cross-attention tokens for the UNet.

* ``ImageProjection`` (IP-Adapter "plain"): the pooled, projected CLIP image embedding goes through one linear
  layer that produces ``num_image_text_embeds`` tokens, then a LayerNorm.
* ``IPAdapterPlusImageProjection`` (IP-Adapter "plus"): a perceiver resampler. Learned query tokens attend to the
  CLIP vision encoder's penultimate hidden states (concatenated with themselves) over ``depth`` blocks.
* ``MultiIPAdapterImageProjection``: one projection per loaded adapter; it maps the list of per-adapter image
  embeddings ``(batch, num_images, ...)`` to a list of ``(batch, num_images, tokens, dim)`` tensors, which the
  UNet hands to the IP-Adapter attention processors.

Parameter names follow the diffusers layout (``image_embeds``/``norm``; ``latents``/``proj_in``/``proj_out``/
``norm_out``/``layers.{i}.{ln0,ln1,attn.to_q,...,ff.0,ff.1.net.0.proj,ff.1.net.2}``) so that UNet state dicts saved
with an adapter loaded are interchangeable. ``convert_ip_adapter_image_proj`` maps the original IP-Adapter
checkpoint names to this layout.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import FeedForward


class ImageProjection(nn.Module):
    """``Linear(image_embed_dim -> num_image_text_embeds * cross_attention_dim)`` reshaped to tokens, then LayerNorm."""

    def __init__(self, image_embed_dim: int = 768, cross_attention_dim: int = 768, num_image_text_embeds: int = 4):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        rows = image_embeds.shape[0]
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        return self.norm(tokens.reshape(rows, self.num_image_text_embeds, -1))


class _ResamplerAttention(nn.Module):
    """Multi-head attention of the resampler: queries from the latents, keys/values from ``context``.

    Kept separate from the UNet's ``Attention`` so that the projection's layers never appear among the UNet's
    ``attn_processors`` (which the IP-Adapter loader rewrites).
    """

    def __init__(self, dim: int, heads: int, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=False)])

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = latents.shape[0]
        h = self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(latents)), split(self.to_k(context)),
                                             split(self.to_v(context)))
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[-1]).to(latents.dtype)
        return self.to_out[0](out)


class IPAdapterPlusImageProjectionBlock(nn.Module):
    """One resampler block: the latents attend to ``[ln0(x), ln1(latents)]``, then a residual feed-forward."""

    def __init__(self, embed_dims: int = 768, dim_head: int = 64, heads: int = 16, ffn_ratio: float = 4):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed_dims)
        self.ln1 = nn.LayerNorm(embed_dims)
        self.attn = _ResamplerAttention(embed_dims, heads, dim_head)
        self.ff = nn.Sequential(nn.LayerNorm(embed_dims),
                                FeedForward(embed_dims, mult=ffn_ratio, activation_fn="gelu", bias=False))

    def forward(self, x: torch.Tensor, latents: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        normed = self.ln1(latents)
        context = torch.cat([self.ln0(x), normed], dim=-2)
        latents = self.attn(normed, context) + residual
        return self.ff(latents) + latents


class IPAdapterPlusImageProjection(nn.Module):
    """Perceiver resampler of IP-Adapter Plus: ``num_queries`` learned tokens read the image features."""

    def __init__(
        self,
        embed_dims: int = 768,
        output_dims: int = 1024,
        hidden_dims: int = 1280,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 16,
        num_queries: int = 8,
        ffn_ratio: float = 4,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.latents = nn.Parameter(torch.randn(1, num_queries, hidden_dims) / hidden_dims**0.5)
        self.proj_in = nn.Linear(embed_dims, hidden_dims)
        self.proj_out = nn.Linear(hidden_dims, output_dims)
        self.norm_out = nn.LayerNorm(output_dims)
        self.layers = nn.ModuleList(
            [IPAdapterPlusImageProjectionBlock(hidden_dims, dim_head, heads, ffn_ratio) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for block in self.layers:
            latents = block(x, latents, latents)
        return self.norm_out(self.proj_out(latents))


class MultiIPAdapterImageProjection(nn.Module):
    """The UNet's ``encoder_hid_proj`` while IP-Adapters are loaded: one projection per adapter."""

    def __init__(self, image_projection_layers: Sequence[nn.Module]):
        super().__init__()
        self.image_projection_layers = nn.ModuleList(image_projection_layers)

    @property
    def num_ip_adapters(self) -> int:
        return len(self.image_projection_layers)

    def forward(self, image_embeds) -> List[torch.Tensor]:
        if isinstance(image_embeds, torch.Tensor):
            # a single tensor (batch, dim) / (batch, tokens, dim): one image for a single adapter
            image_embeds = [image_embeds.unsqueeze(1)]
        if not isinstance(image_embeds, (list, tuple)):
            raise TypeError(f"`image_embeds` must be a list of tensors (one per IP-Adapter), got {type(image_embeds)}")
        if len(image_embeds) != len(self.image_projection_layers):
            raise ValueError(
                f"`image_embeds` holds {len(image_embeds)} entries but {len(self.image_projection_layers)} "
                "IP-Adapters are loaded"
            )
        out = []
        for embeds, layer in zip(image_embeds, self.image_projection_layers):
            b, n = embeds.shape[0], embeds.shape[1]
            tokens = layer(embeds.reshape((b * n,) + tuple(embeds.shape[2:])))
            out.append(tokens.reshape((b, n) + tuple(tokens.shape[1:])))
        return out


# --------------------------------------------------------------------------------------------------------------
# original IP-Adapter checkpoint names -> the layout above
# --------------------------------------------------------------------------------------------------------------
_PLUS_RENAMES = (
    (re.compile(r"^layers\.(\d+)\.0\.norm1\."), r"layers.\1.ln0."),
    (re.compile(r"^layers\.(\d+)\.0\.norm2\."), r"layers.\1.ln1."),
    (re.compile(r"^layers\.(\d+)\.0\.to_q\."), r"layers.\1.attn.to_q."),
    (re.compile(r"^layers\.(\d+)\.0\.to_out\."), r"layers.\1.attn.to_out.0."),
    (re.compile(r"^layers\.(\d+)\.attn\.to_out\.(weight|bias)$"), r"layers.\1.attn.to_out.0.\2"),
    (re.compile(r"^layers\.(\d+)\.1\.0\."), r"layers.\1.ff.0."),
    (re.compile(r"^layers\.(\d+)\.1\.1\."), r"layers.\1.ff.1.net.0.proj."),
    (re.compile(r"^layers\.(\d+)\.1\.3\."), r"layers.\1.ff.1.net.2."),
)
_KV = re.compile(r"^layers\.(\d+)\.(?:0|attn)\.to_kv\.(weight|bias)$")


def ip_adapter_kind(image_proj: Dict[str, torch.Tensor]) -> str:
    """"plain" or "plus" from the keys of an ``image_proj`` state dict (ValueError for other variants)."""
    if "proj.weight" in image_proj:
        return "plain"
    if "latents" in image_proj and "proj_in.weight" in image_proj:
        return "plus"
    if "proj.3.weight" in image_proj:
        variant = "full-face"
    elif any(k.startswith("perceiver_resampler.") for k in image_proj):
        variant = "FaceID-Plus"
    elif "norm.weight" in image_proj:
        variant = "FaceID"
    else:
        variant = f"unknown (keys {sorted(image_proj)[:4]})"
    raise ValueError(
        f"Unsupported IP-Adapter image projection: {variant}. diffblocks loads the plain (`proj.weight`) and plus "
        "(`latents`, `proj_in.weight`, ...) IP-Adapter checkpoints."
    )


def num_image_tokens(image_proj: Dict[str, torch.Tensor]) -> int:
    """Number of image tokens the projection produces (4 for plain, the query count for plus)."""
    return 4 if ip_adapter_kind(image_proj) == "plain" else int(image_proj["latents"].shape[1])


def convert_ip_adapter_image_proj(image_proj: Dict[str, torch.Tensor]) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """Build the projection module for an original ``image_proj`` state dict and return it with the renamed
    tensors (not yet loaded)."""
    kind = ip_adapter_kind(image_proj)
    if kind == "plain":
        weight = image_proj["proj.weight"]
        tokens = 4
        if weight.shape[0] % tokens:
            raise ValueError(f"`image_proj.proj.weight` rows ({weight.shape[0]}) are not a multiple of {tokens} tokens")
        module = ImageProjection(image_embed_dim=weight.shape[1], cross_attention_dim=weight.shape[0] // tokens,
                                 num_image_text_embeds=tokens)
        renamed = {("image_embeds." + k[len("proj."):] if k.startswith("proj.") else k): v
                   for k, v in image_proj.items()}
        return module, renamed

    renamed: Dict[str, torch.Tensor] = {}
    for key, value in image_proj.items():
        kv = _KV.match(key)
        if kv is not None:
            k, v = value.chunk(2, dim=0)
            renamed[f"layers.{kv.group(1)}.attn.to_k.{kv.group(2)}"] = k
            renamed[f"layers.{kv.group(1)}.attn.to_v.{kv.group(2)}"] = v
            continue
        new = key
        for pattern, repl in _PLUS_RENAMES:
            new, hits = pattern.subn(repl, new)
            if hits:
                break
        renamed[new] = value
    depth = len({int(m.group(1)) for m in (re.match(r"^layers\.(\d+)\.", k) for k in renamed) if m})
    to_q = renamed.get("layers.0.attn.to_q.weight")
    if to_q is None or depth == 0:
        raise ValueError("IP-Adapter plus `image_proj` has no resampler layers (`layers.0.0.to_q.weight` missing)")
    latents = image_proj["latents"]
    ff_in = renamed.get("layers.0.ff.1.net.0.proj.weight")
    hidden = latents.shape[2]
    module = IPAdapterPlusImageProjection(
        embed_dims=image_proj["proj_in.weight"].shape[1],
        output_dims=image_proj["proj_out.weight"].shape[0],
        hidden_dims=hidden,
        depth=depth,
        dim_head=64,
        heads=max(to_q.shape[0] // 64, 1),
        num_queries=latents.shape[1],
        ffn_ratio=(ff_in.shape[0] / hidden) if ff_in is not None else 4,
    )
    return module, renamed


__all__ = [
    "IPAdapterPlusImageProjection",
    "IPAdapterPlusImageProjectionBlock",
    "ImageProjection",
    "MultiIPAdapterImageProjection",
    "convert_ip_adapter_image_proj",
    "ip_adapter_kind",
    "num_image_tokens",
]
