"""``AutoModel``: load any model component by reading which class its folder declares.

Resolution order for ``AutoModel.from_pretrained(path, subfolder=...)``:

1. ``model_index.json`` at the root names ``[library, ClassName]`` for ``subfolder``;
2. otherwise ``<subfolder>/config.json``: ``_class_name`` (diffblocks/diffusers models), ``architectures[0]``
   or ``model_type`` (transformers models).

diffusers-library classes are taken from diffblocks' own model table; transformers classes from transformers, except
the CLIP text encoders, which are diffblocks' own (``models/clip.py: own_transformers_class``).
Loaded models carry ``_diffblocks_load_id = "path|subfolder|variant|revision"`` ("null" for None), which the
ComponentsManager uses to recognise the same component loaded twice.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

from ..configuration import ConfigMixin
from ..hub import _select_weight_names, resolve_file, resolve_folder

logger = logging.getLogger(__name__)

_HUB_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
# arguments that only diffusers-style loading understands
_DIFFUSERS_ONLY = ("low_cpu_mem_usage", "_from_pipeline", "_from_auto", "disable_mmap", "offload_state_dict")
_TRANSFORMERS_AUX = ("generation_config.json",)
# diffusers pipeline sub-module names that hold model classes diffblocks provides at top level
_DIFFUSERS_LIBRARIES = ("diffusers", "diffblocks", "stable_diffusion", "stable_diffusion_xl", "controlnet",
                        "stable_diffusion_safe")


def make_load_id(path: Any, subfolder: Optional[str], variant: Optional[str], revision: Optional[str]) -> str:
    """``"path|subfolder|variant|revision"`` with ``"null"`` for None (how components are recognised)."""
    parts = [os.fspath(path) if path is not None else None, subfolder, variant, revision]
    return "|".join("null" if p is None else str(p) for p in parts)


def _diffblocks_model_class(name: str):
    import diffblocks
    from diffblocks import models

    for namespace in (models, diffblocks):
        try:
            return getattr(namespace, name)
        except (AttributeError, ImportError):
            continue
    return None


def _transformers_class(name: str):
    import transformers

    try:
        return getattr(transformers, name)
    except (AttributeError, ImportError):
        return None


def _is_own(model_cls: Any) -> bool:
    from .clip import is_own_clip_class

    return is_own_clip_class(model_cls)


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EnvironmentError(f"It looks like the config file at '{path}' is not a valid JSON file.") from None
    if not isinstance(data, dict):
        raise EnvironmentError(f"It looks like the config file at '{path}' is not a valid JSON file.")
    return data


def _class_from_index(path: str, subfolder: Optional[str], hub: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    if not subfolder:
        return None
    try:
        index_file = resolve_file(path, "model_index.json", **hub)
    except (EnvironmentError, ValueError):
        return None
    entry = _read_json(index_file).get(subfolder)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
        return entry[0], entry[1]
    return None


def _class_from_config(config: Dict[str, Any], where: str) -> Tuple[str, str]:
    name = config.get("_class_name")
    if isinstance(name, str):
        return "diffusers", name
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return "transformers", archs[0]
    if isinstance(config.get("model_type"), str):
        return "transformers", "AutoModel"
    raise ValueError(f"Couldn't find model associated with the config file at {where}.")


def _lookup(library: str, name: str, where: str):
    if library == "transformers":
        from .clip import own_transformers_class

        klass = own_transformers_class(name) or _transformers_class(name)
        if klass is None:
            raise ValueError(
                f"The config at {where} names the transformers class '{name}', which transformers "
                "does not provide (check the class name or the installed transformers version)."
            )
        return klass
    klass = _diffblocks_model_class(name)
    if klass is None:
        from . import _EXPORTS

        raise ValueError(
            f"The config at {where} names the class '{name}' (library '{library}'), which diffblocks does not "
            f"provide. Model classes diffblocks can load: {sorted(_EXPORTS)}."
        )
    return klass


class AutoModel(ConfigMixin):
    """Pick and load the right model class for a folder; never instantiated itself."""

    config_name = "config.json"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise EnvironmentError(
            f"{type(self).__name__} is designed to be instantiated using the "
            f"`{type(self).__name__}.from_pretrained(pretrained_model_name_or_path)`, "
            f"`{type(self).__name__}.from_config(config)`, or `{type(self).__name__}.from_pipe(pipeline)` methods."
        )

    @classmethod
    def _resolve(cls, path: str, subfolder: Optional[str], hub: Dict[str, Any]):
        found = _class_from_index(path, subfolder, hub)
        where = os.path.join(path, subfolder or "", "model_index.json") if found else None
        if found is None:
            config_file = resolve_file(path, cls.config_name, subfolder=subfolder, **hub)
            found = _class_from_config(_read_json(config_file), config_file)
            where = config_file
        library, name = found
        return library, name, _lookup(library, name, where)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: Optional[str] = None, **kwargs: Any):
        """Load the model declared by the folder; keyword arguments go to that class's ``from_pretrained``."""
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError(
                "pretrained_model_name_or_path must be a local folder or a Hub repo id (str), got "
                f"{type(pretrained_model_name_or_path).__name__}"
            )
        if subfolder is not None and not isinstance(subfolder, str):
            raise TypeError(f"subfolder must be a string or None, got {type(subfolder).__name__}")
        path = os.fspath(pretrained_model_name_or_path)
        hub = {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}
        variant = kwargs.get("variant")
        revision = kwargs.get("revision")
        source = path
        if not os.path.isdir(path):
            # one metadata call: fetch model_index.json, the component's config and its selected weights, then
            # load everything from the local snapshot
            source = _fetch_component(path, subfolder, variant, kwargs.get("use_safetensors"), hub)
            hub = {}
            kwargs = {k: v for k, v in kwargs.items() if k not in _HUB_KEYS}
        library, name, model_cls = cls._resolve(source, subfolder, hub)

        if library == "transformers":
            model = _load_transformers(model_cls, source, subfolder, dict(kwargs), hub)
        else:
            model = model_cls.from_pretrained(source, subfolder=subfolder, **kwargs)
        if source != path:
            _record_name_or_path(model, path)
        load_id = make_load_id(path, subfolder, variant, revision)
        for attr in ("_diffblocks_load_id", "_diffusers_load_id"):  # diffusers scripts read the second spelling
            try:
                setattr(model, attr, load_id)
            except (AttributeError, TypeError):  # pragma: no cover - objects refusing new attributes
                break
        return model

    @classmethod
    def from_config(cls, config, **kwargs: Any):
        """Build (random weights) the model a config dict or folder declares."""
        if isinstance(config, (str, os.PathLike)):
            path = os.fspath(config)
            subfolder = kwargs.pop("subfolder", None)
            hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
            library, name, model_cls = cls._resolve(path, subfolder, hub)
            if library == "transformers" and _is_own(model_cls):
                from .clip_text import CLIPTextConfig

                return model_cls(CLIPTextConfig.from_pretrained(path, subfolder=subfolder, **hub), **kwargs)
            if library == "transformers":
                import transformers

                cfg = transformers.AutoConfig.from_pretrained(path, subfolder=subfolder or "", **hub)
                return model_cls._from_config(cfg, **kwargs) if name != "AutoModel" else \
                    transformers.AutoModel.from_config(cfg, **kwargs)
            config = model_cls.load_config(path, subfolder=subfolder, **hub)
            return model_cls.from_config(config, **kwargs)
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict or a path, got {type(config).__name__}")
        library, name = _class_from_config(config, "<config dict>")
        model_cls = _lookup(library, name, "<config dict>")
        if library == "transformers" and _is_own(model_cls):
            return model_cls(dict(config), **kwargs)
        if library == "transformers":
            import transformers

            cfg = transformers.AutoConfig.for_model(**config)
            return model_cls._from_config(cfg, **kwargs)
        return model_cls.from_config(config, **kwargs)


def _fetch_component(path: str, subfolder: Optional[str], variant: Optional[str],
                     use_safetensors: Optional[bool], hub: Dict[str, Any]) -> str:
    """Local snapshot root holding ``model_index.json`` (if the repo has one) and one component's files."""
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""

    def select(files):
        names = {f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]}
        where = prefix.rstrip("/") or "."
        picked = ["model_index.json"] if "model_index.json" in files else []
        try:
            chosen = _select_weight_names(names, variant=variant, use_safetensors=use_safetensors, where=where)
        except (EnvironmentError, ValueError):
            try:
                chosen = _select_weight_names(names, variant=variant, use_safetensors=use_safetensors, where=where,
                                              weights_names=("model.safetensors", "pytorch_model.bin"))
            except (EnvironmentError, ValueError):
                # no loadable weights selected: fetch the folder's small files only (configs, tokenizer or
                # scheduler files); a model class then reports the precise problem from the local folder
                return picked + [prefix + n for n in sorted(names) if not _is_weight_like(n)]
        picked += [prefix + n for n in ["config.json", *chosen] + [a for a in _TRANSFORMERS_AUX if a in names]]
        return picked

    return resolve_folder(path, select=select, **hub)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".onnx", ".pb", ".ckpt", ".pt", ".pth", ".h5", ".gguf")


def _is_weight_like(name: str) -> bool:
    return name.endswith(_WEIGHT_SUFFIXES) or (".index" in name and name.endswith(".json"))


def _record_name_or_path(model: Any, name: str) -> None:
    """Report the repo id (not the cache snapshot path) as the model's origin, like diffusers does."""
    if hasattr(model, "register_to_config") and hasattr(model, "_internal_dict"):
        model.register_to_config(_name_or_path=name)
        return
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_name_or_path"):
        try:
            config._name_or_path = name
            model.name_or_path = name
        except (AttributeError, TypeError):  # pragma: no cover
            pass


def _load_transformers(model_cls, path: str, subfolder: Optional[str], kwargs: Dict[str, Any],
                       hub: Dict[str, Any]):
    """transformers' ``from_pretrained`` with diffusers-style arguments translated for transformers 5."""
    for key in _DIFFUSERS_ONLY:
        kwargs.pop(key, None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    if torch_dtype is not None and kwargs.get("dtype") is None:
        kwargs["dtype"] = torch_dtype
    if kwargs.get("device_map") is None:
        kwargs.pop("device_map", None)
    variant = kwargs.get("variant")
    use_safetensors = kwargs.get("use_safetensors")
    local = path
    if not os.path.isdir(path):
        # fetch only this component's config and selected weights (one metadata call when cached)
        prefix = f"{subfolder.strip('/')}/" if subfolder else ""

        def select(files):
            names = {f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]}
            chosen = _select_weight_names(names, variant=variant, use_safetensors=use_safetensors,
                                          where=prefix or ".",
                                          weights_names=("model.safetensors", "pytorch_model.bin"))
            aux = [n for n in _TRANSFORMERS_AUX if n in names]
            return [prefix + n for n in ["config.json", *chosen, *aux]]

        local = resolve_folder(path, select=select, **hub)
        for key in _HUB_KEYS:
            kwargs.pop(key, None)
    from .clip import load_clip_text_model, supports_fast_load

    if supports_fast_load(model_cls) and set(kwargs) <= {"dtype", "variant", "use_safetensors"}:
        # CLIP text encoders: the same transformers object, built without transformers' generic loader
        folder = os.path.join(local, subfolder) if subfolder else local
        model = load_clip_text_model(model_cls, folder, name_or_path=local, **kwargs)
        if model is not None:
            return model
    if subfolder:
        kwargs["subfolder"] = subfolder
    return model_cls.from_pretrained(local, **kwargs)
