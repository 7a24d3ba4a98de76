"""Loading of CLIP text encoders and tokenizers: diffblocks' own classes for folders that name transformers' CLIP.

Folders (``model_index.json``, ``config.json`` ``architectures``) name ``["transformers", "CLIPTextModel"]``,
``"CLIPTextModelWithProjection"``, ``"CLIPTokenizer"`` or ``"CLIPTokenizerFast"``; :func:`own_transformers_class`
maps those names to diffblocks' classes (``models/clip_text.py``, ``models/clip_tokenizer.py``), which read and
write the same files without importing transformers. Every other transformers name stays transformers'.

:func:`load_clip_text_model` loads either kind of CLIP text encoder class from a local folder: diffblocks' classes
through their own ``from_pretrained``, transformers' classes through the fast path below.

Fast path for transformers' classes (used when a caller asks for transformers' class explicitly):

``transformers.PreTrainedModel.from_pretrained`` spends most of its time on generic machinery (building its
checkpoint-conversion tables, loading reports) that a plain CLIP text encoder folder does not need. For the
common case -- a local folder holding ``config.json`` and one ``model[.variant].safetensors`` whose keys are the
model's own (or carry the old ``text_model.`` prefix) -- :func:`load_clip_text_model` builds the real
transformers class from its config on the meta device and assigns the tensors read by safetensors. The result
is the same transformers object (class, config, dtype, eval mode, buffers) that ``from_pretrained`` returns.
Anything else (sharded or ``.bin`` checkpoints, quantisation, device maps, unknown or missing keys, hub ids)
returns ``None`` and the caller uses transformers' own ``from_pretrained``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

#: transformers classes this loader builds itself (module, class name)
_FAST_CLASSES = {
    ("transformers.models.clip.modeling_clip", "CLIPTextModel"),
    ("transformers.models.clip.modeling_clip", "CLIPTextModelWithProjection"),
}
_OLD_PREFIX = "text_model."
#: transformers class names served by diffblocks' classes: name -> (module, class)
_OWN_CLASSES = {
    "CLIPTextModel": ("diffblocks.models.clip_text", "CLIPTextModel"),
    "CLIPTextModelWithProjection": ("diffblocks.models.clip_text", "CLIPTextModelWithProjection"),
    "CLIPTokenizer": ("diffblocks.models.clip_tokenizer", "CLIPTokenizer"),
    "CLIPTokenizerFast": ("diffblocks.models.clip_tokenizer", "CLIPTokenizer"),
}


def own_transformers_class(name: Optional[str]) -> Optional[type]:
    """diffblocks' class standing in for the transformers class ``name`` (CLIP text encoders, CLIP tokenizers),
    or None when transformers' own class is used."""
    target = _OWN_CLASSES.get(name) if isinstance(name, str) else None
    if target is None:
        return None
    import importlib

    return getattr(importlib.import_module(target[0]), target[1])


def is_own_clip_class(cls: Any) -> bool:
    """True for diffblocks' CLIP text encoder and tokenizer classes (and subclasses)."""
    return isinstance(cls, type) and any(
        getattr(base, "__module__", "") in ("diffblocks.models.clip_text", "diffblocks.models.clip_tokenizer")
        and getattr(base, "_library_name", None) == "transformers" for base in cls.__mro__
    )


def supports_fast_load(cls: type) -> bool:
    """True when :func:`load_clip_text_model` can load ``cls``: diffblocks' CLIP text encoders, or the
    transformers CLIP text encoders it builds itself."""
    if is_own_clip_class(cls) and issubclass(cls, torch.nn.Module):
        return True
    return (getattr(cls, "__module__", None), getattr(cls, "__name__", None)) in _FAST_CLASSES


def _weights_file(path: str, variant: Optional[str]) -> Optional[str]:
    name = "model.safetensors" if variant is None else f"model.{variant}.safetensors"
    candidate = os.path.join(path, name)
    if not os.path.isfile(candidate):
        return None
    # a sharded checkpoint next to it would make the choice ambiguous: leave it to transformers
    if os.path.exists(os.path.join(path, name.replace(".safetensors", ".safetensors.index.json"))):
        return None
    return candidate


def _match_keys(state_dict: dict, expected: set, is_prefixed_model: bool) -> Optional[dict]:
    """Map checkpoint keys onto the model's; ``None`` when they do not correspond one to one."""
    out = {}
    for key, tensor in state_dict.items():
        target = key
        if target not in expected and not is_prefixed_model and target.startswith(_OLD_PREFIX):
            target = target[len(_OLD_PREFIX):]
        if target not in expected:
            if target.endswith("position_ids"):  # old checkpoints persisted the non-persistent buffer
                continue
            return None
        if target in out:
            return None
        out[target] = tensor
    if set(out) != expected:
        return None
    return out


def load_clip_text_model(cls: type, path: str, *, dtype: Optional[torch.dtype] = torch.float32,
                         variant: Optional[str] = None, use_safetensors: Optional[bool] = None,
                         name_or_path: Optional[str] = None, **unsupported: Any) -> Optional[torch.nn.Module]:
    """Load ``cls`` (``CLIPTextModel`` or ``CLIPTextModelWithProjection``) from the local folder ``path``.

    Returns the loaded model in eval mode, or ``None`` when the folder is not the simple case this loader handles
    (the caller then uses ``cls.from_pretrained``). Any keyword besides ``dtype``/``variant``/``use_safetensors``
    also means ``None``. ``dtype=None`` keeps the checkpoint's dtype (only when ``config.json`` records that same
    dtype). ``name_or_path`` (default ``path``) is recorded as the config's ``_name_or_path``.
    """
    if is_own_clip_class(cls) and not unsupported:
        model = cls.from_pretrained(path, torch_dtype="auto" if dtype is None else dtype, variant=variant,
                                    use_safetensors=use_safetensors)
        model.config.name_or_path = model.name_or_path = path if name_or_path is None else name_or_path
        return model
    if unsupported or use_safetensors is False or not supports_fast_load(cls):
        return None
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        return None
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        return None
    weights = _weights_file(path, variant)
    if weights is None:
        return None
    with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
        raw = json.load(handle)
    if not isinstance(raw, dict) or "quantization_config" in raw or raw.get("model_type") != "clip_text_model":
        return None
    architectures = raw.get("architectures")
    if architectures and cls.__name__ not in architectures and architectures != ["CLIPTextModel"] \
            and architectures != ["CLIPTextModelWithProjection"]:
        return None

    from safetensors.torch import load_file

    # tensors in memory (not views of a file mapping: transformers' save_pretrained rewrites the file in place, which
    # must not pull the weights from under a model loaded from the same folder); cast one tensor at a time
    loaded = load_file(weights)
    if dtype is None:
        stored = {t.dtype for t in loaded.values() if t.is_floating_point()}
        recorded = raw.get("dtype", raw.get("torch_dtype"))
        if len(stored) != 1 or not isinstance(recorded, str) or getattr(torch, recorded, None) not in stored:
            return None
        dtype = stored.pop()
    for key, tensor in loaded.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            loaded[key] = tensor.to(dtype)
    config = cls.config_class.from_pretrained(path)
    config.name_or_path = path if name_or_path is None else name_or_path
    with torch.device("meta"):
        model = cls(config)
    params = dict(model.named_parameters())
    persistent = set(model.state_dict().keys())
    if set(params) != persistent:  # persistent buffers would need loading rules this path does not know
        return None
    prefixed = cls.__name__ == "CLIPTextModelWithProjection"
    state = _match_keys(loaded, persistent, prefixed)
    if state is None:
        logger.debug("checkpoint keys of %s do not match %s; using transformers' loader", weights, cls.__name__)
        return None
    del loaded
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(params[key].shape):
            return None
    model.load_state_dict(state, strict=True, assign=True)
    for module in model.modules():
        buffer = module._buffers.get("position_ids")
        if buffer is not None and buffer.is_meta:
            module._buffers["position_ids"] = torch.arange(buffer.shape[-1]).expand((1, -1))
    if any(t.is_meta for t in model.parameters()) or any(b.is_meta for b in model.buffers()):
        return None
    # the bookkeeping transformers' from_pretrained leaves on a loaded model (weights count as initialised, so a
    # later init_weights()/resize does not re-initialise them; no kernel hub; no weight conversions applied)
    for module in model.modules():
        module._is_hf_initialized = True
    for param in model.parameters():
        param._is_hf_initialized = True
    model._weight_conversions = []
    model._use_kernels = False
    model.config.dtype = dtype
    model.eval()
    logger.debug("Loaded %s from %s without transformers' from_pretrained", cls.__name__, path)
    return model
