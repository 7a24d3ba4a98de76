"""``ModularPipeline``: runs a block graph with a set of components.

A pipeline holds a private copy of its blocks, one :class:`ComponentSpec` per expected component and the
configuration values the blocks declare. Components described ``from_config`` (schedulers created from a dict,
guiders, image processors) are built at construction; ``from_pretrained`` ones stay ``None`` until
:meth:`ModularPipeline.load_components` (nothing heavy is loaded by ``from_pretrained``/``init_pipeline``).

Calling the pipeline seeds a :class:`PipelineState` with the user's inputs (and the declared defaults of the
inputs not passed), runs the blocks, and returns the state, one value (``output="name"``) or a dict
(``output=[names]``).

How a model family plugs in
---------------------------
A family (e.g. SDXL) sets ``model_name = "stable-diffusion-xl"`` on its leaf blocks and defines a
``ModularPipeline`` subclass (properties such as ``vae_scale_factor``, ``default_sample_size``; class attribute
``default_blocks_name`` naming its default blocks class). It registers the subclass once, at import of its
package::

    from diffblocks.modular_pipelines.modular_pipeline import register_modular_pipeline
    register_modular_pipeline("stable-diffusion-xl", StableDiffusionXLModularPipeline)

``blocks.init_pipeline()`` then builds that subclass for blocks whose ``model_name`` matches, and
``ModularPipeline.from_pretrained()`` picks it for repos whose index names it (``_class_name``) or whose
``model_index.json`` names a classic pipeline of that family. ``register_modular_pipeline`` also accepts a
``"module.path:ClassName"`` string, resolved on first use; SD and SDXL are pre-registered that way.
"""
from __future__ import annotations

import copy
import difflib
import gc
import importlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import traceback
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

from .modular_pipeline_utils import (
    ComponentSpec,
    ConfigSpec,
    InputParam,
    InsertableDict,
    OutputParam,
    class_to_pair,
    get_load_id,
    resolve_class,
)
from .pipeline_blocks import (
    AutoPipelineBlocks,
    ConditionalPipelineBlocks,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    PipelineBlock,
    SequentialPipelineBlocks,
    _resolve_config_folder,
)
from .pipeline_state import BlockState, PipelineState

logger = logging.getLogger(__name__)

__all__ = [
    "ModularPipeline",
    "ModularPipelineBlocks",
    "PipelineBlock",
    "SequentialPipelineBlocks",
    "LoopSequentialPipelineBlocks",
    "ConditionalPipelineBlocks",
    "AutoPipelineBlocks",
    "PipelineState",
    "BlockState",
    "register_modular_pipeline",
    "get_modular_pipeline_class",
    "MODULAR_PIPELINE_MAPPING",
]


# ---------------------------------------------------------------------------------------------------------------------
# family registry
# ---------------------------------------------------------------------------------------------------------------------

_PIPELINE_REGISTRY: "OrderedDict[str, Union[type, str]]" = OrderedDict(
    [
        ("stable-diffusion-xl", "diffblocks.modular_pipelines.stable_diffusion_xl:StableDiffusionXLModularPipeline"),
        ("stable-diffusion", "diffblocks.modular_pipelines.stable_diffusion:StableDiffusionModularPipeline"),
    ]
)


def register_modular_pipeline(model_name: str, pipeline_cls: Union[type, str]) -> None:
    """Make ``init_pipeline``/``from_pretrained`` build ``pipeline_cls`` for blocks whose ``model_name`` is
    ``model_name``. ``pipeline_cls`` is a ``ModularPipeline`` subclass or a ``"module:Class"`` string."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"`model_name` must be a non-empty str, got {model_name!r}")
    if isinstance(pipeline_cls, str):
        if ":" not in pipeline_cls:
            raise ValueError(f"`pipeline_cls` string must look like 'package.module:ClassName', got {pipeline_cls!r}")
    elif not (isinstance(pipeline_cls, type) and issubclass(pipeline_cls, ModularPipeline)):
        raise TypeError(f"`pipeline_cls` must be a ModularPipeline subclass or a 'module:Class' string, got {pipeline_cls!r}")
    _PIPELINE_REGISTRY[model_name] = pipeline_cls


def get_modular_pipeline_class(model_name: Optional[str]) -> Optional[type]:
    """The pipeline class registered for ``model_name`` (None when unknown or its module cannot be imported)."""
    if model_name is None:
        return None
    entry = _PIPELINE_REGISTRY.get(model_name)
    if isinstance(entry, str):
        module_name, class_name = entry.split(":")
        try:
            entry = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            logger.debug(f"Pipeline class {class_name} for {model_name!r} is not available ({e}); using ModularPipeline")
            return None
        _PIPELINE_REGISTRY[model_name] = entry
    return entry


class _MappingCompat(OrderedDict):
    """diffusers' ``MODULAR_PIPELINE_MAPPING`` shape: model_name -> fn(config_dict=None) -> class name."""

    def __missing__(self, key: str) -> Callable[..., str]:
        raise KeyError(key)

    def __getitem__(self, key: str) -> Callable[..., str]:
        entry = _PIPELINE_REGISTRY[key]
        name = entry.split(":")[1] if isinstance(entry, str) else entry.__name__
        return lambda config_dict=None: name

    def __contains__(self, key: object) -> bool:
        return key in _PIPELINE_REGISTRY

    def __iter__(self):
        return iter(list(_PIPELINE_REGISTRY))

    def __len__(self) -> int:
        return len(_PIPELINE_REGISTRY)

    def keys(self):  # type: ignore[override]
        return list(_PIPELINE_REGISTRY)


MODULAR_PIPELINE_MAPPING = _MappingCompat()


def _family_of_standard_pipeline(class_name: Optional[str]) -> Optional[str]:
    """Model family of a classic pipeline class name from ``model_index.json``."""
    if not class_name:
        return None
    if class_name.startswith("StableDiffusionXL"):
        return "stable-diffusion-xl"
    if class_name.startswith("StableDiffusion"):
        return "stable-diffusion"
    return None


_CLASS_SEARCH_MODULES = (
    "diffblocks.modular_pipelines",
    "diffblocks.modular_pipelines.stable_diffusion_xl",
    "diffblocks.modular_pipelines.stable_diffusion",
    "diffblocks",
)


def _find_named_class(class_name: Optional[str]) -> Optional[type]:
    """A pipeline or blocks class by name: registered families first, then the package namespaces."""
    if not class_name:
        return None
    for model_name in list(_PIPELINE_REGISTRY):
        entry = _PIPELINE_REGISTRY[model_name]
        entry_name = entry.split(":")[1] if isinstance(entry, str) else entry.__name__
        if entry_name == class_name:
            found = get_modular_pipeline_class(model_name)
            if found is not None:
                return found
    for module_name in _CLASS_SEARCH_MODULES:
        try:
            module = importlib.import_module(module_name)
            value = getattr(module, class_name)
        except Exception:
            continue
        if isinstance(value, type):
            return value
    return None


# ---------------------------------------------------------------------------------------------------------------------
# config files
# ---------------------------------------------------------------------------------------------------------------------

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")


_LAST_LOOKUP_ERRORS: Dict[str, str] = {}


def _read_json_from(path: str, filename: str, hub_kwargs: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], str]]:
    """``(dict, folder)`` of ``filename`` at a local folder or Hub repo, or None when absent."""
    try:
        folder = _resolve_config_folder(path, filename, dict(hub_kwargs))
    except Exception as e:  # not found locally / on the Hub / offline
        logger.debug(f"No {filename} for {path!r}: {e}")
        _LAST_LOOKUP_ERRORS[filename] = f"{type(e).__name__}: {e}"
        return None
    with open(os.path.join(folder, filename), encoding="utf-8") as f:
        return json.load(f), folder


class _FrozenConfig(OrderedDict):
    """Read-only mapping with attribute access (used until ``diffblocks.configuration`` provides FrozenDict)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["_frozen"] = True

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no entry {name!r}") from None

    def __setitem__(self, key: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise TypeError("The pipeline config is read-only; use `update_components(name=value)`.")
        super().__setitem__(key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("The pipeline config is read-only; use `update_components(name=value)`.")


def _freeze(d: Dict[str, Any]) -> Any:
    try:
        from ..configuration import FrozenDict  # type: ignore[attr-defined]

        return FrozenDict(d)
    except Exception:
        return _FrozenConfig(d)


def _spec_to_dict(spec: ComponentSpec) -> Dict[str, Any]:
    return {
        "type_hint": list(class_to_pair(spec.type_hint)) if spec.type_hint is not None else [None, None],
        "pretrained_model_name_or_path": spec.pretrained_model_name_or_path,
        "subfolder": spec.subfolder,
        "variant": spec.variant,
        "revision": spec.revision,
    }


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


# ---------------------------------------------------------------------------------------------------------------------
# ModularPipeline
# ---------------------------------------------------------------------------------------------------------------------


class ModularPipeline:
    """Runs ``blocks`` with components described by their :class:`ComponentSpec` (see module docstring)."""

    config_name = "modular_model_index.json"
    hf_device_map = None
    default_blocks_name: Optional[str] = None

    def __init__(
        self,
        blocks: Optional[ModularPipelineBlocks] = None,
        pretrained_model_name_or_path: Optional[Union[str, os.PathLike]] = None,
        components_manager: Any = None,
        collection: Optional[str] = None,
        workflow: Optional[str] = None,
        modular_config_dict: Optional[Dict[str, Any]] = None,
        config_dict: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        if blocks is not None and not isinstance(blocks, ModularPipelineBlocks):
            raise TypeError(f"`blocks` must be a ModularPipelineBlocks instance, got {type(blocks).__name__}")
        if collection is not None and not isinstance(collection, str):
            raise TypeError(f"`collection` must be a str or None, got {type(collection).__name__}")
        if pretrained_model_name_or_path is not None:
            if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
                raise TypeError(
                    "`pretrained_model_name_or_path` must be a repo id or a local folder path, got "
                    f"{type(pretrained_model_name_or_path).__name__}"
                )
            pretrained_model_name_or_path = os.fspath(pretrained_model_name_or_path)
        index_folder = kwargs.pop("_index_folder", None)
        if modular_config_dict is None and config_dict is None and pretrained_model_name_or_path is not None:
            hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
            modular_config_dict, config_dict, index_folder = self._load_pipeline_config(
                pretrained_model_name_or_path, hub_kwargs
            )

        if blocks is None:
            blocks = self._default_blocks(modular_config_dict)
        if workflow is not None:
            if blocks is None:
                raise ValueError(f"`workflow={workflow!r}` requires pipeline blocks, but none could be resolved.")
            blocks = blocks.get_workflow(workflow)
        if blocks is None:
            raise ValueError(
                f"{type(self).__name__} has no blocks: pass `blocks=` or use `blocks.init_pipeline(...)`, or load a "
                "repo whose modular_model_index.json names its blocks class."
            )

        # a private copy: editing the caller's blocks object later never changes this pipeline, which lets the
        # pipeline cache the blocks' declarations
        blocks = copy.deepcopy(blocks)
        blocks._freeze_declarations()
        self._blocks = blocks
        self._components_manager = components_manager
        self._collection = collection
        self._pretrained_model_name_or_path = pretrained_model_name_or_path
        self._config: Dict[str, Any] = {}
        self._component_specs: Dict[str, ComponentSpec] = {
            spec.name: copy.deepcopy(spec) for spec in blocks.expected_components
        }
        self._config_specs: Dict[str, ConfigSpec] = {
            spec.name: copy.deepcopy(spec) for spec in blocks.expected_configs
        }

        if modular_config_dict is not None:
            self._apply_modular_index(modular_config_dict, index_folder)
        elif config_dict is not None:
            self._apply_model_index(config_dict, pretrained_model_name_or_path)

        if kwargs:
            logger.warning(f"Unexpected input '{sorted(kwargs)}' provided. This input will be ignored.")

        initial: Dict[str, Any] = {}
        for name, spec in self._component_specs.items():
            if spec.default_creation_method == "from_config":
                try:
                    initial[name] = spec.create()
                except Exception as e:
                    logger.warning(f"Could not create component {name!r} from its config: {e}")
                    initial[name] = None
            else:
                initial[name] = None
        self.register_components(**initial)
        for name, spec in self._config_specs.items():
            self._config[name] = spec.default
        self._config["_blocks_class_name"] = type(blocks).__name__

    # --- construction helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _load_pipeline_config(path: str, hub_kwargs: Dict[str, Any]):
        found = _read_json_from(path, "modular_model_index.json", hub_kwargs)
        if found is not None:
            return found[0], None, found[1]
        found = _read_json_from(path, "model_index.json", hub_kwargs)
        if found is not None:
            return None, found[0], found[1]
        reasons = "; ".join(f"{name}: {_LAST_LOOKUP_ERRORS.get(name, 'not found')}"
                            for name in ("modular_model_index.json", "model_index.json"))
        raise EnvironmentError(
            f"Failed to load config from '{path}'. Could not find or load 'modular_model_index.json' or "
            f"'model_index.json' ({reasons})."
        )

    def _default_blocks(self, modular_config_dict: Optional[Dict[str, Any]]) -> Optional[ModularPipelineBlocks]:
        names = []
        if modular_config_dict and modular_config_dict.get("_blocks_class_name"):
            names.append(modular_config_dict["_blocks_class_name"])
        if self.default_blocks_name:
            names.append(self.default_blocks_name)
        for name in names:
            blocks_cls = _find_named_class(name)
            if blocks_cls is None or not issubclass(blocks_cls, ModularPipelineBlocks):
                continue
            is_empty_base = blocks_cls in (
                SequentialPipelineBlocks, LoopSequentialPipelineBlocks, ConditionalPipelineBlocks, AutoPipelineBlocks
            ) or (issubclass(blocks_cls, (SequentialPipelineBlocks, ConditionalPipelineBlocks))
                  and not getattr(blocks_cls, "block_classes", None))
            if is_empty_base:
                continue
            return blocks_cls()
        if names:
            logger.warning(f"Could not find blocks class {names} for {type(self).__name__}.")
        return None

    def _apply_modular_index(self, index: Dict[str, Any], index_folder: Optional[str]) -> None:
        for name, value in index.items():
            if name in self._component_specs and isinstance(value, (list, tuple)) and len(value) == 3:
                spec_dict = value[2] or {}
                self._component_specs[name] = self._spec_from_index(name, spec_dict, index_folder)
            elif name in self._config_specs:
                self._config_specs[name].default = value

    def _spec_from_index(self, name: str, spec_dict: Dict[str, Any], index_folder: Optional[str]) -> ComponentSpec:
        base = self._component_specs[name]
        pair = spec_dict.get("type_hint") or [None, None]
        type_hint = resolve_class(pair[0], pair[1]) if pair and pair[1] else None
        path = spec_dict.get("pretrained_model_name_or_path", spec_dict.get("repo"))
        if isinstance(path, str) and index_folder and not os.path.isabs(path) and not os.path.isdir(path):
            beside = os.path.join(index_folder, path)
            if os.path.isdir(beside):  # a folder named relative to the index file
                path = os.path.normpath(beside)
        spec = copy.deepcopy(base)
        spec.type_hint = type_hint or base.type_hint
        spec.pretrained_model_name_or_path = path
        spec.subfolder = spec_dict.get("subfolder", "")
        spec.variant = spec_dict.get("variant")
        spec.revision = spec_dict.get("revision")
        spec.default_creation_method = "from_pretrained"
        return spec

    def _apply_model_index(self, index: Dict[str, Any], path: Optional[str]) -> None:
        for name, value in index.items():
            if name.startswith("_"):
                continue
            if name in self._component_specs and isinstance(value, (list, tuple)) and len(value) == 2:
                if value[1] is None:
                    continue  # the repo has no such component (e.g. `"safety_checker": [null, null]`)
                spec = copy.deepcopy(self._component_specs[name])
                spec.type_hint = resolve_class(value[0], value[1]) or spec.type_hint
                spec.pretrained_model_name_or_path = path
                spec.subfolder = name
                spec.variant = None
                spec.revision = None
                spec.default_creation_method = "from_pretrained"
                self._component_specs[name] = spec
            elif name in self._config_specs:
                self._config_specs[name].default = value

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        trust_remote_code: Optional[bool] = None,
        components_manager: Any = None,
        collection: Optional[str] = None,
        workflow: Optional[str] = None,
        **kwargs: Any,
    ) -> "ModularPipeline":
        """A pipeline for a repo or folder holding ``modular_model_index.json`` (component entries may point at
        other repos/folders) or a classic ``model_index.json``. Nothing is loaded until ``load_components``."""
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError(
                "`pretrained_model_name_or_path` must be a repo id or a local folder path, got "
                f"{type(pretrained_model_name_or_path).__name__}"
            )
        path = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        blocks = None
        try:
            blocks = ModularPipelineBlocks.from_pretrained(path, trust_remote_code=bool(trust_remote_code), **{
                k: v for k, v in hub_kwargs.items() if k != "proxies"})
        except OSError:
            blocks = None
        modular_config, config, index_folder = cls._load_pipeline_config(path, hub_kwargs)

        pipeline_cls: type = cls
        if modular_config is not None:
            if cls is ModularPipeline:
                found = _find_named_class(modular_config.get("_class_name"))
                if found is not None and issubclass(found, ModularPipeline):
                    pipeline_cls = found
        elif cls is ModularPipeline:
            family = _family_of_standard_pipeline(config.get("_class_name"))
            pipeline_cls = get_modular_pipeline_class(family) or ModularPipeline
        pipe = pipeline_cls.__new__(pipeline_cls)
        pipeline_cls.__init__(
            pipe,
            blocks=blocks,
            pretrained_model_name_or_path=path,
            components_manager=components_manager,
            collection=collection,
            workflow=workflow,
            modular_config_dict=modular_config,
            config_dict=config,
            _index_folder=index_folder,
            **kwargs,
        )
        return pipe

    # --- config --------------------------------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """``_class_name``, ``_diffusers_version``, ``_blocks_class_name``, the config values, and one
        ``[library, class, spec]`` entry per from_pretrained component."""
        from .. import __version__

        # blocks read `components.config.x` inside loops: build the frozen view once per change
        key = tuple(map(id, self._config.values())) + tuple(self._config)
        cached = self.__dict__.get("_frozen_config")
        if cached is None or cached[0] != key:
            frozen = _freeze({"_class_name": type(self).__name__, "_diffusers_version": __version__, **self._config})
            cached = (key, frozen)
            self.__dict__["_frozen_config"] = cached
        return cached[1]

    def register_to_config(self, **kwargs: Any) -> None:
        self._config.update(kwargs)

    def _refresh_config_entry(self, name: str) -> None:
        spec = self._component_specs[name]
        if spec.default_creation_method != "from_pretrained":
            self._config.pop(name, None)
            return
        library, class_name = class_to_pair(getattr(self, name, None))
        self._config[name] = [library, class_name, _spec_to_dict(spec)]

    def to_json_string(self) -> str:
        def default(o: Any) -> Any:
            if isinstance(o, (set, tuple)):
                return list(o)
            return str(o)

        return json.dumps(dict(self.config), indent=2, sort_keys=True, default=default) + "\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # --- blocks / components ----------------------------------------------------------------------------------

    @property
    def blocks(self) -> ModularPipelineBlocks:
        """A copy of the pipeline's blocks (editing it does not change the pipeline)."""
        blocks = copy.deepcopy(self._blocks)
        blocks._freeze_declarations(False)
        return blocks

    @property
    def doc(self) -> str:
        return self._blocks.doc

    @property
    def components(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self._component_specs if name in self.__dict__}

    @property
    def component_names(self) -> List[str]:
        return list(self.components)

    @property
    def null_component_names(self) -> List[str]:
        """Components still to load (their attribute is None)."""
        return [name for name, value in self.components.items() if value is None]

    @property
    def pretrained_component_names(self) -> List[str]:
        return [n for n, s in self._component_specs.items() if s.default_creation_method == "from_pretrained"]

    @property
    def config_component_names(self) -> List[str]:
        return [n for n, s in self._component_specs.items() if s.default_creation_method == "from_config"]

    @property
    def default_call_parameters(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self._blocks.inputs}

    def get_component_spec(self, name: str) -> ComponentSpec:
        if name not in self._component_specs:
            raise KeyError(f"Unknown component {name!r}; known components: {list(self._component_specs)}")
        return copy.deepcopy(self._component_specs[name])

    def _add_to_manager(self, name: str, component: Any) -> None:
        manager = self._components_manager
        if manager is None or component is None:
            return
        add = getattr(manager, "add", None)
        if add is not None:
            add(name, component, collection=self._collection)

    def register_components(self, _add_to_manager: Optional[bool] = None, **kwargs: Any) -> None:
        """Set components as attributes and record them in the config (and in the components manager)."""
        for name, component in kwargs.items():
            if name not in self._component_specs:
                logger.warning(f"ModularPipeline.register_components: skipping unknown component '{name}'")
                continue
            current = self.__dict__.get(name, None)
            already = name in self.__dict__
            if already and current is component and component is not None:
                logger.info(f"ModularPipeline.register_components: {name} already registered, skipping")
                continue
            setattr(self, name, component)
            self._refresh_config_entry(name)
            spec = self._component_specs[name]
            add = _add_to_manager if _add_to_manager is not None else spec.default_creation_method == "from_pretrained"
            if add:
                self._add_to_manager(name, component)

    def update_components(self, **kwargs: Any) -> None:
        """Replace components (objects) and config values by name. Objects loaded through a ComponentSpec keep
        their checkpoint in the spec; config objects (schedulers, guiders) become from_config specs."""
        components = {k: v for k, v in kwargs.items() if k in self._component_specs}
        configs = {k: v for k, v in kwargs.items() if k in self._config_specs}
        unknown = sorted(set(kwargs) - set(components) - set(configs))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, list(self._component_specs) + list(self._config_specs), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            logger.warning(f"Unexpected keyword arguments, will be ignored: {', '.join(hints)}")
        for name, component in list(components.items()):
            current_spec = self._component_specs[name]
            if component is None:
                if self.__dict__.get(name) is not None:
                    logger.warning(f"ModularPipeline.update_components: setting {name} to None (spec unchanged)")
                continue
            if isinstance(component, ComponentSpec):
                spec = copy.deepcopy(component)
                spec.name = name
                self._component_specs[name] = spec
                if spec.default_creation_method == "from_config":
                    components[name] = spec.create()
                else:
                    # lazy like every from_pretrained component: the old object goes, the new one loads on request
                    logger.info(f"update_components: new spec for {name}; call load_components(names={name!r}) to load it")
                    components[name] = None
                    setattr(self, name, None)
                    self._refresh_config_entry(name)
                continue
            load_id = get_load_id(component)
            if current_spec.default_creation_method == "from_pretrained" and (load_id is None or load_id == "null"):
                new_spec = ComponentSpec(name=name, type_hint=type(component), description=current_spec.description)
            else:
                new_spec = ComponentSpec.from_component(name, component)
                new_spec.description = current_spec.description
            if current_spec.type_hint is not None and new_spec.type_hint is not current_spec.type_hint:
                logger.info(f"update_components: {name} type changes from {current_spec.type_hint} to {new_spec.type_hint}")
            if new_spec.default_creation_method != current_spec.default_creation_method:
                logger.info(
                    f"update_components: {name} creation method changes from {current_spec.default_creation_method} "
                    f"to {new_spec.default_creation_method}"
                )
            self._component_specs[name] = new_spec
        real = {k: v for k, v in components.items() if v is not None}
        if real:
            self.register_components(_add_to_manager=True, **real)
        for name, value in configs.items():
            self._config_specs[name].default = value
            self._config[name] = value

    def _resolve_names(self, names: Any) -> List[str]:
        if isinstance(names, str):
            return [names]
        if not isinstance(names, list):
            raise ValueError(f"Invalid type for names: {type(names)} (expected a str or a list of str)")
        return list(names)

    def load_components(self, names: Optional[Union[str, List[str]]] = None, workflow: Optional[str] = None,
                        **kwargs: Any) -> None:
        """Load from_pretrained components. ``names=None``: every component that has a path and is not loaded
        yet; explicit names are (re)loaded. kwargs (``torch_dtype``, ``variant``, ...) apply to all components, or
        per component when given as a dict (``torch_dtype={"unet": torch.float16, "default": torch.float32}``).
        A component that fails to load is reported as a warning and stays None."""
        if names is not None and workflow is not None:
            raise ValueError("Pass either `names` or `workflow`, not both.")
        if names is None:
            selected = [
                n for n, s in self._component_specs.items()
                if s.default_creation_method == "from_pretrained"
                and s.pretrained_model_name_or_path is not None
                and self.__dict__.get(n) is None
            ]
            if workflow is not None:
                allowed = {c.name for c in self._blocks.get_workflow(workflow).expected_components}
                selected = [n for n in selected if n in allowed]
        else:
            selected = self._resolve_names(names)
        unknown = {n for n in selected if n not in self._component_specs}
        if unknown:
            logger.warning(f"Unknown components will be ignored: {unknown}")
        selected = [n for n in selected if n in self._component_specs]

        loaded: Dict[str, Any] = {}
        for name in selected:
            spec = self._component_specs[name]
            component_kwargs = {}
            for key, value in kwargs.items():
                if isinstance(value, dict):
                    if name in value:
                        component_kwargs[key] = value[name]
                    elif "default" in value:
                        component_kwargs[key] = value["default"]
                else:
                    component_kwargs[key] = value
            if (
                "trust_remote_code" in component_kwargs
                and self._pretrained_model_name_or_path is not None
                and spec.pretrained_model_name_or_path != self._pretrained_model_name_or_path
            ):
                component_kwargs.pop("trust_remote_code")
            if not spec.pretrained_model_name_or_path:
                logger.info(f"Skipping component `{name}`: no pretrained model path specified.")
                continue
            reused = self._lookup_in_manager(spec, component_kwargs)
            if reused is not None:
                logger.info(f"Reusing {name} ({spec.load_id}) from the components manager instead of loading it.")
                loaded[name] = reused
                continue
            if spec.default_creation_method == "from_config":
                spec = copy.deepcopy(spec)
                spec.default_creation_method = "from_pretrained"
            try:
                loaded[name] = spec.load(**component_kwargs)
                self._component_specs[name] = spec
            except Exception:
                logger.warning(
                    f"Failed to create component {name}:\n- Component spec: {spec}\n- load() called with kwargs: "
                    f"{component_kwargs}\nIf this component is not required for your workflow you can safely ignore "
                    f"this message.\n\nTraceback:\n{traceback.format_exc()}"
                )
        if loaded:
            self.register_components(_add_to_manager=True, **loaded)

    def _lookup_in_manager(self, spec: ComponentSpec, component_kwargs: Dict[str, Any]) -> Any:
        manager = self._components_manager
        if manager is None or not getattr(manager, "reuse_by_load_id", False):
            return None
        lookup = getattr(manager, "_lookup_load_id", None)
        if lookup is None:
            return None
        dtype = component_kwargs.get("torch_dtype", component_kwargs.get("dtype"))
        try:
            return lookup(spec.load_id, dtype)
        except Exception as e:  # a manager problem must not prevent loading
            logger.warning(f"Components manager lookup of {spec.load_id!r} failed: {e}")
            return None

    def load_default_components(self, **kwargs: Any) -> None:
        """Load every from_pretrained component that has a path (seed-era name of ``load_components()``)."""
        self.load_components(names=None, **kwargs)

    def unload_components(self, names: Union[str, List[str]]) -> None:
        """Set components back to None (their specs are kept, so they can be reloaded) and drop them from the
        components manager."""
        selected = self._resolve_names(names)
        unknown = {n for n in selected if n not in self._component_specs}
        if unknown:
            logger.warning(f"Unknown components will be ignored: {unknown}")
        manager = self._components_manager
        for name in selected:
            if name not in self._component_specs:
                continue
            component = self.__dict__.get(name)
            if component is None:
                continue
            component_id = f"{name}_{id(component)}"
            setattr(self, name, None)
            self._refresh_config_entry(name)
            del component
            if manager is not None and component_id in getattr(manager, "components", {}):
                # only this pipeline's registration goes; an object another collection shares stays registered
                remove_from_collection = getattr(manager, "remove_from_collection", None)
                if self._collection is not None and remove_from_collection is not None:
                    remove_from_collection(component_id, self._collection)
                else:
                    manager.remove(component_id)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass

    # --- devices ----------------------------------------------------------------------------------------------

    def _modules(self) -> List[Tuple[str, Any]]:
        return [(n, c) for n, c in self.components.items() if c is not None and _is_module(c)]

    @property
    def device(self):
        import torch

        for _, module in self._modules():
            try:
                return next(module.parameters()).device
            except StopIteration:
                continue
        return torch.device("cpu")

    @property
    def dtype(self):
        import torch

        for _, module in self._modules():
            for p in module.parameters():
                if p.is_floating_point():
                    return p.dtype
        return torch.float32

    @property
    def _execution_device(self):
        import torch

        for _, module in self._modules():
            device = getattr(module, "_diffblocks_execution_device", None)
            if device is not None:
                return torch.device(device)
            hook = getattr(module, "_hf_hook", None)
            if hook is not None and getattr(hook, "execution_device", None) is not None:
                return torch.device(hook.execution_device)
            try:
                return next(module.parameters()).device
            except StopIteration:
                continue
        return torch.device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> "ModularPipeline":
        """Move (and/or cast) every torch module component: ``to(device)``, ``to(dtype)``, ``to(device, dtype)``
        or keywords ``device=``/``dtype=``. Returns the pipeline itself."""
        import torch

        dtype_kw = kwargs.pop("dtype", None)
        device_kw = kwargs.pop("device", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}; accepted: device, dtype")
        if len(args) > 2:
            raise ValueError("Please make sure to pass at most two arguments (`device` and `dtype`) `.to(...)`")
        device_arg, dtype_arg = None, None
        if len(args) == 1:
            if isinstance(args[0], torch.dtype):
                dtype_arg = args[0]
            else:
                device_arg = args[0]
        elif len(args) == 2:
            if isinstance(args[0], torch.dtype):
                raise ValueError(
                    "When passing two arguments, make sure the first corresponds to `device` and the second to `dtype`."
                )
            device_arg, dtype_arg = args
        if dtype_arg is not None and dtype_kw is not None:
            raise ValueError("You have passed `dtype` both as an argument and as a keyword argument. Please only pass one.")
        if device_arg is not None and device_kw is not None:
            raise ValueError("You have passed `device` both as an argument and as a keyword argument. Please only pass one.")
        device = device_arg if device_arg is not None else device_kw
        dtype = dtype_arg if dtype_arg is not None else dtype_kw
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"`dtype` must be a torch.dtype, got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (TypeError, RuntimeError) as e:
                raise ValueError(f"`device` must be a torch device or a device string like 'cpu', got {device!r}") from e
        for name, module in self._modules():
            if getattr(module, "_diffblocks_execution_device", None) is not None and device is not None:
                logger.warning(f"{name} is managed by an offload hook; moving it to {device} anyway.")
            module.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options for every loop in the pipeline (nested loops included), e.g. ``disable=True``."""
        self._blocks.set_progress_bar_config(**kwargs)

    # --- running ----------------------------------------------------------------------------------------------

    def __call__(self, state: Optional[PipelineState] = None, output: Union[None, str, Sequence[str]] = None,
                 **kwargs: Any) -> Any:
        """Run the blocks. Returns the PipelineState (``output=None``), one value (``output="images"``) or a
        dict (``output=["latents", "images"]``). Unknown input names are warned about (with the closest known
        name); they are never silently used."""
        import torch

        if state is None:
            state = PipelineState()
        elif isinstance(state, PipelineState):
            state = copy.deepcopy(state)
        else:
            raise TypeError(f"`state` must be a PipelineState or None, got {type(state).__name__}")
        if output is not None and not isinstance(output, (str, list, tuple)):
            raise ValueError(f"Output '{output}' is not a valid output type (expected None, a str or a list of str)")

        pipeline_inputs = self._call_inputs()
        fresh = not state.intermediates and not state._inputs
        user_inputs = state._inputs
        for param in pipeline_inputs:
            name = param.name
            if fresh and param.kwargs_type is None and name is not None:
                user_inputs[name] = kwargs.pop(name) if name in kwargs else param.default
            elif name is not None and name in kwargs:
                state.set_input(name, kwargs.pop(name), param.kwargs_type)
            elif name is None and param.kwargs_type and param.kwargs_type in kwargs:
                group = kwargs.pop(param.kwargs_type)
                if not isinstance(group, dict):
                    raise TypeError(
                        f"`{param.kwargs_type}` must be a dict of name -> value, got {type(group).__name__}"
                    )
                for key, value in group.items():
                    state.set_input(key, value, param.kwargs_type)
            elif name is not None and name not in state:
                state.set_input(name, param.default, param.kwargs_type)
        self._check_required_inputs(state, pipeline_inputs)
        if kwargs:
            known = [p.name for p in pipeline_inputs if p.name] + [p.kwargs_type for p in pipeline_inputs if p.kwargs_type]
            for key in kwargs:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                warnings.warn(f"Unexpected input '{key}' provided. This input will be ignored.{hint}", UserWarning,
                              stacklevel=2)

        with torch.no_grad():
            try:
                _, state = self._blocks(self, state)
            except Exception:
                logger.error(f"Error in block: ({type(self._blocks).__name__})")
                raise

        if output is None:
            return state
        if isinstance(output, str):
            return self._get_output(state, output)
        return {name: self._get_output(state, name) for name in output}

    def _check_required_inputs(self, state: PipelineState, pipeline_inputs: List[InputParam]) -> None:
        """Fail before any block runs when a required input is missing and no block could produce it."""
        missing = [p.name for p in pipeline_inputs if p.required and p.name is not None and state.get(p.name) is None]
        if not missing:
            return
        produced = {p.name for p in self._blocks.intermediate_outputs}
        missing = [name for name in missing if name not in produced]
        if missing:
            name = missing[0]
            raise ValueError(
                f"Required input '{name}' is missing: pass `{name}=...` to the pipeline (no block of "
                f"{type(self._blocks).__name__} produces it). Required inputs: {self._blocks.required_inputs}"
            )

    def _call_inputs(self) -> List[InputParam]:
        """The blocks' aggregated inputs, computed once: the pipeline's blocks are a private copy that only
        changes if ``_blocks`` itself is edited (top-level edits are detected)."""
        key = (id(self._blocks), tuple(map(id, self._blocks.sub_blocks.values())))
        cached = self.__dict__.get("_call_inputs_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._blocks.inputs)
            self.__dict__["_call_inputs_cache"] = cached
        return cached[1]

    def _get_output(self, state: PipelineState, name: str) -> Any:
        if not isinstance(name, str):
            raise ValueError(f"Output '{name}' is not a valid output type (output names are str)")
        if name in state:
            return state.get(name)
        declared = set(self._blocks.input_names) | {p.name for p in self._blocks.intermediate_outputs}
        if name in declared:
            return None  # declared but not produced in this run (e.g. a skipped branch)
        available = sorted(state.values)
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Output '{name}' is not produced by this pipeline.{hint} Available outputs: {available}")

    # --- saving -----------------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Optional[Union[int, str]] = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Save loaded from_pretrained components into ``save_directory/<name>`` and write
        ``modular_model_index.json``. Entries of components that came from a checkpoint keep pointing at it
        unless ``overwrite_modular_index=True``; the others point at ``save_directory``. Written to a temporary
        folder first, so a failure leaves ``save_directory`` untouched."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by diffblocks; save locally and upload.")
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"`save_directory` must be a path, got {type(save_directory).__name__}")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) should be a directory, not a file")
        overwrite_index = bool(kwargs.pop("overwrite_modular_index", False))
        repo_id = kwargs.pop("repo_id", None)
        if kwargs:
            logger.warning(f"save_pretrained: ignoring unexpected arguments {sorted(kwargs)}")
        parent = os.path.dirname(os.path.abspath(save_directory)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".diffblocks-save-", dir=parent)
        try:
            index = dict(self.config)
            for name, spec in self._component_specs.items():
                if spec.default_creation_method != "from_pretrained":
                    continue
                component = self.__dict__.get(name)
                if component is None:
                    continue
                component = getattr(component, "_orig_mod", component)
                save = getattr(component, "save_pretrained", None)
                if save is None:
                    logger.warning(f"self.{name}={component} of type {type(component)} cannot be saved.")
                    continue
                params = inspect.signature(save).parameters
                accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
                options = {"safe_serialization": safe_serialization, "variant": variant, "max_shard_size": max_shard_size}
                save_kwargs = {k: v for k, v in options.items() if v is not None and (k in params or (
                    accepts_any and k == "safe_serialization"))}
                save(os.path.join(tmp, name), **save_kwargs)
                load_id = get_load_id(component)
                if overwrite_index or load_id is None or load_id == "null":
                    entry = list(index.get(name) or [None, None, {}])
                    spec_dict = dict(entry[2] or {})
                    spec_dict["pretrained_model_name_or_path"] = repo_id or save_directory
                    spec_dict["subfolder"] = name
                    spec_dict["variant"] = variant
                    spec_dict["revision"] = None
                    entry[2] = spec_dict
                    index[name] = entry
            with open(os.path.join(tmp, self.config_name), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2, sort_keys=True, default=str)
                f.write("\n")
            from ..utils.fs import normal_tree_permissions

            normal_tree_permissions(tmp)
            os.makedirs(save_directory, exist_ok=True)
            for entry in os.listdir(tmp):
                target = os.path.join(save_directory, entry)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
                os.replace(os.path.join(tmp, entry), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
