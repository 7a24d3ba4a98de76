"""Blocks: the unit of a modular pipeline, and the three ways to compose them.

A block is a definition: it declares what it reads (``inputs``; seed-era blocks may also declare
``intermediate_inputs``, treated as more inputs), what it writes (``intermediate_outputs``), the components and
configs it needs (``expected_components``/``expected_configs``), and implements
``__call__(components, state) -> (components, state)``. Inside ``__call__`` a block takes its local view with
``get_block_state(state)`` and hands results back with ``set_block_state(state, block_state)``.

Composition:

* :class:`SequentialPipelineBlocks` runs sub-blocks in order. Its inputs are the sub-blocks' inputs that no
  earlier sub-block produces; its outputs are all the sub-blocks' outputs.
* :class:`ConditionalPipelineBlocks` / :class:`AutoPipelineBlocks` run one branch chosen at run time from the
  presence of trigger inputs (or skip when no branch applies and there is no default).
* :class:`LoopSequentialPipelineBlocks` is a loop wrapper: its own ``__call__`` loops and calls
  ``loop_step(components, block_state, i=i, ...)``, which runs the leaf sub-blocks on one shared BlockState.

Every aggregated property is recomputed from ``sub_blocks`` on access, so editing ``sub_blocks`` (``pop``,
``insert``, item assignment) changes the composite immediately.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import sys
from dataclasses import replace
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from .modular_pipeline_utils import (
    ComponentSpec,
    ConfigSpec,
    InputParam,
    InsertableDict,
    OutputParam,
    combine_inputs,
    combine_outputs,
    format_components,
    format_configs,
    format_workflow,
    input_key,
    make_doc_string,
    validate_requirements,
)
from .pipeline_state import BlockState, PipelineState

logger = logging.getLogger(__name__)

_ORIGIN = "_BlockState__origin"  # private bookkeeping stored on a BlockState (see get_block_state)

# how a BlockState value was obtained, to decide whether set_block_state must write it back
_SHARED = 0  # the state's own object (an intermediate): write back only when reassigned
_DEFAULTED = 1  # the state had nothing: write back whatever the block ends with (unless None)
_COPIED = 2  # a private copy of a user input: write back when reassigned or modified in place


_IMMUTABLE = (int, float, str, bool, bytes, type(None), tuple, frozenset)
_ABSENT = object()


def _private_copy(value: Any) -> Tuple[Any, Any]:
    """A copy of a user input a block may modify without touching the user's object, plus a snapshot used to
    detect in-place modification. Scalars, strings, generators, PIL images and other objects are shared."""
    if type(value) in _IMMUTABLE:
        return value, None
    if isinstance(value, list):
        new = list(value)
        return new, tuple(map(id, new))
    if isinstance(value, dict):
        new = dict(value)
        return new, tuple((k, id(v)) for k, v in new.items())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        new = value.clone()
        try:
            return new, new._version
        except RuntimeError:  # inference-mode tensors carry no version counter
            return new, None
    return value, None


def _modified(value: Any, snapshot: Any) -> bool:
    if isinstance(value, list):
        return tuple(map(id, value)) != snapshot
    if isinstance(value, dict):
        return tuple((k, id(v)) for k, v in value.items()) != snapshot
    if snapshot is None:
        return False
    try:
        return value._version != snapshot
    except (AttributeError, RuntimeError):
        return True


def _changed(state: PipelineState, origin: Optional[Dict[str, Tuple[int, Any, Any]]], key: str, value: Any) -> bool:
    """Whether a BlockState input value must be written back to the state."""
    if origin is None or key not in origin:
        return value is not state.get(key)
    kind, handed, snapshot = origin[key]
    if value is not handed:
        return True
    if kind == _DEFAULTED:
        return value is not None
    if kind == _COPIED:
        return _modified(value, snapshot)
    return False


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):
        err.add_note(note)


def _instantiate(block: Any) -> Any:
    return block() if isinstance(block, type) else block


class ModularPipelineBlocks:
    """Base class of all blocks, and the leaf block users subclass.

    Override the properties ``description``, ``expected_components``, ``expected_configs``, ``inputs``,
    ``intermediate_outputs`` (and optionally ``outputs``) and ``__call__(components, state)``.
    """

    config_name = "modular_config.json"
    model_name: Optional[str] = None
    _requirements: Optional[Dict[str, Any]] = None
    _workflow_map: Optional[Dict[str, Any]] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> "ModularPipelineBlocks":
        obj = super().__new__(cls)
        # set before any user __init__ runs (subclasses need not call super().__init__)
        obj.__dict__["sub_blocks"] = InsertableDict()
        return obj

    def __init__(self) -> None:
        pass

    # --- declarations (override) -----------------------------------------------------------------------------

    @property
    def description(self) -> str:
        return self.__dict__.get("_description", "")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return []

    @property
    def expected_configs(self) -> List[ConfigSpec]:
        return []

    @property
    def inputs(self) -> List[InputParam]:
        return []

    @property
    def intermediate_inputs(self) -> List[InputParam]:
        """Seed-era spelling: values produced by earlier blocks. Treated exactly like more ``inputs``."""
        return []

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return []

    @property
    def outputs(self) -> List[OutputParam]:
        return self.intermediate_outputs

    # --- derived -----------------------------------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # seed-era blocks override `intermediate_inputs`; the others skip merging it on every call
        cls._merges_intermediate_inputs = cls.intermediate_inputs is not ModularPipelineBlocks.intermediate_inputs

    _merges_intermediate_inputs = False

    def _declared_inputs(self) -> List[InputParam]:
        """``inputs`` followed by the ``intermediate_inputs`` not already declared (one entry per name)."""
        if not self._merges_intermediate_inputs:
            return list(self.inputs)
        params = list(self.inputs)
        extra = self.intermediate_inputs
        if extra:
            seen = {input_key(p) for p in params}
            for p in extra:
                if input_key(p) not in seen:
                    seen.add(input_key(p))
                    params.append(p)
        return params

    @property
    def required_inputs(self) -> List[str]:
        return [p.name for p in self._declared_inputs() if p.required and p.name is not None]

    @property
    def input_names(self) -> List[str]:
        return [p.name for p in self._declared_inputs() if p.name is not None]

    @property
    def intermediate_output_names(self) -> List[str]:
        return [p.name for p in self.intermediate_outputs if p.name is not None]

    @property
    def output_names(self) -> List[str]:
        return [p.name for p in self.outputs if p.name is not None]

    @property
    def component_names(self) -> List[str]:
        return [c.name for c in self.expected_components]

    @property
    def doc(self) -> str:
        return make_doc_string(
            self._declared_inputs(),
            self.outputs,
            self.description,
            class_name=type(self).__name__,
            expected_components=self.expected_components,
            expected_configs=self.expected_configs,
        )

    @property
    def trigger_inputs(self) -> List[str]:
        """Names of every input that selects a branch somewhere in this block (sorted)."""
        found: Set[str] = set()
        self._collect_triggers(found)
        return sorted(found)

    def _collect_triggers(self, found: Set[str]) -> None:
        for block in self.sub_blocks.values():
            if isinstance(block, ModularPipelineBlocks):
                block._collect_triggers(found)

    # --- state exchange ----------------------------------------------------------------------------------------

    def get_block_state(self, state: PipelineState) -> BlockState:
        """This block's view of ``state``: one attribute per declared input (declared default when the state has
        None; ``ValueError`` when a required input is still None) and, for a group input ``**K``, every value
        tagged ``K`` both as attributes and as the dict ``block_state.K``.

        Values the user passed are handed out as private copies (tensors cloned, lists/dicts shallow-copied) so a
        block can never change the user's objects; values produced by earlier blocks are shared.
        """
        data: Dict[str, Any] = {}
        origin: Dict[str, Tuple[int, Any, Any]] = {}
        intermediates = state.intermediates
        user_inputs = state._inputs
        cache = self.__dict__.get("_decl_cache")
        if cache is None:
            declared = self._declared_inputs()
        else:
            declared = cache.get("inputs")
            if declared is None:
                declared = cache["inputs"] = self._declared_inputs()
        for param in declared:
            name = param.name
            if name is not None:
                value = intermediates.get(name, _ABSENT)
                if value is _ABSENT:
                    value = user_inputs.get(name)
                    if value is not None:
                        if type(value) in _IMMUTABLE:
                            origin[name] = (_SHARED, value, None)
                        else:
                            value, snapshot = _private_copy(value)
                            origin[name] = (_COPIED, value, snapshot)
                        data[name] = value
                        continue
                elif value is not None:
                    origin[name] = (_SHARED, value, None)
                    data[name] = value
                    continue
                # nothing in the state: the declared default (a private copy of it)
                value = param.default
                if value is None:
                    if param.required:
                        raise ValueError(
                            f"Required input '{name}' is missing (block {type(self).__name__}): pass "
                            f"`{name}=...` to the pipeline call or add a block that produces it before this one."
                        )
                elif type(value) not in _IMMUTABLE:
                    value, _ = _private_copy(value)
                origin[name] = (_DEFAULTED, value, None)
                data[name] = value
            elif param.kwargs_type:
                group_name = param.kwargs_type
                group = data.setdefault(group_name, {})
                for key in state.kwargs_mapping.get(group_name, ()):
                    if key in intermediates:
                        value = intermediates[key]
                        kind, snapshot = _SHARED, None
                    else:
                        value = user_inputs.get(key)
                        kind = _COPIED
                        value, snapshot = _private_copy(value)
                    if value is None:
                        continue
                    data[key] = value
                    group[key] = value
                    origin[key] = (kind, value, snapshot)
        data[_ORIGIN] = (self, declared, origin)
        block_state = BlockState.__new__(BlockState)
        block_state.__dict__ = data
        return block_state

    def set_block_state(self, state: PipelineState, block_state: BlockState) -> None:
        """Write the block's outputs (always) and its reassigned or modified inputs to the state's
        intermediates. The user's inputs are never changed."""
        values = block_state.__dict__
        record = values.get(_ORIGIN)
        if record is not None and record[0] is self:
            declared, origin = record[1], record[2]
        else:  # a BlockState built by hand or by another block: compare with the state by identity
            declared, origin = self._declared_inputs(), None
        written: Set[str] = set()
        intermediates = state.intermediates
        cache = self.__dict__.get("_decl_cache")
        if cache is None:
            outputs = self.intermediate_outputs
        else:
            outputs = cache.get("outputs")
            if outputs is None:
                outputs = cache["outputs"] = self.intermediate_outputs
        for param in outputs:
            name = param.name
            if name is None:
                continue
            if name not in values:
                raise ValueError(
                    f"Intermediate output '{name}' is missing in block state: block {type(self).__name__} declares "
                    f"it in `intermediate_outputs` but never set `block_state.{name}`."
                )
            if param.kwargs_type is None:
                intermediates[name] = values[name]
            else:
                state.set_intermediate(name, values[name], param.kwargs_type)
            written.add(name)

        for param in declared:
            name = param.name
            if name is not None:
                if name in written or name not in values:
                    continue
                value = values[name]
                entry = origin.get(name) if origin is not None else None
                if entry is not None and value is entry[1]:
                    kind = entry[0]
                    if kind == _SHARED or (kind == _DEFAULTED and value is None):
                        continue
                    if kind == _COPIED and not _modified(value, entry[2]):
                        continue
                elif entry is None and value is state.get(name):
                    continue
                state.set_intermediate(name, value, param.kwargs_type)
                written.add(name)
            elif param.kwargs_type:
                for key in list(state.kwargs_mapping.get(param.kwargs_type, ())):
                    if key in written or key not in values:
                        continue
                    value = values[key]
                    if _changed(state, origin, key, value):
                        state.set_intermediate(key, value, param.kwargs_type)
                        written.add(key)

    def _freeze_declarations(self, frozen: bool = True) -> None:
        """Cache (or stop caching) the declared inputs/outputs of this block and all nested blocks. A pipeline
        does this on its private copy of the blocks, which nothing edits after construction."""
        if frozen:
            self.__dict__["_decl_cache"] = {}
        else:
            self.__dict__.pop("_decl_cache", None)
        for block in self.sub_blocks.values():
            if isinstance(block, ModularPipelineBlocks):
                block._freeze_declarations(frozen)

    # --- running -----------------------------------------------------------------------------------------------

    def __call__(self, components: Any, state: PipelineState) -> Tuple[Any, PipelineState]:
        raise NotImplementedError(f"`__call__` method needs to be implemented by {type(self).__name__}")

    def init_pipeline(
        self,
        pretrained_model_name_or_path: Optional[Union[str, os.PathLike]] = None,
        components_manager: Any = None,
        collection: Optional[str] = None,
    ):
        """A :class:`ModularPipeline` running a copy of these blocks (the family's pipeline class when
        ``model_name`` is registered). Components are not loaded until ``load_components``."""
        from .modular_pipeline import ModularPipeline, get_modular_pipeline_class

        pipeline_cls = get_modular_pipeline_class(self.model_name) or ModularPipeline
        return pipeline_cls(
            blocks=self,  # the pipeline takes its own copy
            pretrained_model_name_or_path=pretrained_model_name_or_path,
            components_manager=components_manager,
            collection=collection,
        )

    # --- progress bar -----------------------------------------------------------------------------------------

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the tqdm progress bars of this block and every nested block (e.g. ``disable=True``)."""
        self.__dict__["_progress_bar_config"] = dict(kwargs)
        for block in self.sub_blocks.values():
            if hasattr(block, "set_progress_bar_config"):
                block.set_progress_bar_config(**kwargs)

    def progress_bar(self, iterable: Optional[Iterable] = None, total: Optional[int] = None):
        """A tqdm bar over ``iterable`` (or of ``total`` steps) honouring ``set_progress_bar_config``."""
        from tqdm.auto import tqdm

        config = self.__dict__.get("_progress_bar_config", {})
        if not isinstance(config, dict):
            raise ValueError(f"`self._progress_bar_config` should be of type `dict`, but is {type(config)}.")
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("Either `total` or `iterable` has to be defined.")

    # --- workflows ----------------------------------------------------------------------------------------------

    @property
    def available_workflows(self) -> List[str]:
        raise NotImplementedError(f"`available_workflows` is not implemented for {type(self).__name__}")

    def get_workflow(self, workflow_name: str) -> "ModularPipelineBlocks":
        raise NotImplementedError(f"`get_workflow` is not implemented for {type(self).__name__}")

    def get_execution_blocks(self, *args: str, **kwargs: Any) -> Any:
        raise NotImplementedError(f"`get_execution_blocks` is not implemented for {type(self).__name__}")

    # --- repr / persistence -------------------------------------------------------------------------------------

    def _config_dict(self) -> Dict[str, Any]:
        from .. import __version__

        return {"_class_name": type(self).__name__, "_diffusers_version": __version__}

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self._config_dict(), indent=2, sort_keys=True)}\n"

    def save_pretrained(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``modular_config.json`` naming this block class (``auto_map``) and its requirements. The block's
        ``.py`` file must be placed next to it by the user (source code is not copied)."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by diffblocks; save locally and upload.")
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        module = type(self).__module__.split(".")[-1].replace("__dynamic__", "")
        config = self._config_dict()
        config["auto_map"] = {"ModularPipelineBlocks": f"{module}.{type(self).__name__}"}
        requirements = validate_requirements(self._requirements) if self._requirements else {}
        if requirements:
            config["requirements"] = requirements
        path = os.path.join(save_directory, self.config_name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> "ModularPipelineBlocks":
        """Rebuild custom blocks saved with :meth:`save_pretrained` (needs ``trust_remote_code=True``: the block's
        Python file is imported). Extra kwargs matching the block's ``__init__`` are passed to it."""
        hub_keys = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        hub_kwargs.pop("force_download", None)
        hub_kwargs.pop("proxies", None)
        try:
            folder = _resolve_config_folder(pretrained_model_name_or_path, cls.config_name, hub_kwargs)
        except OSError:
            raise
        except Exception as e:  # hub errors (missing file, offline) all mean "no custom blocks here"
            raise OSError(f"Could not find {cls.config_name} for {pretrained_model_name_or_path!r}: {e}") from e
        with open(os.path.join(folder, cls.config_name), encoding="utf-8") as f:
            config = json.load(f)
        auto_map = config.get("auto_map") or {}
        has_remote_code = "ModularPipelineBlocks" in auto_map
        if os.environ.get("DIFFUSERS_DISABLE_REMOTE_CODE") or os.environ.get("DIFFBLOCKS_DISABLE_REMOTE_CODE"):
            if trust_remote_code:
                logger.warning("Remote code is disabled by the environment; ignoring trust_remote_code=True.")
            trust_remote_code = False
        if has_remote_code and not trust_remote_code:
            raise ValueError(
                f"The repository for {pretrained_model_name_or_path} contains custom code. Pass "
                "`trust_remote_code=True` to allow loading remote code modules."
            )
        if not has_remote_code:
            if trust_remote_code:
                raise ValueError(
                    "Selected model repository does not happear to have any custom code or does not have a valid "
                    "`modular_config.json` with an `auto_map['ModularPipelineBlocks']` entry."
                )
            raise OSError(f"{pretrained_model_name_or_path} has no custom block code to load.")
        validate_requirements(config.get("requirements"))
        module_name, class_name = auto_map["ModularPipelineBlocks"].rsplit(".", 1)
        file = os.path.join(folder, module_name + ".py")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"Custom block code {file!r} named in {cls.config_name} is missing.")
        unique = f"diffblocks_dynamic_{abs(hash(os.path.abspath(file)))}_{module_name}"
        spec = importlib.util.spec_from_file_location(unique, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)
        block_cls = getattr(module, class_name)
        import inspect

        params = inspect.signature(block_cls.__init__).parameters
        init_kwargs = {k: v for k, v in kwargs.items() if k in params and k != "self"}
        return block_cls(**init_kwargs)


def _resolve_config_folder(path: Union[str, os.PathLike], filename: str, hub_kwargs: Dict[str, Any]) -> str:
    """Local folder holding ``filename`` for a local path or a Hub repo id (OSError when absent)."""
    path = os.fspath(path)
    # the resolver takes these; force_download/proxies have no meaning for a cached, offline-first lookup
    hub_kwargs = {k: v for k, v in hub_kwargs.items()
                  if k in ("subfolder", "revision", "cache_dir", "local_files_only", "token")}
    subfolder = hub_kwargs.get("subfolder")
    if os.path.isdir(path):
        folder = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isfile(os.path.join(folder, filename)):
            raise OSError(f"Could not find {filename} in {folder!r}.")
        return folder
    try:
        from ..hub import resolve_file  # type: ignore[attr-defined]
    except ImportError:
        resolve_file = None
    if resolve_file is not None:
        return os.path.dirname(resolve_file(path, filename, **hub_kwargs))
    from huggingface_hub import hf_hub_download

    return os.path.dirname(hf_hub_download(path, filename, **hub_kwargs))


PipelineBlock = ModularPipelineBlocks  # seed-era name of the leaf block class


# ---------------------------------------------------------------------------------------------------------------------
# composites
# ---------------------------------------------------------------------------------------------------------------------


class _CompositeBlocks(ModularPipelineBlocks):
    """Shared behaviour of blocks that hold ``sub_blocks``."""

    block_classes: List[Any] = []
    block_names: List[str] = []

    def _build_sub_blocks(self) -> None:
        classes, names = list(self.block_classes), list(self.block_names)
        if len(classes) != len(names):
            raise ValueError(
                f"In {type(self).__name__}, the number of block_names and block_classes must be the same "
                f"(got {len(names)} names {names} and {len(classes)} classes)."
            )
        self.sub_blocks = InsertableDict((name, _instantiate(block)) for name, block in zip(names, classes))

    @classmethod
    def from_blocks_dict(cls, blocks_dict: Dict[str, Any], description: Optional[str] = None):
        """A new composite holding ``blocks_dict``'s blocks in order (classes are instantiated, instances used
        as they are)."""
        if not isinstance(blocks_dict, dict):
            raise TypeError(f"`blocks_dict` must be a dict of name -> block class or instance, got {type(blocks_dict).__name__}")
        for name in blocks_dict:
            if not isinstance(name, str):
                raise TypeError(f"`blocks_dict` keys must be block names (str), got {name!r}")
        instance = cls()
        instance.sub_blocks = InsertableDict((name, _instantiate(block)) for name, block in blocks_dict.items())
        instance.block_classes = [type(b) for b in instance.sub_blocks.values()]
        instance.block_names = list(instance.sub_blocks)
        if description is not None:
            instance.__dict__["_description"] = description
        instance._validate_sub_blocks()
        return instance

    def _validate_sub_blocks(self) -> None:
        pass

    @property
    def description(self) -> str:
        return self.__dict__.get("_description", "")

    @property
    def model_name(self) -> Optional[str]:  # type: ignore[override]
        for block in self.sub_blocks.values():
            name = getattr(block, "model_name", None)
            if name is not None:
                return name
        return None

    def _sub_block_list(self) -> List[ModularPipelineBlocks]:
        return [b for b in self.sub_blocks.values() if isinstance(b, ModularPipelineBlocks)]

    @property
    def expected_components(self) -> List[ComponentSpec]:
        result: List[ComponentSpec] = []
        for block in self._sub_block_list():
            for spec in block.expected_components:
                if spec not in result:
                    result.append(spec)
        return result

    @property
    def expected_configs(self) -> List[ConfigSpec]:
        result: List[ConfigSpec] = []
        for block in self._sub_block_list():
            for spec in block.expected_configs:
                if spec not in result:
                    result.append(spec)
        return result

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return combine_outputs(*((n, b.intermediate_outputs) for n, b in self.sub_blocks.items()
                                 if isinstance(b, ModularPipelineBlocks)))

    @property
    def _requirements(self) -> Dict[str, Any]:  # type: ignore[override]
        return {n: b._requirements for n, b in self.sub_blocks.items() if getattr(b, "_requirements", None)}

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs: Any) -> None:
        ModularPipelineBlocks.save_pretrained(self, save_directory, push_to_hub=push_to_hub, **kwargs)

    def _report_error(self, name: str, block: Any, err: BaseException) -> None:
        logger.error(f"Error in block: ({name}, {type(block).__name__}) of {type(self).__name__}: {err!r}")
        _add_note(err, f"  raised in block '{name}' ({type(block).__name__}) of {type(self).__name__}")

    def _run_sub_block(self, name: str, block: Any, *args: Any, **kwargs: Any):
        try:
            return block(*args, **kwargs)
        except Exception as e:
            self._report_error(name, block, e)
            raise

    # --- repr -------------------------------------------------------------------------------------------------

    def _description_for_display(self) -> str:
        return self.description or ""

    def _banner(self) -> str:
        return ""

    def _sub_block_line(self, index: int, name: str, block: Any) -> str:
        return f"    [{index}] {name} ({type(block).__name__})"

    def __repr__(self) -> str:
        cls = type(self)
        base = cls.__bases__[0].__name__ if cls.__bases__ else "object"
        lines = [f"{cls.__name__}(", f"  Class: {base}"]
        banner = self._banner()
        if banner:
            lines.append(banner)
        desc = self._description_for_display().split("\n")
        lines.append(f"  Description: {desc[0]}")
        lines.extend(f"      {line}" for line in desc[1:])
        lines.append("")
        components = self.expected_components
        if components:
            lines.append(format_components(components, indent_level=2))
        configs = self.expected_configs
        if configs:
            lines.append(format_configs(configs, indent_level=2))
        lines.append("  Sub-Blocks:")
        for i, (name, block) in enumerate(self.sub_blocks.items()):
            lines.append(self._sub_block_line(i, name, block))
            block_desc = (getattr(block, "description", "") or "").split("\n")
            lines.append(f"       Description: {block_desc[0]}")
            lines.extend(f"                   {line}" for line in block_desc[1:])
        lines.append(")")
        return "\n".join(lines)

    @property
    def doc(self) -> str:
        return make_doc_string(
            self.inputs,
            self.outputs,
            self._description_for_display(),
            class_name=type(self).__name__,
            expected_components=self.expected_components,
            expected_configs=self.expected_configs,
        )


def _remark_required(params: List[InputParam], required: Iterable[str]) -> List[InputParam]:
    required = set(required)
    result = []
    for p in params:
        flag = p.name in required if p.name is not None else False
        result.append(p if p.required == flag else replace(p, required=flag))
    return result


class SequentialPipelineBlocks(_CompositeBlocks):
    """Runs its sub-blocks in order on one shared state."""

    def __init__(self) -> None:
        self._build_sub_blocks()

    @property
    def inputs(self) -> List[InputParam]:
        """Sub-block inputs that no earlier sub-block produces (first declaration of a name wins). Outputs of a
        skippable conditional block (no default branch) do not count as produced."""
        result: List[InputParam] = []
        seen: Set[str] = set()
        produced: Set[str] = set()
        for block in self._sub_block_list():
            for param in block._declared_inputs():
                key = input_key(param)
                if key in seen or (param.name is not None and param.name in produced):
                    continue
                seen.add(key)
                result.append(param)
            if not (isinstance(block, ConditionalPipelineBlocks) and block.default_block_name is None):
                produced.update(p.name for p in block.intermediate_outputs if p.name is not None)
        return result

    def _declared_inputs(self) -> List[InputParam]:
        return self.inputs

    @property
    def required_inputs(self) -> List[str]:
        names: List[str] = []
        for block in self._sub_block_list():
            for name in block.required_inputs:
                if name not in names:
                    names.append(name)
        return names

    def __call__(self, pipeline: Any, state: PipelineState) -> Tuple[Any, PipelineState]:
        name = block = None
        try:
            for name, block in self.sub_blocks.items():
                pipeline, state = block(pipeline, state)
        except Exception as e:
            self._report_error(name, block, e)
            raise
        return pipeline, state

    # --- workflows ----------------------------------------------------------------------------------------------

    @property
    def available_workflows(self) -> List[str]:
        if self._workflow_map is None:
            raise NotImplementedError(
                f"workflows is not supported because _workflow_map is not set for {type(self).__name__}"
            )
        return list(self._workflow_map)

    def get_workflow(self, workflow_name: str) -> "SequentialPipelineBlocks":
        """The blocks that run for a named workflow of ``_workflow_map``."""
        names = self.available_workflows
        if workflow_name not in self._workflow_map:
            raise ValueError(
                f"Workflow {workflow_name!r} not found in {type(self).__name__}. Available workflows: {names}"
            )
        triggers = self._workflow_map[workflow_name]
        if isinstance(triggers, (tuple, list)):
            triggers = triggers[0]
        return self.get_execution_blocks(**triggers)

    def get_execution_blocks(self, *args: str, **kwargs: Any) -> "SequentialPipelineBlocks":
        """The flat sequence of blocks that would run when the named inputs are present (positional names are
        accepted too: ``get_execution_blocks("image")`` == ``get_execution_blocks(image=True)``)."""
        for a in args:
            if not isinstance(a, str):
                raise TypeError(f"positional arguments of get_execution_blocks must be input names, got {a!r}")
        active = {a: True for a in args}
        active.update(kwargs)
        selected = InsertableDict()
        self._collect_execution_blocks(active, selected, prefix="")
        return SequentialPipelineBlocks.from_blocks_dict(dict(selected))

    def _collect_execution_blocks(self, active: Dict[str, Any], out: InsertableDict, prefix: str) -> None:
        for name, block in self.sub_blocks.items():
            full = f"{prefix}{name}"
            if isinstance(block, ConditionalPipelineBlocks):
                block = block.get_execution_blocks(**active)
                if block is None:
                    continue
            if isinstance(block, SequentialPipelineBlocks):
                block._collect_execution_blocks(active, out, prefix=f"{full}.")
                continue
            out[full] = block
            for output_name in getattr(block, "intermediate_output_names", []):
                active[output_name] = True

    # --- repr ---------------------------------------------------------------------------------------------------

    def _description_for_display(self) -> str:
        description = self.description or ""
        if self._workflow_map is not None:
            description = f"{description}\n\n{format_workflow(self._workflow_map)}"
        return description

    def _banner(self) -> str:
        triggers = self.trigger_inputs
        if self._workflow_map is not None or not triggers:
            return ""
        rule = "  " + "=" * 100
        return "\n".join([
            "",
            rule,
            "  This pipeline contains blocks that are selected at runtime based on inputs.",
            f"  Trigger Inputs: {triggers}",
            f"  Use `get_execution_blocks()` to see selected blocks (e.g. `get_execution_blocks({triggers[0]}=...)`).",
            rule,
        ])


class LoopSequentialPipelineBlocks(_CompositeBlocks):
    """A loop wrapper. Subclasses define ``loop_inputs`` (and the seed-era ``loop_intermediate_inputs``),
    ``loop_intermediate_outputs``, ``description`` and ``__call__``, which typically reads::

        block_state = self.get_block_state(state)
        for i in range(block_state.num_steps):
            components, block_state = self.loop_step(components, block_state, i=i)
        self.set_block_state(state, block_state)
        return components, state

    The sub-blocks must be leaves; they are called as ``block(components, block_state, **loop_kwargs)`` and
    share the one BlockState, so values accumulate across blocks and iterations.
    """

    def __init__(self) -> None:
        self._build_sub_blocks()
        self._validate_sub_blocks()

    def _validate_sub_blocks(self) -> None:
        for name, block in self.sub_blocks.items():
            if getattr(block, "sub_blocks", None):
                raise ValueError(
                    f"In {type(self).__name__}, sub_blocks must be leaf blocks (no sub_blocks). Block '{name}' "
                    f"({type(block).__name__}) has sub_blocks."
                )

    # wrapper-level declarations (override)
    @property
    def description(self) -> str:
        if "_description" in self.__dict__:
            return self.__dict__["_description"]
        raise NotImplementedError(f"`description` needs to be implemented by {type(self).__name__}")

    @property
    def loop_inputs(self) -> List[InputParam]:
        return []

    @property
    def loop_intermediate_inputs(self) -> List[InputParam]:
        """Seed-era spelling: loop-level values produced by earlier blocks (treated like ``loop_inputs``)."""
        return []

    @property
    def loop_intermediate_outputs(self) -> List[OutputParam]:
        return []

    @property
    def loop_expected_components(self) -> List[ComponentSpec]:
        return []

    @property
    def loop_expected_configs(self) -> List[ConfigSpec]:
        return []

    @property
    def loop_required_inputs(self) -> List[str]:
        return [p.name for p in self._loop_level_inputs() if p.required and p.name is not None]

    def _loop_level_inputs(self) -> List[InputParam]:
        params = list(self.loop_inputs)
        seen = {input_key(p) for p in params}
        for p in self.loop_intermediate_inputs:
            if input_key(p) not in seen:
                seen.add(input_key(p))
                params.append(p)
        return params

    @property
    def expected_components(self) -> List[ComponentSpec]:
        result = _CompositeBlocks.expected_components.fget(self)
        for spec in self.loop_expected_components:
            if spec not in result:
                result.append(spec)
        return result

    @property
    def expected_configs(self) -> List[ConfigSpec]:
        result = _CompositeBlocks.expected_configs.fget(self)
        for spec in self.loop_expected_configs:
            if spec not in result:
                result.append(spec)
        return result

    @property
    def required_inputs(self) -> List[str]:
        names = list(self.loop_required_inputs)
        for block in self._sub_block_list():
            for name in block.required_inputs:
                if name not in names:
                    names.append(name)
        return names

    @property
    def inputs(self) -> List[InputParam]:
        result = self._loop_level_inputs()
        required = {p.name for p in result if p.required}
        seen = {input_key(p) for p in result}
        produced: Set[str] = set()
        for block in self._sub_block_list():
            for param in block._declared_inputs():
                if param.required:
                    required.add(param.name)
                key = input_key(param)
                if key in seen or (param.name is not None and param.name in produced):
                    continue
                seen.add(key)
                result.append(param)
            produced.update(p.name for p in block.intermediate_outputs if p.name is not None)
        return _remark_required(result, required)

    def _declared_inputs(self) -> List[InputParam]:
        return self.inputs

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        result = _CompositeBlocks.intermediate_outputs.fget(self)
        names = {p.name for p in result}
        result.extend(p for p in self.loop_intermediate_outputs if p.name not in names)
        return result

    @property
    def outputs(self) -> List[OutputParam]:
        blocks = self._sub_block_list()
        return list(blocks[-1].intermediate_outputs) if blocks else []

    def loop_step(self, components: Any, block_state: BlockState, **kwargs: Any) -> Tuple[Any, BlockState]:
        """Run every sub-block once on ``block_state``, passing ``kwargs`` (e.g. ``i``, ``t``)."""
        name = block = None
        try:
            for name, block in self.sub_blocks.items():
                components, block_state = block(components, block_state, **kwargs)
        except Exception as e:
            self._report_error(name, block, e)
            raise
        return components, block_state

    def __call__(self, components: Any, state: PipelineState) -> Tuple[Any, PipelineState]:
        raise NotImplementedError("`__call__` method needs to be implemented by the subclass")

    def _description_for_display(self) -> str:
        try:
            return self.description or ""
        except NotImplementedError:
            return ""


class ConditionalPipelineBlocks(_CompositeBlocks):
    """Runs one of its branches, chosen at run time by :meth:`select_block` from the trigger inputs
    (``block_trigger_inputs``). When no branch is selected the ``default_block_name`` branch runs, or, without a
    default, the whole block is skipped."""

    block_trigger_inputs: List[Optional[str]] = []
    default_block_name: Optional[str] = None

    def __init__(self) -> None:
        classes, names = list(self.block_classes), list(self.block_names)
        if len(classes) != len(names):
            raise ValueError(
                f"In {type(self).__name__}, the number of block_classes and block_names must be the same "
                f"(got {len(classes)} classes and {len(names)} names {names})."
            )
        if self.default_block_name is not None and self.default_block_name not in names:
            raise ValueError(
                f"In {type(self).__name__}, default_block_name '{self.default_block_name}' must be one of "
                f"block_names: {names}"
            )
        self._build_sub_blocks()

    def select_block(self, **trigger_inputs: Any) -> Optional[str]:
        """Name of the branch to run for these trigger values (None: default branch or skip)."""
        raise NotImplementedError(f"`select_block` method needs to be implemented by {type(self).__name__}")

    def _trigger_names(self) -> List[str]:
        return [t for t in self.block_trigger_inputs if t is not None]

    def _collect_triggers(self, found: Set[str]) -> None:
        found.update(self._trigger_names())
        super()._collect_triggers(found)

    def _resolve(self, values: Dict[str, Any]) -> Optional[str]:
        name = self.select_block(**{t: values.get(t) for t in self._trigger_names()})
        if name is None:
            name = self.default_block_name
        if name is not None and name not in self.sub_blocks:
            raise ValueError(
                f"{type(self).__name__}.select_block returned {name!r}, which is not one of its blocks "
                f"{list(self.sub_blocks)}"
            )
        return name

    @property
    def model_name(self) -> Optional[str]:  # type: ignore[override]
        blocks = self._sub_block_list()
        return getattr(blocks[0], "model_name", None) if blocks else None

    @property
    def required_inputs(self) -> List[str]:
        if self.default_block_name is None:
            return []
        blocks = self._sub_block_list()
        if not blocks:
            return []
        common = list(blocks[0].required_inputs)
        for block in blocks[1:]:
            others = set(block.required_inputs)
            common = [n for n in common if n in others]
        return common

    @property
    def inputs(self) -> List[InputParam]:
        merged = combine_inputs(*((n, b._declared_inputs()) for n, b in self.sub_blocks.items()
                                  if isinstance(b, ModularPipelineBlocks)))
        # a trigger no branch declares is still read from the state: declare it so users can pass it
        names = {p.name for p in merged}
        for trigger in self._trigger_names():
            if trigger not in names:
                names.add(trigger)
                merged.append(InputParam(trigger, description=f"Selects the branch of {type(self).__name__} to run."))
        return _remark_required(merged, self.required_inputs)

    def _declared_inputs(self) -> List[InputParam]:
        return self.inputs

    @property
    def outputs(self) -> List[OutputParam]:
        return combine_outputs(*((n, b.outputs) for n, b in self.sub_blocks.items()
                                 if isinstance(b, ModularPipelineBlocks)))

    def __call__(self, pipeline: Any, state: PipelineState) -> Tuple[Any, PipelineState]:
        name = self._resolve({t: state.get(t) for t in self._trigger_names()})
        if name is None:
            logger.info(f"{type(self).__name__}: no trigger input present and no default block; skipping.")
            return pipeline, state
        return self._run_sub_block(name, self.sub_blocks[name], pipeline, state)

    def get_execution_blocks(self, *args: str, **kwargs: Any) -> Any:
        """The block that runs when the named inputs are present (None when skipped); nested composites are
        resolved further."""
        active = {a: True for a in args}
        active.update(kwargs)
        name = self._resolve(active)
        if name is None:
            return None
        block = self.sub_blocks[name]
        if getattr(block, "sub_blocks", None) and not isinstance(block, LoopSequentialPipelineBlocks):
            return block.get_execution_blocks(**active)
        return block

    def _banner(self) -> str:
        triggers = self.trigger_inputs
        if not triggers:
            return ""
        rule = "  " + "=" * 100
        return "\n".join([
            "",
            rule,
            "  This pipeline contains blocks that are selected at runtime based on inputs.",
            f"  Trigger Inputs: {triggers}",
            rule,
        ])

    def _sub_block_line(self, index: int, name: str, block: Any) -> str:
        marker = " [default]" if name == self.default_block_name else ""
        return f"    • {name}{marker} ({type(block).__name__})"


class AutoPipelineBlocks(ConditionalPipelineBlocks):
    """A conditional block with one trigger input per branch (``block_trigger_inputs``, same order as
    ``block_names``). The first branch whose trigger is present wins; a ``None`` trigger marks the default."""

    def __init__(self) -> None:
        if type(self).default_block_name is not None:
            raise ValueError(
                f"In {type(self).__name__}, do not set `default_block_name` for AutoPipelineBlocks. Use `None` in "
                "`block_trigger_inputs` to specify the default block."
            )
        super().__init__()
        triggers = list(self.block_trigger_inputs)
        if not (len(self.block_classes) == len(self.block_names) == len(triggers)):
            raise ValueError(
                f"In {type(self).__name__}, the number of block_classes, block_names, and block_trigger_inputs must "
                f"be the same (got {len(self.block_classes)}, {len(self.block_names)} and {len(triggers)})."
            )
        if None in triggers:
            self.default_block_name = self.block_names[triggers.index(None)]

    def select_block(self, **trigger_inputs: Any) -> Optional[str]:
        for trigger, name in zip(self.block_trigger_inputs, self.block_names):
            if trigger is not None and trigger_inputs.get(trigger) is not None:
                return name
        return None
