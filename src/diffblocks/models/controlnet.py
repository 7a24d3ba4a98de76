"""``ControlNetModel`` (SD and SDXL) and ``MultiControlNetModel``.

A ControlNet is a copy of the UNet encoder (``conv_in``, time/add embeddings, ``down_blocks``, ``mid_block``)
fed with ``conv_in(latents) + controlnet_cond_embedding(image)``; every skip tensor and the mid output go through
a zero-initialised 1x1 conv and become residuals for the UNet's skip connections.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import ConfigMixin, register_to_config
from .attention import AttentionProcessorMixin, scale_lora_layers, split_lora_scale, unscale_lora_layers
from .modeling_utils import ModelMixin
from .outputs import BaseOutput
from .unet_2d_condition import _ConditioningEmbeddings, _expand
from .unet_blocks import UNetMidBlock2D, UNetMidBlock2DCrossAttn, get_down_block

logger = logging.getLogger(__name__)


@dataclass
class ControlNetOutput(BaseOutput):
    """``down_block_res_samples``: one residual per UNet skip connection; ``mid_block_res_sample``: for the mid block."""

    down_block_res_samples: Tuple[torch.Tensor, ...] = None
    mid_block_res_sample: torch.Tensor = None


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    _zero_params(conv)
    return conv


def _zero_params(module: nn.Module) -> None:
    if any(p.is_meta for p in module.parameters()):
        return  # weights will be assigned by from_pretrained
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


class ControlNetConditioningEmbedding(nn.Module):
    """Small conv net: conditioning image (full resolution) -> features at latent resolution.

    ``conv_in`` then pairs of (3x3 conv, 3x3 stride-2 conv to the next width), SiLU after each, then the
    zero-initialised ``conv_out``.
    """

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        _zero_params(self.conv_out)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


class ControlNetModel(ModelMixin, _ConditioningEmbeddings, AttentionProcessorMixin, ConfigMixin):
    """ControlNet for Stable Diffusion 1.x/2.x and SDXL (``addition_embed_type="text_time"``)."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: Optional[str] = "UNetMidBlock2DCrossAttn",
        only_cross_attention: Union[bool, Tuple[bool, ...]] = False,
        block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: Optional[int] = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: Union[int, Tuple[int, ...]] = 1,
        encoder_hid_dim: Optional[int] = None,
        encoder_hid_dim_type: Optional[str] = None,
        attention_head_dim: Union[int, Tuple[int, ...]] = 8,
        num_attention_heads: Optional[Union[int, Tuple[int, ...]]] = None,
        use_linear_projection: bool = False,
        class_embed_type: Optional[str] = None,
        addition_embed_type: Optional[str] = None,
        addition_time_embed_dim: Optional[int] = None,
        num_class_embeds: Optional[int] = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: Optional[int] = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: Optional[Tuple[int, ...]] = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        # the naming quirk: `attention_head_dim` holds head counts unless `num_attention_heads` is given
        num_attention_heads = num_attention_heads or attention_head_dim
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(
                f"Must provide the same number of `block_out_channels` as `down_block_types`. `block_out_channels`: "
                f"{block_out_channels}. `down_block_types`: {down_block_types}."
            )
        if controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"`controlnet_conditioning_channel_order` must be 'rgb' or 'bgr', got {controlnet_conditioning_channel_order!r}"
            )
        if addition_embed_type not in (None, "text_time"):
            raise ValueError(f"`addition_embed_type` {addition_embed_type!r} is not supported; expected None or 'text_time'")
        if class_embed_type not in (None, "timestep", "identity", "projection"):
            raise ValueError(
                f"`class_embed_type` {class_embed_type!r} is not supported; expected None, 'timestep', 'identity' or 'projection'"
            )
        if encoder_hid_dim_type not in (None, "text_proj"):
            raise ValueError(f"`encoder_hid_dim_type` {encoder_hid_dim_type!r} is not supported; expected None or 'text_proj'")
        if not isinstance(layers_per_block, int):
            raise TypeError(f"`layers_per_block` must be an int for ControlNetModel, got {layers_per_block!r}")
        heads = _expand("num_attention_heads", num_attention_heads, n, (int,))
        only_cross = _expand("only_cross_attention", only_cross_attention, n, (bool,))
        tlayers = _expand("transformer_layers_per_block", transformer_layers_per_block, n, (int,))

        c0 = block_out_channels[0]
        time_embed_dim = c0 * 4
        self.conv_in = nn.Conv2d(in_channels, c0, kernel_size=3, padding=1)
        # same submodules as the UNet's (names, order); like diffusers' ControlNet, the "timestep" class
        # embedding always uses SiLU and there is no time_cond_proj / post-activation
        self._build_embeddings(
            c0,
            time_embed_dim,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            act_fn=act_fn,
            timestep_post_act=None,
            time_cond_proj_dim=None,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            encoder_hid_out_dim=cross_attention_dim,
            class_embed_type=class_embed_type,
            class_act_fn="silu",
            num_class_embeds=num_class_embeds,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
        )

        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=c0,
            block_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )

        self.down_blocks = nn.ModuleList([])
        self.controlnet_down_blocks = nn.ModuleList([_zero_conv(c0)])
        out_ch = c0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            is_final = i == n - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    transformer_layers_per_block=tlayers[i],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    cross_attention_dim=cross_attention_dim,
                    num_attention_heads=heads[i] if heads[i] is not None else out_ch,
                    downsample_padding=downsample_padding,
                    use_linear_projection=use_linear_projection,
                    only_cross_attention=only_cross[i],
                    upcast_attention=upcast_attention,
                    resnet_time_scale_shift=resnet_time_scale_shift,
                )
            )
            for _ in range(layers_per_block + (0 if is_final else 1)):
                self.controlnet_down_blocks.append(_zero_conv(out_ch))

        mid_ch = block_out_channels[-1]
        self.controlnet_mid_block = _zero_conv(mid_ch)
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=mid_ch,
                temb_channels=time_embed_dim,
                transformer_layers_per_block=tlayers[-1],
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift,
                cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads[-1],
                resnet_groups=norm_num_groups,
                use_linear_projection=use_linear_projection,
                upcast_attention=upcast_attention,
            )
        elif mid_block_type == "UNetMidBlock2D":
            self.mid_block = UNetMidBlock2D(
                in_channels=mid_ch,
                temb_channels=time_embed_dim,
                num_layers=0,
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                output_scale_factor=mid_block_scale_factor,
                resnet_groups=norm_num_groups,
                resnet_time_scale_shift=resnet_time_scale_shift,
                add_attention=False,
            )
        else:
            raise ValueError(
                f"`mid_block_type` {mid_block_type!r} is not supported; expected 'UNetMidBlock2DCrossAttn' or 'UNetMidBlock2D'"
            )

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_unet(
        cls,
        unet: Any,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: Optional[Tuple[int, ...]] = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
    ) -> "ControlNetModel":
        """A ControlNet whose encoder mirrors ``unet``'s config (and, by default, copies its encoder weights)."""
        cfg = getattr(unet, "config", None)
        if cfg is None or "down_block_types" not in cfg:
            raise TypeError(f"`unet` must be a UNet2DConditionModel, got {type(unet).__name__}")
        layers_per_block = cfg["layers_per_block"]
        if not isinstance(layers_per_block, int):
            raise ValueError(
                f"`unet.config.layers_per_block` must be an int to build a ControlNet from it, got {layers_per_block!r}"
            )
        controlnet = cls(
            encoder_hid_dim=cfg.get("encoder_hid_dim"),
            encoder_hid_dim_type=cfg.get("encoder_hid_dim_type") if cfg.get("encoder_hid_dim_type") == "text_proj" else None,
            addition_embed_type=cfg.get("addition_embed_type"),
            addition_time_embed_dim=cfg.get("addition_time_embed_dim"),
            transformer_layers_per_block=cfg.get("transformer_layers_per_block", 1),
            in_channels=cfg["in_channels"],
            flip_sin_to_cos=cfg["flip_sin_to_cos"],
            freq_shift=cfg["freq_shift"],
            down_block_types=cfg["down_block_types"],
            only_cross_attention=cfg["only_cross_attention"],
            block_out_channels=cfg["block_out_channels"],
            layers_per_block=layers_per_block,
            downsample_padding=cfg["downsample_padding"],
            mid_block_scale_factor=cfg["mid_block_scale_factor"],
            act_fn=cfg["act_fn"],
            norm_num_groups=cfg["norm_num_groups"],
            norm_eps=cfg["norm_eps"],
            cross_attention_dim=cfg["cross_attention_dim"],
            attention_head_dim=cfg["attention_head_dim"],
            num_attention_heads=cfg["num_attention_heads"],
            use_linear_projection=cfg["use_linear_projection"],
            class_embed_type=cfg["class_embed_type"],
            num_class_embeds=cfg["num_class_embeds"],
            upcast_attention=cfg["upcast_attention"],
            resnet_time_scale_shift=cfg["resnet_time_scale_shift"],
            projection_class_embeddings_input_dim=cfg["projection_class_embeddings_input_dim"],
            mid_block_type=cfg["mid_block_type"],
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )
        if load_weights_from_unet:
            pairs = [
                (controlnet.conv_in, unet.conv_in),
                (controlnet.time_proj, unet.time_proj),
                (controlnet.time_embedding, unet.time_embedding),
                (controlnet.down_blocks, unet.down_blocks),
                (controlnet.mid_block, unet.mid_block),
            ]
            if controlnet.class_embedding is not None:
                pairs.append((controlnet.class_embedding, unet.class_embedding))
            if hasattr(controlnet, "add_embedding"):
                pairs.append((controlnet.add_embedding, unet.add_embedding))
            for dst, src in pairs:
                dst.load_state_dict(src.state_dict())
        return controlnet

    # ------------------------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: Optional[torch.Tensor] = None,
        timestep_cond: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> Union[ControlNetOutput, Tuple[Tuple[torch.Tensor, ...], torch.Tensor]]:
        """Residuals for the UNet from latents ``sample`` and the conditioning image ``controlnet_cond``.

        Residuals are multiplied by ``conditioning_scale``; in ``guess_mode`` (without global pooling) by
        ``conditioning_scale * logspace(-1, 0)`` from the shallowest to the mid residual.
        """
        if not isinstance(controlnet_cond, torch.Tensor) or controlnet_cond.ndim != 4:
            raise ValueError(
                "`controlnet_cond` must be a 4-D tensor (batch, channels, height, width), got "
                f"{tuple(controlnet_cond.shape) if isinstance(controlnet_cond, torch.Tensor) else type(controlnet_cond).__name__}"
            )
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
            raise ValueError(
                "`sample` must be a 4-D tensor (batch, channels, height, width), got "
                f"{tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__}"
            )
        if encoder_hidden_states is None and any(getattr(b, "has_cross_attention", False) for b in self.down_blocks):
            raise ValueError("`encoder_hidden_states` is required: this ControlNet has cross-attention layers")
        cross_attention_kwargs, lora_scale = split_lora_scale(cross_attention_kwargs)
        if lora_scale != 1.0:
            scale_lora_layers(self, lora_scale)
        try:
            return self._forward(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                conditioning_scale,
                class_labels,
                timestep_cond,
                attention_mask,
                added_cond_kwargs,
                cross_attention_kwargs,
                guess_mode,
                return_dict,
            )
        finally:
            if lora_scale != 1.0:
                unscale_lora_layers(self, lora_scale)

    def _forward(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        controlnet_cond,
        conditioning_scale,
        class_labels,
        timestep_cond,
        attention_mask,
        added_cond_kwargs,
        cross_attention_kwargs,
        guess_mode,
        return_dict,
    ):
        config = self.config
        if config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])

        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)

        # 1. time (+ class, + SDXL micro-conditioning)
        emb = self.time_embedding(self.get_time_embed(sample, timestep), timestep_cond)
        class_emb = self.get_class_embed(sample, class_labels)
        if class_emb is not None:
            emb = emb + class_emb
        aug_emb = self.get_aug_embed(emb, encoder_hidden_states, added_cond_kwargs)
        if aug_emb is not None:
            emb = emb + aug_emb

        # 2. input + conditioning image
        sample = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)

        # 3. encoder
        skips: Tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(
                    sample,
                    emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                sample = self.mid_block(sample, emb)

        # 4. zero convs and scaling
        down = [conv(s) for s, conv in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(sample)
        if guess_mode and not config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * conditioning_scale
            down = [s * w for s, w in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [s * conditioning_scale for s in down]
            mid = mid * conditioning_scale
        if config.global_pool_conditions:
            down = [torch.mean(s, dim=(2, 3), keepdim=True) for s in down]
            mid = torch.mean(mid, dim=(2, 3), keepdim=True)

        if not return_dict:
            return (down, mid)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


class MultiControlNetModel(ModelMixin):
    """Several ControlNets whose residuals are summed; ``forward`` takes one conditioning image and scale per net."""

    def __init__(self, controlnets: Union[List[ControlNetModel], Tuple[ControlNetModel, ...]]):
        super().__init__()
        if not isinstance(controlnets, (list, tuple)) or len(controlnets) == 0:
            raise ValueError(f"`controlnets` must be a non-empty list of ControlNetModel, got {controlnets!r}")
        for i, net in enumerate(controlnets):
            if not isinstance(net, nn.Module):
                raise TypeError(f"`controlnets[{i}]` must be a ControlNetModel, got {type(net).__name__}")
        self.nets = nn.ModuleList(controlnets)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: List[torch.Tensor],
        conditioning_scale: List[float],
        class_labels: Optional[torch.Tensor] = None,
        timestep_cond: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> Union[ControlNetOutput, Tuple[List[torch.Tensor], torch.Tensor]]:
        if len(controlnet_cond) != len(self.nets):
            raise ValueError(
                f"`controlnet_cond` has {len(controlnet_cond)} images but there are {len(self.nets)} ControlNets"
            )
        if isinstance(conditioning_scale, (int, float)):
            conditioning_scale = [float(conditioning_scale)] * len(self.nets)
        if len(conditioning_scale) != len(self.nets):
            raise ValueError(
                f"`conditioning_scale` has {len(conditioning_scale)} values but there are {len(self.nets)} ControlNets"
            )
        down_total: Optional[List[torch.Tensor]] = None
        mid_total: Optional[torch.Tensor] = None
        for image, scale, net in zip(controlnet_cond, conditioning_scale, self.nets):
            down, mid = net(
                sample=sample,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=image,
                conditioning_scale=scale,
                class_labels=class_labels,
                timestep_cond=timestep_cond,
                attention_mask=attention_mask,
                added_cond_kwargs=added_cond_kwargs,
                cross_attention_kwargs=cross_attention_kwargs,
                guess_mode=guess_mode,
                return_dict=False,
            )
            if down_total is None:
                down_total, mid_total = list(down), mid
            else:
                down_total = [a + b for a, b in zip(down_total, down)]
                mid_total = mid_total + mid
        if not return_dict:
            return (down_total, mid_total)
        return ControlNetOutput(down_block_res_samples=down_total, mid_block_res_sample=mid_total)

    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        is_main_process: bool = True,
        save_function: Any = None,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        """Save net 0 to ``save_directory`` and net i to ``save_directory_i`` (the diffusers layout)."""
        base = os.fspath(save_directory)
        for idx, net in enumerate(self.nets):
            target = base if idx == 0 else f"{base}_{idx}"
            net.save_pretrained(
                target,
                is_main_process=is_main_process,
                save_function=save_function,
                safe_serialization=safe_serialization,
                variant=variant,
                **kwargs,
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_path: Union[str, os.PathLike], **kwargs: Any) -> "MultiControlNetModel":
        """Load ``path``, ``path_1``, ``path_2``, ... (as written by :meth:`save_pretrained`)."""
        base = os.fspath(pretrained_model_path)
        nets = []
        idx = 0
        path = base
        while os.path.isdir(path):
            nets.append(ControlNetModel.from_pretrained(path, **kwargs))
            idx += 1
            path = f"{base}_{idx}"
        if not nets:
            raise FileNotFoundError(
                f"No ControlNet found at {base!r}; expected a folder with config.json (and {base}_1, ... for more nets)"
            )
        logger.info("%d ControlNets loaded from %s", len(nets), base)
        return cls(nets)
