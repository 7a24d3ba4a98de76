"""IP-Adapter: image prompts for SD 1.x/2.x and SDXL UNets.

An IP-Adapter checkpoint holds two groups of tensors: ``image_proj`` (a projection from CLIP image features to a
few extra cross-attention tokens) and ``ip_adapter`` (per cross-attention layer a ``to_k_ip``/``to_v_ip`` pair,
numbered 1, 3, 5, ... in the order of the UNet's attention layers: down blocks, up blocks, mid block). Loading one
installs the projection(s) as ``unet.encoder_hid_proj`` and an IP-Adapter attention processor on every
cross-attention layer; the pipeline then passes the encoded reference image(s) to the UNet as
``added_cond_kwargs["image_embeds"]``.

``IPAdapterMixin`` serves the classic pipelines (it also loads the CLIP image encoder and creates the feature
extractor when the pipeline has none); ``ModularIPAdapterMixin`` serves modular pipelines, whose image encoder is
a regular component.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

_HUB_KWARGS = ("cache_dir", "local_files_only", "token", "revision", "force_download", "proxies")
_IGNORED_KWARGS = ("low_cpu_mem_usage",)
_SAVED_ATTR = "_diffblocks_ip_adapter_saved"


# --------------------------------------------------------------------------------------------------------------
# reading checkpoints
# --------------------------------------------------------------------------------------------------------------
def _regroup(flat: Dict[str, Any]) -> Dict[str, Dict[str, torch.Tensor]]:
    grouped: Dict[str, Dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, _, rest = key.partition(".")
        if group in grouped and rest:
            grouped[group][rest] = value
    return grouped


def _check_groups(state_dict: Any, where: str) -> Dict[str, Dict[str, torch.Tensor]]:
    if not isinstance(state_dict, dict):
        raise TypeError(f"IP-Adapter weights from {where} must be a dict, got {type(state_dict).__name__}")
    if "image_proj" not in state_dict and "ip_adapter" not in state_dict:
        if any(isinstance(k, str) and k.startswith(("image_proj.", "ip_adapter.")) for k in state_dict):
            state_dict = _regroup(state_dict)
        else:
            raise ValueError(
                f"Required keys are (`image_proj` and `ip_adapter`) missing from the state dict ({where}; found keys "
                f"{sorted(map(str, state_dict))[:5]})."
            )
    missing = [g for g in ("image_proj", "ip_adapter") if not state_dict.get(g)]
    if missing:
        raise ValueError(f"IP-Adapter weights from {where} have no (or an empty) {missing} group.")
    return state_dict


def read_ip_adapter_state_dict(
    source: Union[str, os.PathLike, Dict[str, Any]],
    weight_name: Optional[str] = None,
    subfolder: Optional[str] = None,
    **hub_kwargs: Any,
) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a dict, a local file/folder or a Hub repo id.

    ``.safetensors`` files hold flat ``image_proj.*``/``ip_adapter.*`` keys; ``.bin`` files hold the nested dict.
    """
    if isinstance(source, dict):
        return _check_groups(source, "the state dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "`pretrained_model_name_or_path_or_dict` must be a path, a repo id or a dict of tensors, got "
            f"{type(source).__name__}"
        )
    source = os.fspath(source)
    if os.path.isfile(source):
        path = source
    else:
        if not isinstance(weight_name, str) or not weight_name:
            raise ValueError(
                f"`weight_name` must name the IP-Adapter file inside {source!r} (e.g. 'ip-adapter_sd15.bin'), got "
                f"{weight_name!r}"
            )
        from ..hub import resolve_file

        path = resolve_file(source, weight_name, subfolder=subfolder or None, **hub_kwargs)
    from ..models.weights import load_state_dict

    state = load_state_dict(path)  # safetensors memory-mapped; .bin with weights_only
    if path.endswith(".safetensors"):
        flat = {k: v for k, v in state.items() if k.startswith(("image_proj.", "ip_adapter."))}
        return _check_groups(_regroup(flat) if flat else {}, path)
    return _check_groups(state, path)


# --------------------------------------------------------------------------------------------------------------
# UNet side
# --------------------------------------------------------------------------------------------------------------
def _ip_processor_class():
    from ..models.attention import IPAdapterAttnProcessor2_0

    return IPAdapterAttnProcessor2_0


def is_ip_adapter_processor(processor: Any) -> bool:
    return isinstance(processor, _ip_processor_class())


def _ordered_attention_layers(unet: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, Attention)`` in the order IP-Adapter checkpoints number them: down blocks, up blocks, mid block."""
    from ..models.attention import Attention

    layers = [(n, m) for n, m in unet.named_modules() if isinstance(m, Attention) and not n.startswith("encoder_hid")]
    rank = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
    return sorted(layers, key=lambda item: rank.get(item[0].split(".", 1)[0], 3))  # stable within a group


def load_ip_adapter_into_unet(unet: nn.Module, state_dicts: Sequence[Dict[str, Dict[str, torch.Tensor]]]) -> None:
    """Install the image projections and the IP-Adapter attention processors of ``state_dicts`` (one per adapter)
    into ``unet``, replacing IP-Adapters loaded before."""
    from ..models.ip_adapter_projection import (
        MultiIPAdapterImageProjection,
        convert_ip_adapter_image_proj,
        num_image_tokens,
    )

    if not state_dicts:
        raise ValueError("At least one IP-Adapter state dict is required.")
    num_tokens = [num_image_tokens(sd["image_proj"]) for sd in state_dicts]
    param = next(unet.parameters())
    dtype, device = param.dtype, param.device

    # projections first: every error about the files is raised before the UNet is changed
    projections = []
    for i, sd in enumerate(state_dicts):
        module, renamed = convert_ip_adapter_image_proj(sd["image_proj"])
        result = module.load_state_dict(renamed, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"IP-Adapter {i}: `image_proj` does not match a {type(module).__name__} (missing "
                f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})."
            )
        projections.append(module.to(device=device, dtype=dtype).eval())

    Processor = _ip_processor_class()
    layers = _ordered_attention_layers(unet)
    processors = {}
    cross_index = 0
    for name, attn in layers:
        if name.endswith("attn1"):  # the checkpoints number every attention layer; only attn2 (odd ids) has weights
            continue
        key_id = 1 + 2 * cross_index
        cross_index += 1
        hidden, cross_dim = attn.to_k.out_features, attn.to_k.in_features
        proc = Processor(hidden_size=hidden, cross_attention_dim=cross_dim, num_tokens=list(num_tokens), scale=1.0)
        weights = {}
        for i, sd in enumerate(state_dicts):
            for kind in ("to_k_ip", "to_v_ip"):
                key = f"{key_id}.{kind}.weight"
                tensor = sd["ip_adapter"].get(key)
                if tensor is None:
                    raise ValueError(
                        f"IP-Adapter {i}: `ip_adapter` has no {key!r} for the cross-attention layer {name!r}; the "
                        "checkpoint was made for a different UNet."
                    )
                if tuple(tensor.shape) != (hidden, cross_dim):
                    raise ValueError(
                        f"IP-Adapter {i}: {key!r} has shape {tuple(tensor.shape)} but layer {name!r} needs "
                        f"{(hidden, cross_dim)}; the checkpoint was made for a different UNet."
                    )
                weights[f"{kind}.{i}.weight"] = tensor
        proc.load_state_dict(weights, strict=True)
        processors[name] = proc.to(device=device, dtype=dtype)
    if not processors:
        raise ValueError(f"{type(unet).__name__} has no cross-attention layers to attach an IP-Adapter to.")
    extra = sorted(k for sd in state_dicts for k in sd["ip_adapter"]
                   if re.match(r"^\d+\.to_[kv]_ip\.weight$", k) and int(k.split(".")[0]) > 2 * cross_index - 1)
    if extra:
        raise ValueError(
            f"IP-Adapter weights have more cross-attention layers than the UNet (e.g. {extra[:2]}); the checkpoint "
            "was made for a different UNet."
        )

    saved = unet.__dict__.get(_SAVED_ATTR)
    if saved is None:
        hid = unet.config.get("encoder_hid_dim_type")
        saved = {
            "processors": {n: m.processor for n, m in layers if not is_ip_adapter_processor(m.processor)},
            "encoder_hid_dim_type": hid,
            "encoder_hid_dim": unet.config.get("encoder_hid_dim"),
        }
        if getattr(unet, "encoder_hid_proj", None) is not None and hid == "text_proj":
            # a text projection (Kolors-style UNets) keeps working on the text states
            unet.text_encoder_hid_proj = unet.encoder_hid_proj
        unet.__dict__[_SAVED_ATTR] = saved
    for name, attn in layers:
        if name in processors:
            attn.set_processor(processors[name])
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections)
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj", encoder_hid_dim=None)


def unload_ip_adapter_from_unet(unet: nn.Module) -> None:
    """Restore the attention processors, ``encoder_hid_proj`` and config the UNet had before IP-Adapters."""
    from ..models.attention import AttnProcessor2_0

    saved = unet.__dict__.pop(_SAVED_ATTR, None) or {}
    originals = saved.get("processors", {})
    for name, attn in _ordered_attention_layers(unet):
        if is_ip_adapter_processor(attn.processor):
            attn.set_processor(originals.get(name) or AttnProcessor2_0())
    text_proj = getattr(unet, "text_encoder_hid_proj", None)
    if text_proj is not None:
        unet.encoder_hid_proj = text_proj
        del unet.text_encoder_hid_proj
        unet.register_to_config(encoder_hid_dim_type="text_proj",
                                encoder_hid_dim=saved.get("encoder_hid_dim", text_proj.in_features))
    else:
        unet.encoder_hid_proj = None
        if saved:
            unet.register_to_config(encoder_hid_dim_type=saved.get("encoder_hid_dim_type"),
                                    encoder_hid_dim=saved.get("encoder_hid_dim"))
        elif unet.config.get("encoder_hid_dim_type") == "ip_image_proj":
            unet.register_to_config(encoder_hid_dim_type=None, encoder_hid_dim=None)


def ip_adapter_processors(unet: nn.Module) -> List[Tuple[str, Any]]:
    return [(n, m.processor) for n, m in _ordered_attention_layers(unet) if is_ip_adapter_processor(m.processor)]


def _block_scales(unet: nn.Module, config: Dict[str, Any]) -> Dict[str, float]:
    """``{"down": {"block_2": [0.0, 1.0]}, "mid": 1.0, "up": {...}}`` -> ``{"down_blocks.2.attentions.1": 1.0, ...}``
    (attention blocks not named get 0.0)."""
    unknown = sorted(set(config) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale dict keys must be 'down', 'mid' or 'up', got {unknown}")
    out: Dict[str, float] = {}
    for part in ("down", "up"):
        blocks = getattr(unet, f"{part}_blocks")
        with_attn = {i: len(b.attentions) for i, b in enumerate(blocks) if getattr(b, "attentions", None)}
        value = config.get(part, 0.0)
        if not isinstance(value, dict):
            value = {f"block_{i}": value for i in with_attn}
        for key in value:
            match = re.fullmatch(r"block_(\d+)", str(key))
            if match is None or int(match.group(1)) not in with_attn:
                raise ValueError(
                    f"IP-Adapter scale: {part!r} has no attention block {key!r}; blocks with attention: "
                    f"{[f'block_{i}' for i in with_attn]}"
                )
        for i, count in with_attn.items():
            scales = value.get(f"block_{i}", 0.0)
            if not isinstance(scales, (list, tuple)):
                scales = [scales] * count
            if len(scales) != count:
                raise ValueError(
                    f"IP-Adapter scale: {part} block_{i} has {count} attention layers but {len(scales)} scales "
                    "were given"
                )
            for j, s in enumerate(scales):
                out[f"{part}_blocks.{i}.attentions.{j}."] = float(s)
    mid = config.get("mid", 0.0)
    if isinstance(mid, (list, tuple)):
        mid = mid[0] if len(mid) == 1 else mid
    if not isinstance(mid, (int, float)) or isinstance(mid, bool):
        raise ValueError(f"IP-Adapter scale: 'mid' must be a number, got {mid!r}")
    out["mid_block."] = float(mid)
    return out


def set_ip_adapter_scale_on_unet(unet: nn.Module, scale: Any) -> None:
    procs = ip_adapter_processors(unet)
    if not procs:
        raise ValueError("No IP-Adapter is loaded in the UNet; call `load_ip_adapter(...)` first.")
    configs = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    expanded = []
    for cfg in configs:
        if isinstance(cfg, dict):
            expanded.append(_block_scales(unet, cfg))
        elif isinstance(cfg, (int, float)) and not isinstance(cfg, bool):
            expanded.append(float(cfg))
        else:
            raise TypeError(f"`scale` must be a float, a block dict or a list of them (one per adapter), got {cfg!r}")
    count = len(procs[0][1].scale)
    if len(expanded) == 1:
        expanded = expanded * count
    if len(expanded) != count:
        raise ValueError(f"Cannot assign {len(expanded)} scale_configs to {count} IP-Adapter.")
    for name, proc in procs:
        for i, cfg in enumerate(expanded):
            if isinstance(cfg, dict):
                proc.scale[i] = next((s for prefix, s in cfg.items() if name.startswith(prefix)), 0.0)
            else:
                proc.scale[i] = cfg


# --------------------------------------------------------------------------------------------------------------
# image embeddings
# --------------------------------------------------------------------------------------------------------------
def encode_image(components: Any, image: Any, device, num_images_per_prompt: int,
                 output_hidden_states: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(embeds, negative_embeds)`` of ``image``: the projected image embedding (negative: zeros), or with
    ``output_hidden_states`` the encoder's penultimate hidden states (negative: those of an all-zero image)."""
    encoder = getattr(components, "image_encoder", None)
    if encoder is None:
        raise ValueError(
            "`ip_adapter_image` needs the `image_encoder` component, which is None: load it (e.g. through "
            "`load_ip_adapter(..., image_encoder_folder=...)`) or pass `ip_adapter_image_embeds`."
        )
    dtype = next(encoder.parameters()).dtype
    if not isinstance(image, torch.Tensor):
        extractor = getattr(components, "feature_extractor", None)
        if extractor is None:
            raise ValueError(
                "`ip_adapter_image` given as images needs the `feature_extractor` component, which is None."
            )
        image = extractor(image, return_tensors="pt").pixel_values
    image = image.to(device=device, dtype=dtype)
    if output_hidden_states:
        pos = encoder(image, output_hidden_states=True).hidden_states[-2]
        neg = encoder(torch.zeros_like(image), output_hidden_states=True).hidden_states[-2]
        return pos.repeat_interleave(num_images_per_prompt, dim=0), neg.repeat_interleave(num_images_per_prompt, dim=0)
    pos = encoder(image).image_embeds.repeat_interleave(num_images_per_prompt, dim=0)
    return pos, torch.zeros_like(pos)


def _projection_layers(unet: Any) -> List[nn.Module]:
    proj = getattr(unet, "encoder_hid_proj", None) if unet is not None else None
    layers = getattr(proj, "image_projection_layers", None)
    if layers is None:
        raise ValueError(
            "IP-Adapter inputs were given but no IP-Adapter is loaded in the UNet; call `load_ip_adapter(...)` first."
        )
    return list(layers)


def check_ip_adapter_inputs(ip_adapter_image: Any, ip_adapter_image_embeds: Any) -> None:
    """The argument errors of the classic pipelines' ``check_inputs``."""
    if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
        raise ValueError(
            "Provide either `ip_adapter_image` or `ip_adapter_image_embeds`. Cannot leave both `ip_adapter_image`"
            " and `ip_adapter_image_embeds` defined."
        )
    if ip_adapter_image_embeds is None:
        return
    if not isinstance(ip_adapter_image_embeds, list):
        raise ValueError(
            f"`ip_adapter_image_embeds` has to be of type `list` but is {type(ip_adapter_image_embeds)}"
        )
    if not ip_adapter_image_embeds:
        raise ValueError("`ip_adapter_image_embeds` is an empty list; pass one tensor per IP-Adapter.")
    for i, embeds in enumerate(ip_adapter_image_embeds):
        if not isinstance(embeds, torch.Tensor):
            raise ValueError(
                f"`ip_adapter_image_embeds[{i}]` has to be a tensor but is {type(embeds)}"
            )
        if embeds.ndim not in (3, 4):
            raise ValueError(
                f"`ip_adapter_image_embeds` has to be a list of 3D or 4D tensors but is {embeds.ndim}D"
                f" (entry {i}, shape {tuple(embeds.shape)})"
            )


def split_ip_adapter_image_embeds(
    components: Any,
    ip_adapter_image: Any,
    ip_adapter_image_embeds: Optional[List[torch.Tensor]],
    device,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
    """Per adapter ``(positive, negative)`` embeddings, each repeated ``num_images_per_prompt`` times
    (``negative`` is None without guidance). Precomputed embeds hold the negative half first when guiding."""
    layers = _projection_layers(getattr(components, "unet", None))
    positives: List[torch.Tensor] = []
    negatives: List[torch.Tensor] = []
    if ip_adapter_image_embeds is None:
        from ..models.ip_adapter_projection import ImageProjection

        images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
        if len(images) != len(layers):
            raise ValueError(
                f"`ip_adapter_image` must have same length as the number of IP Adapters. Got {len(images)} images "
                f"and {len(layers)} IP Adapters."
            )
        for image, layer in zip(images, layers):
            pos, neg = encode_image(components, image, device, 1, not isinstance(layer, ImageProjection))
            positives.append(pos[None])
            negatives.append(neg[None])
    else:
        check_ip_adapter_inputs(None, ip_adapter_image_embeds)
        if len(ip_adapter_image_embeds) != len(layers):
            raise ValueError(
                f"`ip_adapter_image_embeds` must have same length as the number of IP Adapters. Got "
                f"{len(ip_adapter_image_embeds)} tensors and {len(layers)} IP Adapters."
            )
        for embeds in ip_adapter_image_embeds:
            if do_classifier_free_guidance:
                if embeds.shape[0] % 2:
                    raise ValueError(
                        "`ip_adapter_image_embeds` must hold the negative and the positive embeddings stacked on the "
                        f"first axis when classifier-free guidance is on; got an odd batch of {embeds.shape[0]}."
                    )
                neg, pos = embeds.chunk(2)
                negatives.append(neg)
            else:
                pos = embeds
            positives.append(pos)

    def repeat(t: torch.Tensor) -> torch.Tensor:
        t = t.repeat((num_images_per_prompt,) + (1,) * (t.ndim - 1)) if num_images_per_prompt > 1 else t
        return t.to(device=device)

    pos_out = [repeat(p) for p in positives]
    neg_out = [repeat(n) for n in negatives] if do_classifier_free_guidance else None
    return pos_out, neg_out


def prepare_ip_adapter_image_embeds(
    components: Any,
    ip_adapter_image: Any,
    ip_adapter_image_embeds: Optional[List[torch.Tensor]],
    device,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
) -> List[torch.Tensor]:
    """One tensor per adapter, ``[negative, positive]`` stacked on the first axis when guiding (diffusers layout)."""
    pos, neg = split_ip_adapter_image_embeds(components, ip_adapter_image, ip_adapter_image_embeds, device,
                                            num_images_per_prompt, do_classifier_free_guidance)
    if neg is None:
        return pos
    return [torch.cat([n, p], dim=0) for n, p in zip(neg, pos)]


# --------------------------------------------------------------------------------------------------------------
# pipeline mixins
# --------------------------------------------------------------------------------------------------------------
def _as_lists(source, subfolder, weight_name):
    weight_names = weight_name if isinstance(weight_name, list) else [weight_name]
    sources = source if isinstance(source, list) else [source]
    if len(sources) == 1:
        sources = sources * len(weight_names)
    subfolders = subfolder if isinstance(subfolder, list) else [subfolder]
    if len(subfolders) == 1:
        subfolders = subfolders * len(weight_names)
    if len(weight_names) != len(sources):
        raise ValueError("`weight_name` and `pretrained_model_name_or_path_or_dict` must have the same length.")
    if len(weight_names) != len(subfolders):
        raise ValueError("`weight_name` and `subfolder` must have the same length.")
    return sources, subfolders, weight_names


def _split_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    hub = {k: kwargs.pop(k) for k in list(kwargs) if k in _HUB_KWARGS}
    for k in _IGNORED_KWARGS:
        kwargs.pop(k, None)
    if kwargs:
        raise TypeError(f"load_ip_adapter() got unexpected keyword argument(s) {sorted(kwargs)}")
    return {k: v for k, v in hub.items() if v is not None}


def load_image_encoder(source: str, subfolder: Optional[str], image_encoder_folder: str, dtype, device,
                       hub_kwargs: Dict[str, Any]):
    """transformers' ``CLIPVisionModelWithProjection`` from ``<subfolder>/<image_encoder_folder>`` (or from
    ``image_encoder_folder`` itself when it holds a ``/``)."""
    from transformers import CLIPVisionModelWithProjection

    from ..hub import resolve_folder

    if "/" in image_encoder_folder:
        folder_name = image_encoder_folder.strip("/")
    else:
        folder_name = "/".join(p for p in ((subfolder or "").strip("/"), image_encoder_folder) if p)
    root = resolve_folder(source, allow_patterns=[f"{folder_name}/*"], **hub_kwargs)
    folder = os.path.join(root, folder_name)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise EnvironmentError(
            f"No image encoder (config.json) found in {folder_name!r} of {source!r}; pass `image_encoder_folder` "
            "(relative to `subfolder`, or a path with '/') or `image_encoder_folder=None`."
        )
    model = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype)
    from ..modular_pipelines.modular_pipeline_utils import set_load_id

    set_load_id(model, "|".join([str(source), folder_name, "null", "null"]))
    return model.to(device).eval()


def _default_feature_extractor(image_encoder):
    from transformers import CLIPImageProcessor

    size = image_encoder.config.image_size if image_encoder is not None else 224
    return CLIPImageProcessor(size=size, crop_size=size)


class IPAdapterMixin:
    """``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter`` for classic pipelines."""

    def _ip_unet(self):
        unet = getattr(self, "unet", None)
        if unet is None:
            raise ValueError(f"{type(self).__name__} has no `unet` to load an IP-Adapter into.")
        return unet

    def _register_ip_component(self, name: str, value: Any) -> None:
        self.register_modules(**{name: value})

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, Any], List[Any]],
        subfolder: Union[str, List[str], None],
        weight_name: Union[str, List[str], None],
        image_encoder_folder: Optional[str] = "image_encoder",
        **kwargs: Any,
    ) -> None:
        """Load one IP-Adapter (or several, with lists) from a folder, a Hub repo id or a state dict.

        When the pipeline's ``image_encoder`` is None it is loaded from ``<subfolder>/<image_encoder_folder>`` of
        the same repo (``image_encoder_folder=None``: not loaded; pass ``ip_adapter_image_embeds`` then), and a
        ``CLIPImageProcessor`` feature extractor is created when missing.
        """
        sources, subfolders, weight_names = _as_lists(pretrained_model_name_or_path_or_dict, subfolder, weight_name)
        hub_kwargs = _split_kwargs(dict(kwargs))
        unet = self._ip_unet()
        state_dicts = [read_ip_adapter_state_dict(src, wn, sf, **hub_kwargs)
                       for src, sf, wn in zip(sources, subfolders, weight_names)]
        self._maybe_load_image_encoder(sources[0], subfolders[0], image_encoder_folder, hub_kwargs, unet)
        load_ip_adapter_into_unet(unet, state_dicts)

    def _maybe_load_image_encoder(self, source, subfolder, image_encoder_folder, hub_kwargs, unet) -> None:
        if hasattr(self, "image_encoder") and getattr(self, "image_encoder", None) is None:
            if image_encoder_folder is None:
                logger.warning(
                    "image_encoder is not loaded since `image_encoder_folder=None` was passed: `ip_adapter_image` "
                    "cannot be used; pass precomputed `ip_adapter_image_embeds` instead."
                )
            elif isinstance(source, dict):
                raise ValueError(
                    "`image_encoder` cannot be loaded because `pretrained_model_name_or_path_or_dict` is a state "
                    "dict; register an image encoder first or pass `image_encoder_folder=None`."
                )
            else:
                param = next(unet.parameters())
                encoder = load_image_encoder(os.fspath(source), subfolder, image_encoder_folder, param.dtype,
                                             param.device, hub_kwargs)
                self._register_ip_component("image_encoder", encoder)
        if hasattr(self, "feature_extractor") and getattr(self, "feature_extractor", None) is None:
            self._register_ip_component("feature_extractor",
                                        _default_feature_extractor(getattr(self, "image_encoder", None)))

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """Scale of the image prompt: a float, a list (one per adapter), or block dicts such as
        ``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}`` (unnamed blocks get 0)."""
        set_ip_adapter_scale_on_unet(self._ip_unet(), scale)

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapters: the UNet gets its processors and ``encoder_hid_proj`` back, the image encoder
        is dropped, and the feature extractor too unless a safety checker (which uses it) is part of the pipeline."""
        if getattr(self, "image_encoder", None) is not None:
            self._register_ip_component("image_encoder", None)
        if not hasattr(self, "safety_checker") and getattr(self, "feature_extractor", None) is not None:
            self._register_ip_component("feature_extractor", None)
        unet = getattr(self, "unet", None)
        if unet is not None:
            unload_ip_adapter_from_unet(unet)

    def encode_image(self, image, device, num_images_per_prompt, output_hidden_states=None):
        return encode_image(self, image, device, num_images_per_prompt, output_hidden_states)

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device,
                                        num_images_per_prompt, do_classifier_free_guidance):
        return prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device,
                                               num_images_per_prompt, do_classifier_free_guidance)


class ModularIPAdapterMixin(IPAdapterMixin):
    """IP-Adapter loading for modular pipelines: the weights go into ``unet``; the image encoder is a regular
    component (loaded with the others), or loaded here when ``image_encoder_folder`` is given."""

    def _register_ip_component(self, name: str, value: Any) -> None:
        if value is None:
            object.__setattr__(self, name, None)
            refresh = getattr(self, "_refresh_config_entry", None)
            if refresh is not None:
                refresh(name)
            return
        self.update_components(**{name: value})

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict,
        subfolder,
        weight_name,
        image_encoder_folder: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        """Load IP-Adapter weights into the pipeline's ``unet`` (see ``IPAdapterMixin.load_ip_adapter``);
        ``image_encoder_folder`` (default None) also loads the image encoder when the pipeline has none."""
        sources, subfolders, weight_names = _as_lists(pretrained_model_name_or_path_or_dict, subfolder, weight_name)
        hub_kwargs = _split_kwargs(dict(kwargs))
        unet = self._ip_unet()
        state_dicts = [read_ip_adapter_state_dict(src, wn, sf, **hub_kwargs)
                       for src, sf, wn in zip(sources, subfolders, weight_names)]
        if image_encoder_folder is not None:
            self._maybe_load_image_encoder(sources[0], subfolders[0], image_encoder_folder, hub_kwargs, unet)
        load_ip_adapter_into_unet(unet, state_dicts)

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapters from ``unet`` (the image encoder component stays)."""
        unet = getattr(self, "unet", None)
        if unet is not None:
            unload_ip_adapter_from_unet(unet)


__all__ = [
    "IPAdapterMixin",
    "ModularIPAdapterMixin",
    "check_ip_adapter_inputs",
    "encode_image",
    "load_ip_adapter_into_unet",
    "prepare_ip_adapter_image_embeds",
    "read_ip_adapter_state_dict",
    "split_ip_adapter_image_embeds",
    "unload_ip_adapter_from_unet",
]
