"""``UNet2DConditionModel``: the denoising network of Stable Diffusion 1.x / 2.x and SDXL.

Reads diffusers ``unet/config.json`` files unchanged and uses the same parameter names, so checkpoints in the
diffusers layout load as they are.  Config quirk kept on purpose: ``attention_head_dim`` holds the number of
attention *heads* per block (SD 1.5: 8 heads; SD 2.x/SDXL: ``[5, 10, 20, 20]``), and ``num_attention_heads``
must stay ``None``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from .attention import AttentionProcessorMixin, scale_lora_layers, split_lora_scale, unscale_lora_layers
from .embeddings import TimestepEmbedding, Timesteps
from .modeling_utils import ModelMixin
from .outputs import BaseOutput
from .resnet import get_activation
from .unet_blocks import get_down_block, get_mid_block, get_up_block

logger = logging.getLogger(__name__)

_CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")
_ADDITION_EMBED_TYPES = (None, "text_time")
_ENCODER_HID_DIM_TYPES = (None, "text_proj", "ip_image_proj")


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """``sample``: the predicted noise / velocity / sample, shape ``(batch, out_channels, height, width)``."""

    sample: torch.Tensor = None


def _expand(name: str, value: Any, n: int, kinds: tuple) -> list:
    """Per-block list from an int/bool/None (repeated) or a sequence of length ``n``."""
    if value is None or isinstance(value, kinds):
        return [value] * n
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be a single value or a list with one entry per down block, got {value!r}")
    if len(value) != n:
        raise ValueError(
            f"Must provide the same number of `{name}` as `down_block_types`. `{name}`: {value}. "
            f"(expected {n} entries, one per down block)"
        )
    return list(value)


def timesteps_for_batch(timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor of ``sample.shape[0]`` timesteps from an int, float, 0-d or 1-d tensor (length 1 or batch)."""
    batch = sample.shape[0]
    if isinstance(timestep, torch.Tensor):
        t = timestep
        if t.ndim == 0:
            t = t[None]
        elif t.ndim != 1:
            raise ValueError(f"`timestep` must be a number, a 0-d or a 1-d tensor, got shape {tuple(t.shape)}")
        if t.device != sample.device:
            t = t.to(sample.device)
    elif isinstance(timestep, (int, float)) and not isinstance(timestep, bool):
        is_float = isinstance(timestep, float)
        if sample.device.type in ("mps", "npu"):
            dtype = torch.float32 if is_float else torch.int32
        else:
            dtype = torch.float64 if is_float else torch.int64
        t = torch.tensor([timestep], dtype=dtype, device=sample.device)
    else:
        raise TypeError(f"`timestep` must be an int, a float or a torch.Tensor, got {type(timestep).__name__}")
    if t.shape[0] not in (1, batch):
        raise ValueError(
            f"`timestep` has {t.shape[0]} values but the batch has {batch} samples; pass one value or one per sample"
        )
    return t.expand(batch)


class _ConditioningEmbeddings:
    """Time, class and SDXL text-time embeddings (and the text ``encoder_hid_proj``), shared by
    :class:`UNet2DConditionModel` and ``ControlNetModel``: same submodule names, built in the same order."""

    def _build_embeddings(
        self,
        c0: int,
        time_embed_dim: int,
        *,
        flip_sin_to_cos: bool,
        freq_shift: int,
        act_fn: str,
        timestep_post_act: Optional[str],
        time_cond_proj_dim: Optional[int],
        encoder_hid_dim: Optional[int],
        encoder_hid_dim_type: Optional[str],
        encoder_hid_out_dim: int,
        class_embed_type: Optional[str],
        class_act_fn: str,
        num_class_embeds: Optional[int],
        projection_class_embeddings_input_dim: Optional[int],
        addition_embed_type: Optional[str],
        addition_time_embed_dim: Optional[int],
    ) -> None:
        self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(
            c0, time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim
        )

        if encoder_hid_dim_type is None and encoder_hid_dim is not None:
            encoder_hid_dim_type = "text_proj"
            self.register_to_config(encoder_hid_dim_type=encoder_hid_dim_type)
        if encoder_hid_dim_type == "text_proj":
            if encoder_hid_dim is None:
                raise ValueError("`encoder_hid_dim` has to be defined when `encoder_hid_dim_type` is set to 'text_proj'.")
            self.encoder_hid_proj = nn.Linear(encoder_hid_dim, encoder_hid_out_dim)
        else:
            # None, or "ip_image_proj" (the IP-Adapter loader installs the projection after construction)
            self.encoder_hid_proj = None

        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(c0, time_embed_dim, act_fn=class_act_fn)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        elif class_embed_type in ("projection", "simple_projection"):
            if projection_class_embeddings_input_dim is None:
                raise ValueError(
                    f"`class_embed_type`: {class_embed_type!r} requires `projection_class_embeddings_input_dim` be set"
                )
            if class_embed_type == "projection":
                self.class_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
            else:
                self.class_embedding = nn.Linear(projection_class_embeddings_input_dim, time_embed_dim)
        else:
            self.class_embedding = None

        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError(
                    "`addition_embed_type='text_time'` needs `addition_time_embed_dim` and "
                    "`projection_class_embeddings_input_dim` to be set"
                )
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

    def get_time_embed(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int]) -> torch.Tensor:
        """Sinusoidal timestep features for the batch, in ``sample``'s dtype."""
        return self.time_proj(timesteps_for_batch(timestep, sample)).to(dtype=sample.dtype)

    def get_class_embed(self, sample: torch.Tensor, class_labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if self.class_embedding is None:
            return None
        if class_labels is None:
            raise ValueError("class_labels should be provided when num_class_embeds > 0")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
        return self.class_embedding(class_labels).to(dtype=sample.dtype)

    def get_aug_embed(
        self, emb: torch.Tensor, encoder_hidden_states: torch.Tensor, added_cond_kwargs: Optional[Dict[str, Any]]
    ) -> Optional[torch.Tensor]:
        """SDXL micro-conditioning: pooled text embeds + sinusoidal ``time_ids`` -> ``add_embedding``."""
        if self.config.addition_embed_type != "text_time":
            return None
        added_cond_kwargs = added_cond_kwargs or {}
        for key in ("text_embeds", "time_ids"):
            if key not in added_cond_kwargs:
                raise ValueError(
                    f"{self.__class__} has the config param `addition_embed_type` set to 'text_time' which requires "
                    f"the keyword argument `{key}` to be passed in `added_cond_kwargs`"
                )
        text_embeds = added_cond_kwargs["text_embeds"]
        time_ids = added_cond_kwargs["time_ids"]
        time_embeds = self.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
        add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
        return self.add_embedding(add_embeds)


class UNet2DConditionModel(ModelMixin, _ConditioningEmbeddings, AttentionProcessorMixin, ConfigMixin):
    """Conditional UNet: noisy latents + timestep + text states -> noise prediction.

    Covers the SD 1.x/2.x (incl. v-prediction, linear projections, per-block heads, ``upcast_attention``),
    inpainting (9 input channels) and SDXL base/refiner (``addition_embed_type="text_time"``) configs.
    ``encoder_hid_proj`` is the IP-Adapter hook: when ``config.encoder_hid_dim_type == "ip_image_proj"``
    the cross-attention layers receive ``(text_states, image_states)`` built from
    ``added_cond_kwargs["image_embeds"]``.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: Optional[Union[int, Tuple[int, int]]] = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: Optional[str] = "UNetMidBlock2DCrossAttn",
        up_block_types: Tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention: Union[bool, Tuple[bool, ...]] = False,
        block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: Union[int, Tuple[int, ...]] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: Optional[int] = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: Union[int, Tuple[int, ...]] = 1280,
        transformer_layers_per_block: Union[int, Tuple[int, ...], Tuple[Tuple[int, ...], ...]] = 1,
        reverse_transformer_layers_per_block: Optional[Tuple[Tuple[int, ...], ...]] = None,
        encoder_hid_dim: Optional[int] = None,
        encoder_hid_dim_type: Optional[str] = None,
        attention_head_dim: Union[int, Tuple[int, ...]] = 8,
        num_attention_heads: Optional[Union[int, Tuple[int, ...]]] = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: Optional[str] = None,
        addition_embed_type: Optional[str] = None,
        addition_time_embed_dim: Optional[int] = None,
        num_class_embeds: Optional[int] = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: Optional[int] = None,
        time_embedding_act_fn: Optional[str] = None,
        timestep_post_act: Optional[str] = None,
        time_cond_proj_dim: Optional[int] = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: Optional[int] = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: Optional[bool] = None,
        cross_attention_norm: Optional[str] = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self.sample_size = sample_size

        # ---- validation (unsupported or inconsistent configs fail here, naming the field) ------------------
        if num_attention_heads is not None:
            raise ValueError(
                "`num_attention_heads` must be None: in diffusers configs the number of heads is stored in "
                "`attention_head_dim` (a historical naming quirk), and passing `num_attention_heads` is not supported."
            )
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(
                f"Must provide the same number of `down_block_types` as `up_block_types`. `down_block_types`: "
                f"{down_block_types}. `up_block_types`: {up_block_types}."
            )
        if len(block_out_channels) != n:
            raise ValueError(
                f"Must provide the same number of `block_out_channels` as `down_block_types`. `block_out_channels`: "
                f"{block_out_channels}. `down_block_types`: {down_block_types}."
            )
        if time_embedding_type != "positional":
            raise ValueError(
                f"`time_embedding_type` {time_embedding_type!r} is not supported; only 'positional' (Stable Diffusion) is"
            )
        if class_embed_type not in _CLASS_EMBED_TYPES:
            raise ValueError(f"`class_embed_type` {class_embed_type!r} is not supported; expected one of {_CLASS_EMBED_TYPES}")
        if addition_embed_type not in _ADDITION_EMBED_TYPES:
            raise ValueError(
                f"`addition_embed_type` {addition_embed_type!r} is not supported; expected one of {_ADDITION_EMBED_TYPES}"
            )
        if encoder_hid_dim_type not in _ENCODER_HID_DIM_TYPES:
            raise ValueError(
                f"`encoder_hid_dim_type` {encoder_hid_dim_type!r} is not supported; expected one of {_ENCODER_HID_DIM_TYPES}"
            )
        if attention_type != "default":
            raise ValueError(f"`attention_type` {attention_type!r} is not supported; only 'default' is")
        if dual_cross_attention:
            raise ValueError("`dual_cross_attention=True` is not supported")
        if resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(
                f"`resnet_time_scale_shift` {resnet_time_scale_shift!r} is not supported; expected 'default' or 'scale_shift'"
            )
        if isinstance(transformer_layers_per_block, (list, tuple)) and reverse_transformer_layers_per_block is None:
            if any(isinstance(x, (list, tuple)) for x in transformer_layers_per_block):
                raise ValueError("Must provide 'reverse_transformer_layers_per_block` if using asymmetrical UNet.")

        heads = _expand("attention_head_dim", attention_head_dim, n, (int,))
        cross_dims = _expand("cross_attention_dim", cross_attention_dim, n, (int,))
        layers = _expand("layers_per_block", layers_per_block, n, (int,))
        tlayers = _expand("transformer_layers_per_block", transformer_layers_per_block, n, (int,))
        only_cross = _expand("only_cross_attention", only_cross_attention, n, (bool,))

        # ---- input, time and extra embeddings ----------------------------------------------------------
        c0 = block_out_channels[0]
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        time_embed_dim = time_embedding_dim or c0 * 4
        self._build_embeddings(
            c0,
            time_embed_dim,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            act_fn=act_fn,
            timestep_post_act=timestep_post_act,
            time_cond_proj_dim=time_cond_proj_dim,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            encoder_hid_out_dim=cross_dims[0],
            class_embed_type=class_embed_type,
            class_act_fn=act_fn,
            num_class_embeds=num_class_embeds,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
        )

        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        # ---- down / up / mid blocks (registration order down, up, mid matches diffusers) ----------------
        self.down_blocks = nn.ModuleList([])
        self.up_blocks = nn.ModuleList([])
        blocks_temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim

        out_ch = c0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers[i],
                    transformer_layers_per_block=tlayers[i],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=blocks_temb,
                    add_downsample=i < n - 1,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_dims[i],
                    num_attention_heads=heads[i] if heads[i] is not None else out_ch,
                    downsample_padding=downsample_padding,
                    use_linear_projection=use_linear_projection,
                    only_cross_attention=only_cross[i],
                    upcast_attention=upcast_attention,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                    resnet_skip_time_act=resnet_skip_time_act,
                    resnet_out_scale_factor=resnet_out_scale_factor,
                    dropout=dropout,
                )
            )

        self.mid_block = get_mid_block(
            mid_block_type,
            in_channels=block_out_channels[-1],
            temb_channels=blocks_temb,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=tlayers[-1],
            num_attention_heads=heads[-1],
            cross_attention_dim=cross_dims[-1],
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            dropout=dropout,
        )

        self.num_upsamplers = 0
        rev_channels = list(reversed(block_out_channels))
        rev_heads = list(reversed(heads))
        rev_layers = list(reversed(layers))
        rev_cross = list(reversed(cross_dims))
        rev_tlayers = list(reversed(tlayers)) if reverse_transformer_layers_per_block is None else list(
            reverse_transformer_layers_per_block
        )
        rev_only_cross = list(reversed(only_cross))
        out_ch = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            is_final = i == n - 1
            prev_out, out_ch = out_ch, rev_channels[i]
            in_ch = rev_channels[min(i + 1, n - 1)]
            if not is_final:
                self.num_upsamplers += 1
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    num_layers=rev_layers[i] + 1,
                    transformer_layers_per_block=rev_tlayers[i],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    prev_output_channel=prev_out,
                    temb_channels=blocks_temb,
                    add_upsample=not is_final,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resolution_idx=i,
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=rev_cross[i],
                    num_attention_heads=rev_heads[i] if rev_heads[i] is not None else out_ch,
                    use_linear_projection=use_linear_projection,
                    only_cross_attention=rev_only_cross[i],
                    upcast_attention=upcast_attention,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                    resnet_skip_time_act=resnet_skip_time_act,
                    resnet_out_scale_factor=resnet_out_scale_factor,
                    dropout=dropout,
                )
            )

        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(num_channels=c0, num_groups=norm_num_groups, eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = None
            self.conv_act = None
        self.conv_out = nn.Conv2d(c0, out_channels, kernel_size=conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

    # ------------------------------------------------------------------------------------------------------
    # FreeU
    # ------------------------------------------------------------------------------------------------------
    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """Turn on FreeU: backbone factors ``b1``/``b2`` and skip factors ``s1``/``s2`` for the two deepest up
        stages (values from the FreeU paper, e.g. SD 1.5: s1=0.9, s2=0.2, b1=1.5, b2=1.6)."""
        for name, value in (("s1", s1), ("s2", s2), ("b1", b1), ("b2", b2)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"`{name}` must be a number, got {value!r}")
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        """Turn FreeU off."""
        for block in self.up_blocks:
            block.s1 = block.s2 = block.b1 = block.b2 = None

    # ------------------------------------------------------------------------------------------------------
    # embeddings
    # ------------------------------------------------------------------------------------------------------
    def process_encoder_hidden_states(
        self, encoder_hidden_states: torch.Tensor, added_cond_kwargs: Optional[Dict[str, Any]]
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Any]]:
        """Apply ``encoder_hid_proj``: a text projection, or the IP-Adapter image projection (returns a tuple)."""
        proj = self.encoder_hid_proj
        if proj is None:
            return encoder_hidden_states
        kind = self.config.encoder_hid_dim_type
        if kind == "text_proj":
            return proj(encoder_hidden_states)
        if kind == "ip_image_proj":
            if not added_cond_kwargs or "image_embeds" not in added_cond_kwargs:
                raise ValueError(
                    f"{self.__class__} has the config param `encoder_hid_dim_type` set to 'ip_image_proj' which "
                    "requires the keyword argument `image_embeds` to be passed in `added_cond_kwargs`"
                )
            text_proj = getattr(self, "text_encoder_hid_proj", None)
            if text_proj is not None:
                encoder_hidden_states = text_proj(encoder_hidden_states)
            image_embeds = proj(added_cond_kwargs["image_embeds"])
            return (encoder_hidden_states, image_embeds)
        return encoder_hidden_states

    # ------------------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
        timestep_cond: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None,
        down_block_additional_residuals: Optional[Tuple[torch.Tensor, ...]] = None,
        mid_block_additional_residual: Optional[torch.Tensor] = None,
        down_intrablock_additional_residuals: Optional[Tuple[torch.Tensor, ...]] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[UNet2DConditionOutput, Tuple[torch.Tensor]]:
        """Predict from ``sample`` (B, C, H, W) at ``timestep`` given ``encoder_hidden_states`` (B, L, D).

        ``cross_attention_kwargs["scale"]`` scales loaded LoRA layers for this call; other entries go to the
        attention processors.  ControlNet residuals are added to the skip connections and the mid-block output.
        """
        if sample.ndim != 4:
            raise ValueError(f"`sample` must be a 4-D tensor (batch, channels, height, width), got shape {tuple(sample.shape)}")
        if encoder_hidden_states is None and self._uses_cross_attention():
            raise ValueError(
                "`encoder_hidden_states` is required: this UNet has cross-attention layers (pass the text encoder's "
                "hidden states, shape (batch, tokens, cross_attention_dim))"
            )
        cross_attention_kwargs, lora_scale = split_lora_scale(cross_attention_kwargs)
        if lora_scale != 1.0:
            scale_lora_layers(self, lora_scale)
        try:
            return self._forward(
                sample,
                timestep,
                encoder_hidden_states,
                class_labels,
                timestep_cond,
                attention_mask,
                cross_attention_kwargs,
                added_cond_kwargs,
                down_block_additional_residuals,
                mid_block_additional_residual,
                down_intrablock_additional_residuals,
                encoder_attention_mask,
                return_dict,
            )
        finally:
            if lora_scale != 1.0:
                unscale_lora_layers(self, lora_scale)

    def _uses_cross_attention(self) -> bool:
        blocks = list(self.down_blocks) + [self.mid_block]
        return any(getattr(b, "has_cross_attention", False) for b in blocks)

    def _forward(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        class_labels,
        timestep_cond,
        attention_mask,
        cross_attention_kwargs,
        added_cond_kwargs,
        down_block_additional_residuals,
        mid_block_additional_residual,
        down_intrablock_additional_residuals,
        encoder_attention_mask,
        return_dict,
    ):
        config = self.config
        # skip sizes must be forwarded to the upsamplers when the input is not a multiple of the total factor
        factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % factor != 0 for s in sample.shape[-2:])

        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)

        if config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time (+ class, + SDXL micro-conditioning)
        emb = self.time_embedding(self.get_time_embed(sample, timestep), timestep_cond)
        class_emb = self.get_class_embed(sample, class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if config.class_embeddings_concat else emb + class_emb
        aug_emb = self.get_aug_embed(emb, encoder_hidden_states, added_cond_kwargs)
        if aug_emb is not None:
            emb = emb + aug_emb
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)

        encoder_hidden_states = self.process_encoder_hidden_states(encoder_hidden_states, added_cond_kwargs)

        # 2. down
        sample = self.conv_in(sample)
        is_controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        intrablock: Optional[List[torch.Tensor]] = None
        if down_intrablock_additional_residuals is not None:
            intrablock = list(down_intrablock_additional_residuals)
        elif mid_block_additional_residual is None and down_block_additional_residuals is not None:
            warnings.warn(
                "Passing intrablock residual connections with `down_block_additional_residuals` is deprecated; "
                "`down_block_additional_residuals` should only be used for ControlNet. Use "
                "`down_intrablock_additional_residuals` instead.",
                FutureWarning,
                stacklevel=3,
            )
            intrablock = list(down_block_additional_residuals)

        skips: Tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                extra = {}
                if intrablock:
                    extra["additional_residuals"] = intrablock.pop(0)
                sample, res = block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                    **extra,
                )
            else:
                sample, res = block(hidden_states=sample, temb=emb)
                if intrablock:
                    # the block's last skip is its output: the adapter residual reaches both (as in diffusers)
                    sample = sample + intrablock.pop(0)
                    res = res[:-1] + (sample,)
            skips += res

        if is_controlnet:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(
                    f"`down_block_additional_residuals` has {len(down_block_additional_residuals)} tensors but this "
                    f"UNet has {len(skips)} skip connections"
                )
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        # 3. mid
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(
                    sample,
                    emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample = self.mid_block(sample, emb)
            if intrablock and sample.shape == intrablock[0].shape:
                sample = sample + intrablock.pop(0)
        if is_controlnet:
            sample = sample + mid_block_additional_residual

        # 4. up
        n_up = len(self.up_blocks)
        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res = skips[-k:]
            skips = skips[:-k]
            upsample_size = skips[-1].shape[2:] if (forward_upsample_size and i < n_up - 1) else None
            if getattr(block, "has_cross_attention", False):
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=encoder_hidden_states,
                    cross_attention_kwargs=cross_attention_kwargs,
                    upsample_size=upsample_size,
                    attention_mask=attention_mask,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)

        # 5. out
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)

        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)
