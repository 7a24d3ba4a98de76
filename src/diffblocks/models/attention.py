"""Attention layers: ``Attention`` with pluggable processors, the transformer block and ``Transformer2DModel``.

The maths of every attention call lives in a *processor* object (``processor(attn, hidden_states,
encoder_hidden_states, attention_mask, **kwargs)``) so that adapters (IP-Adapter, custom kernels) can swap it
per layer without touching the module tree.  The default processor uses
``torch.nn.functional.scaled_dot_product_attention``.  Projections stay plain ``nn.Linear`` so that peft can wrap
them for LoRA.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# processors
# --------------------------------------------------------------------------------------------------------------


class AttnProcessor2_0:
    """Default processor: projections + ``scaled_dot_product_attention`` (self- or cross-attention).

    Handles 4-D inputs (``B, C, H, W`` — flattened to tokens and restored), the optional input ``group_norm``,
    additive attention masks of shape ``(B, L)``-derived ``(B, 1, L)`` / ``(B, Q, L)`` / ``(B*heads, Q, L)``,
    the residual connection and ``rescale_output_factor`` of VAE attention.  Extra keyword arguments are ignored.
    """

    def __call__(
        self,
        attn: "Attention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is None:
            context = hidden_states
        else:
            if isinstance(encoder_hidden_states, (tuple, list)):
                raise ValueError(
                    f"{type(self).__name__} received `encoder_hidden_states` as a {type(encoder_hidden_states).__name__} "
                    "(text states plus IP-Adapter image states) but it does not handle image prompts; "
                    "load IP-Adapter weights so that the cross-attention layers use an IP-Adapter processor"
                )
            context = encoder_hidden_states
            if attn.norm_cross is not None:
                context = attn.norm_cross(context)

        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch).to(query.dtype)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)

        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


# the classic (non-SDPA) name points at the same implementation: the numbers agree to float rounding
AttnProcessor = AttnProcessor2_0


class IPAdapterAttnProcessor2_0(nn.Module):
    """Cross-attention processor with IP-Adapter image prompts (decoupled cross-attention).

    Receives ``encoder_hidden_states = (text_states, [image_states_per_adapter])`` (built by the UNet's
    ``encoder_hid_proj`` when ``encoder_hid_dim_type == "ip_image_proj"``) and returns
    ``attn(text) + sum_i scale_i * attn(q, to_k_ip[i](image_i), to_v_ip[i](image_i))``; a scale of 0 skips an
    adapter.  Holds ``to_k_ip.{i}`` / ``to_v_ip.{i}`` (``Linear(cross_attention_dim, hidden_size, bias=False)``),
    which appear in the UNet state dict under ``...attn2.processor.``.  ``ip_adapter_masks`` are not supported.
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: Optional[int] = None,
        num_tokens: Union[int, Tuple[int, ...], list] = (4,),
        scale: Union[float, list] = 1.0,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        num_tokens = list(num_tokens) if isinstance(num_tokens, (tuple, list)) else [num_tokens]
        self.num_tokens = num_tokens
        scale = scale if isinstance(scale, list) else [scale] * len(num_tokens)
        if len(scale) != len(num_tokens):
            raise ValueError(
                f"`scale` has {len(scale)} entries but there are {len(num_tokens)} IP-Adapters (`num_tokens`)"
            )
        self.scale = scale
        in_dim = cross_attention_dim if cross_attention_dim is not None else hidden_size
        self.to_k_ip = nn.ModuleList([nn.Linear(in_dim, hidden_size, bias=False) for _ in num_tokens])
        self.to_v_ip = nn.ModuleList([nn.Linear(in_dim, hidden_size, bias=False) for _ in num_tokens])

    def __call__(
        self,
        attn: "Attention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[Any] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        scale: float = 1.0,
        ip_adapter_masks: Optional[Any] = None,
    ) -> torch.Tensor:
        if ip_adapter_masks is not None:
            raise ValueError("`ip_adapter_masks` are not supported by diffblocks' IP-Adapter processor yet")
        if isinstance(encoder_hidden_states, (tuple, list)) and len(encoder_hidden_states) == 2:
            text_states, image_states = encoder_hidden_states
        elif isinstance(encoder_hidden_states, torch.Tensor):
            # legacy layout: image tokens appended after the text tokens
            end = encoder_hidden_states.shape[1] - self.num_tokens[0]
            text_states, image_states = encoder_hidden_states[:, :end], [encoder_hidden_states[:, end:]]
        else:
            raise ValueError(
                "IP-Adapter attention expects `encoder_hidden_states` as (text_states, [image_states, ...]), got "
                f"{type(encoder_hidden_states).__name__}"
            )
        if len(image_states) != len(self.scale):
            raise ValueError(
                f"got image states for {len(image_states)} IP-Adapters but this layer has {len(self.scale)}"
            )

        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross is not None:
            text_states = attn.norm_cross(text_states)

        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(text_states)
        value = attn.to_v(text_states)
        head_dim = key.shape[-1] // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, head_dim).transpose(1, 2)

        def merge(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)

        query = split(query)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch).to(query.dtype)
        out = merge(F.scaled_dot_product_attention(query, split(key), split(value), attn_mask=mask))

        for states, weight, to_k, to_v in zip(image_states, self.scale, self.to_k_ip, self.to_v_ip):
            if (all(x == 0 for x in weight) if isinstance(weight, list) else weight == 0):
                continue
            if isinstance(weight, list):
                raise ValueError("per-image IP-Adapter scales need `ip_adapter_masks`, which are not supported yet")
            ip = F.scaled_dot_product_attention(query, split(to_k(states)), split(to_v(states)))
            out = out + weight * merge(ip)

        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


def _accepted_kwargs(processor: Any) -> Optional[frozenset]:
    """Names a processor's ``__call__`` accepts, or None when it takes ``**kwargs`` (accepts anything)."""
    call = processor.__call__ if not inspect.isfunction(processor) else processor
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


# --------------------------------------------------------------------------------------------------------------
# Attention module
# --------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with ``to_q``/``to_k``/``to_v``/``to_out.0`` projections and a pluggable processor.

    ``heads * dim_head`` is the inner width; ``cross_attention_dim`` (default: ``query_dim``) is the width of the
    key/value source.  ``norm_num_groups`` adds an input ``group_norm`` (VAE mid-block attention),
    ``residual_connection`` adds the input back and the result is divided by ``rescale_output_factor``.
    ``upcast_attention``/``upcast_softmax`` are recorded for processors that honour them; the default SDPA
    processor, like diffusers' own, computes in the input dtype.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        norm_num_groups: Optional[int] = None,
        out_bias: bool = True,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        out_dim: Optional[int] = None,
        processor: Optional[Any] = None,
    ):
        super().__init__()
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.query_dim = query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.dim_head = dim_head
        self.sliceable_head_dim = self.heads
        self.scale = dim_head**-0.5
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.out_dim = out_dim if out_dim is not None else query_dim

        self.group_norm = (
            nn.GroupNorm(num_channels=query_dim, num_groups=norm_num_groups, eps=eps, affine=True)
            if norm_num_groups is not None
            else None
        )
        self.spatial_norm = None
        self.norm_cross = None
        self.norm_q = None
        self.norm_k = None

        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])

        self.processor = None
        self._processor_kwargs: Optional[frozenset] = None
        self.set_processor(processor if processor is not None else AttnProcessor2_0())

    # processor plumbing ------------------------------------------------------------------------------------
    def set_processor(self, processor: Any) -> None:
        """Use ``processor`` for this layer (an ``nn.Module`` processor becomes a submodule named ``processor``)."""
        if processor is None or not callable(processor):
            raise TypeError(f"`processor` must be a callable attention processor, got {processor!r}")
        if "processor" in self._modules and not isinstance(processor, nn.Module):
            del self._modules["processor"]
        self.processor = processor
        self._processor_kwargs = _accepted_kwargs(processor)

    def get_processor(self, return_deprecated_lora: bool = False) -> Any:
        return self.processor

    def set_attention_slice(self, slice_size: Optional[int]) -> None:
        # SDPA already computes attention in a memory-efficient way; slicing is accepted and has no effect
        if slice_size is not None and slice_size > self.sliceable_head_dim:
            raise ValueError(f"slice_size {slice_size} has to be smaller or equal to {self.sliceable_head_dim}.")

    def prepare_attention_mask(
        self, attention_mask: torch.Tensor, target_length: int, batch_size: int, out_dim: int = 4
    ) -> torch.Tensor:
        """Turn an additive mask into a shape SDPA broadcasts: ``(B, 1 or heads, Q or 1, target_length)``.

        Masks shorter than ``target_length`` are padded with 0 (keep) at the end.
        """
        mask = attention_mask
        if mask.shape[-1] != target_length:
            if mask.shape[-1] > target_length:
                raise ValueError(
                    f"`attention_mask` covers {mask.shape[-1]} key tokens but the key sequence has {target_length}"
                )
            mask = F.pad(mask, (0, target_length - mask.shape[-1]), value=0.0)
        if mask.ndim == 2:
            mask = mask[:, None, None, :]
        elif mask.ndim == 3:
            if mask.shape[0] == batch_size:
                mask = mask[:, None]
            elif mask.shape[0] == batch_size * self.heads:
                mask = mask.view(batch_size, self.heads, mask.shape[1], mask.shape[2])
            else:
                raise ValueError(
                    f"`attention_mask` batch dimension {mask.shape[0]} matches neither the batch size {batch_size} "
                    f"nor batch size x heads {batch_size * self.heads}"
                )
        elif mask.ndim != 4:
            raise ValueError(f"`attention_mask` must have 2, 3 or 4 dims, got shape {tuple(mask.shape)}")
        return mask

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        **cross_attention_kwargs: Any,
    ) -> torch.Tensor:
        if cross_attention_kwargs and self._processor_kwargs is not None:
            unused = [k for k in cross_attention_kwargs if k not in self._processor_kwargs]
            if unused:
                logger.debug(
                    "cross_attention_kwargs %s are not expected by %s and are ignored", unused, type(self.processor).__name__
                )
                cross_attention_kwargs = {k: v for k, v in cross_attention_kwargs.items() if k not in unused}
        return self.processor(
            self,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **cross_attention_kwargs,
        )


class AttentionProcessorMixin:
    """``attn_processors`` / ``set_attn_processor`` / ``set_default_attn_processor`` for models holding ``Attention``."""

    @property
    def attn_processors(self) -> Dict[str, Any]:
        """``{"<module path>.processor": processor}`` for every attention layer, in module order."""
        return {f"{name}.processor": m.processor for name, m in self.named_modules() if isinstance(m, Attention)}

    def set_attn_processor(self, processor: Union[Any, Dict[str, Any]]) -> None:
        """Set one processor on every attention layer, or a dict keyed like :attr:`attn_processors`."""
        layers = [(name, m) for name, m in self.named_modules() if isinstance(m, Attention)]
        if isinstance(processor, dict):
            if len(processor) != len(layers):
                raise ValueError(
                    f"A dict of processors was passed, but the number of processors {len(processor)} does not match "
                    f"the number of attention layers: {len(layers)}. Please make sure to pass {len(layers)} processor "
                    "classes."
                )
            missing = [f"{name}.processor" for name, _ in layers if f"{name}.processor" not in processor]
            if missing:
                raise ValueError(f"`processor` dict has no entry for {missing[:3]}{'...' if len(missing) > 3 else ''}")
            for name, module in layers:
                module.set_processor(processor[f"{name}.processor"])
        else:
            for _, module in layers:
                module.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Reset every attention layer to the default SDPA processor."""
        for _, module in self.named_modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor2_0())

    def set_attention_slice(self, slice_size: Union[str, int, list, None] = "auto") -> None:
        """Accepted for API compatibility; SDPA attention needs no slicing, so this only validates the argument."""
        if slice_size is None or slice_size in ("auto", "max"):
            return
        if isinstance(slice_size, (int, list)):
            return
        raise ValueError(f"`slice_size` must be 'auto', 'max', an int, a list of ints or None, got {slice_size!r}")


# --------------------------------------------------------------------------------------------------------------
# LoRA scale for one call (cross_attention_kwargs["scale"]) through peft
# --------------------------------------------------------------------------------------------------------------


def split_lora_scale(cross_attention_kwargs: Optional[Dict[str, Any]]) -> Tuple[Optional[Dict[str, Any]], float]:
    """Return ``(kwargs without "scale", scale)``; the input dict is not modified."""
    if not cross_attention_kwargs or "scale" not in cross_attention_kwargs:
        return cross_attention_kwargs, 1.0
    kwargs = dict(cross_attention_kwargs)
    scale = kwargs.pop("scale")
    return kwargs, 1.0 if scale is None else float(scale)


def scale_lora_layers(model: nn.Module, weight: float) -> None:
    """Multiply the scale of every active peft LoRA layer in ``model`` by ``weight`` (no-op for 1.0)."""
    if weight == 1.0:
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.scale_layer(weight)


@contextlib.contextmanager
def lora_scale_applied(models, weight: Optional[float]):
    """Scale the LoRA layers of ``models`` (None entries skipped) by ``weight`` for the duration of the block."""
    targets = [m for m in models if m is not None] if weight is not None and weight != 1.0 else []
    for model in targets:
        scale_lora_layers(model, weight)
    try:
        yield
    finally:
        for model in targets:
            unscale_lora_layers(model, weight)


def unscale_lora_layers(model: nn.Module, weight: Optional[float] = None) -> None:
    """Undo :func:`scale_lora_layers` (``weight`` 0 resets the scales to their configured value)."""
    if weight is None or weight == 1.0:
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            if weight != 0:
                module.unscale_layer(weight)
            else:
                for adapter_name in module.active_adapters:
                    module.set_scale(adapter_name, 1.0)


# --------------------------------------------------------------------------------------------------------------
# feed-forward and transformer blocks
# --------------------------------------------------------------------------------------------------------------


class GELU(nn.Module):
    """``gelu(proj(x))`` (``approximate`` may be ``"tanh"``)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """Gated GELU: ``proj`` to twice the width, split into value and gate, return ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` (activation projection) -> ``net.1`` dropout -> ``net.2`` linear back to ``dim_out``."""

    def __init__(
        self,
        dim: int,
        dim_out: Optional[int] = None,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "geglu",
        final_dropout: bool = False,
        inner_dim: Optional[int] = None,
        bias: bool = True,
    ):
        super().__init__()
        inner_dim = inner_dim if inner_dim is not None else int(dim * mult)
        dim_out = dim_out if dim_out is not None else dim
        if activation_fn == "geglu":
            act: nn.Module = GEGLU(dim, inner_dim, bias=bias)
        elif activation_fn == "gelu":
            act = GELU(dim, inner_dim, bias=bias)
        elif activation_fn == "gelu-approximate":
            act = GELU(dim, inner_dim, approximate="tanh", bias=bias)
        else:
            raise ValueError(
                f"`activation_fn` {activation_fn!r} is not supported; expected 'geglu', 'gelu' or 'gelu-approximate'"
            )
        layers = [act, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention (``attn1``), cross-attention (``attn2``), GEGLU feed-forward (``ff``).

    With ``only_cross_attention`` the first attention also attends to ``encoder_hidden_states``;
    with ``double_self_attention`` the second attention is a self-attention.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: Optional[int] = None,
        activation_fn: str = "geglu",
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        ff_inner_dim: Optional[int] = None,
        ff_bias: bool = True,
        attention_out_bias: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.only_cross_attention = only_cross_attention

        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(
            query_dim=dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            dropout=dropout,
            bias=attention_bias,
            cross_attention_dim=cross_attention_dim if only_cross_attention else None,
            upcast_attention=upcast_attention,
            out_bias=attention_out_bias,
        )
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
            self.attn2 = Attention(
                query_dim=dim,
                cross_attention_dim=cross_attention_dim if not double_self_attention else None,
                heads=num_attention_heads,
                dim_head=attention_head_dim,
                dropout=dropout,
                bias=attention_bias,
                upcast_attention=upcast_attention,
                out_bias=attention_out_bias,
            )
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=ff_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        timestep: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        class_labels: Optional[torch.Tensor] = None,
        added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        kw = cross_attention_kwargs or {}
        normed = self.norm1(hidden_states)
        hidden_states = (
            self.attn1(
                normed,
                encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                attention_mask=attention_mask,
                **kw,
            )
            + hidden_states
        )
        if self.attn2 is not None:
            normed = self.norm2(hidden_states)
            hidden_states = (
                self.attn2(
                    normed,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=encoder_attention_mask,
                    **kw,
                )
                + hidden_states
            )
        hidden_states = self.ff(self.norm3(hidden_states)) + hidden_states
        return hidden_states


class Transformer2DModel(nn.Module):
    """Spatial transformer over a feature map: GroupNorm -> ``proj_in`` -> blocks -> ``proj_out`` + residual.

    ``proj_in``/``proj_out`` are 1x1 convs, or linear layers when ``use_linear_projection`` (SD 2.x, SDXL).
    ``forward`` returns the output tensor (not wrapped in an output object).
    """

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: Optional[int] = None,
        out_channels: Optional[int] = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: Optional[int] = None,
        attention_bias: bool = False,
        activation_fn: str = "geglu",
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if in_channels is None:
            raise ValueError("Transformer2DModel needs `in_channels` (only continuous feature-map inputs are supported)")
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.use_linear_projection = use_linear_projection
        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim
        self.gradient_checkpointing = False

        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim,
                    num_attention_heads,
                    attention_head_dim,
                    dropout=dropout,
                    cross_attention_dim=cross_attention_dim,
                    activation_fn=activation_fn,
                    attention_bias=attention_bias,
                    only_cross_attention=only_cross_attention,
                    double_self_attention=double_self_attention,
                    upcast_attention=upcast_attention,
                    norm_elementwise_affine=norm_elementwise_affine,
                    norm_eps=norm_eps,
                )
                for _ in range(num_layers)
            ]
        )
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, self.out_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        timestep: Optional[torch.Tensor] = None,
        added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None,
        class_labels: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # 0/1 masks of shape (B, L) become additive biases of shape (B, 1, L)
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = ((1 - attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)

        batch, _, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        if self.use_linear_projection:
            inner = hidden_states.shape[1]
            hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, inner)
            hidden_states = self.proj_in(hidden_states)
        else:
            hidden_states = self.proj_in(hidden_states)
            inner = hidden_states.shape[1]
            hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, inner)

        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.transformer_blocks:
            if checkpointing:
                hidden_states = torch.utils.checkpoint.checkpoint(
                    block,
                    hidden_states,
                    attention_mask,
                    encoder_hidden_states,
                    encoder_attention_mask,
                    timestep,
                    cross_attention_kwargs,
                    class_labels,
                    use_reentrant=False,
                )
            else:
                hidden_states = block(
                    hidden_states,
                    attention_mask=attention_mask,
                    encoder_hidden_states=encoder_hidden_states,
                    encoder_attention_mask=encoder_attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                )

        if self.use_linear_projection:
            hidden_states = self.proj_out(hidden_states)
            hidden_states = hidden_states.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
        else:
            hidden_states = hidden_states.reshape(batch, height, width, inner).permute(0, 3, 1, 2).contiguous()
            hidden_states = self.proj_out(hidden_states)
        return hidden_states + residual
