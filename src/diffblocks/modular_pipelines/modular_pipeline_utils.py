"""Declarations used by modular blocks: parameters, component/config specs, the ordered ``sub_blocks`` dict,
input/output merging and the generated block documentation.

Nothing here runs a model; these are the nouns that blocks use to describe themselves. The data-flow
machinery that reads them lives in :mod:`.pipeline_blocks` and :mod:`.pipeline_state`.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import textwrap
import types
import typing
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# load-id tagging
# ---------------------------------------------------------------------------------------------------------------------

LOAD_ID_ATTR = "_diffblocks_load_id"
# diffusers scripts read/write this spelling; we set both and read both.
LOAD_ID_ATTR_COMPAT = "_diffusers_load_id"


def get_load_id(obj: Any) -> Optional[str]:
    """The load id an object was tagged with by :meth:`ComponentSpec.load`/``create`` (None if untagged).

    Both ``_diffblocks_load_id`` and diffusers' ``_diffusers_load_id`` are honoured; if a user overwrote one of
    them with ``"null"`` (to say "this object no longer matches its checkpoint"), ``"null"`` wins.
    """
    ours = getattr(obj, LOAD_ID_ATTR, None)
    theirs = getattr(obj, LOAD_ID_ATTR_COMPAT, None)
    if ours is None:
        return theirs
    if theirs is None or theirs == ours:
        return ours
    return "null" if "null" in (ours, theirs) else ours


def set_load_id(obj: Any, load_id: str) -> None:
    """Tag ``obj`` with ``load_id`` under both attribute spellings (silently skipped for objects without __dict__)."""
    for attr in (LOAD_ID_ATTR, LOAD_ID_ATTR_COMPAT):
        try:
            setattr(obj, attr, load_id)
        except (AttributeError, TypeError):
            return


# ---------------------------------------------------------------------------------------------------------------------
# InsertableDict
# ---------------------------------------------------------------------------------------------------------------------


class InsertableDict(OrderedDict):
    """An ordered dict whose entries can be inserted at a position (used for every ``sub_blocks``)."""

    def insert(self, key: str, value: Any, index: int) -> "InsertableDict":
        """Place ``(key, value)`` at list position ``index`` (list.insert semantics); an existing ``key`` moves."""
        if not isinstance(key, str):
            raise TypeError(f"`key` must be a str, got {type(key).__name__}")
        if not isinstance(index, int):
            raise TypeError(f"`index` must be an int, got {type(index).__name__}")
        items = [(k, v) for k, v in self.items() if k != key]
        items.insert(index, (key, value))
        self.clear()
        self.update(items)
        return self

    def __repr__(self) -> str:
        if not self:
            return "InsertableDict()"
        lines = []
        for i, (key, value) in enumerate(self.items()):
            if isinstance(value, type):
                shown = f"<class '{value.__module__}.{value.__name__}'>"
            else:
                shown = f"<obj '{type(value).__module__}.{type(value).__name__}'>"
            lines.append(f"  {i}: ({key!r}, {shown})")
        return "InsertableDict([\n" + "\n".join(lines) + "\n])"


# ---------------------------------------------------------------------------------------------------------------------
# InputParam / OutputParam
# ---------------------------------------------------------------------------------------------------------------------

# name -> InputParam fields. Each template is the common declaration of a standard pipeline input.
_INPUT_TEMPLATES: Dict[str, Dict[str, Any]] = {
    "prompt": dict(type_hint=str, required=True, description="The prompt or prompts to guide image generation."),
    "negative_prompt": dict(type_hint=str, description="The prompt or prompts not to guide the image generation."),
    "max_sequence_length": dict(type_hint=int, default=512, description="Maximum token length of the prompt."),
    "height": dict(type_hint=int, description="Height in pixels of the generated image."),
    "width": dict(type_hint=int, description="Width in pixels of the generated image."),
    "num_inference_steps": dict(type_hint=int, default=50, description="Number of denoising steps."),
    "num_images_per_prompt": dict(type_hint=int, default=1, description="Number of images to generate per prompt."),
    "generator": dict(type_hint=Any, description="Torch generator(s) that make the generation deterministic."),
    "sigmas": dict(type_hint=List[float], description="Custom sigmas for the denoising schedule."),
    "strength": dict(type_hint=float, default=0.9, description="How much to transform the reference image."),
    "image": dict(type_hint=Any, required=True, description="Reference image(s) (PIL image or list of them)."),
    "latents": dict(type_hint=Any, description="Pre-generated noisy latents to start from."),
    "timesteps": dict(type_hint=Any, description="Timesteps for the denoising process."),
    "output_type": dict(type_hint=str, default="pil", description="Output format: 'pil', 'np', 'pt' or 'latent'."),
    "attention_kwargs": dict(type_hint=dict, description="Extra keyword arguments for the attention processors."),
    "denoiser_input_fields": dict(
        name=None, kwargs_type="denoiser_input_fields", description="Conditioning tensors for the denoiser."
    ),
    "mask_image": dict(type_hint=Any, required=True, description="Mask image for inpainting."),
    "padding_mask_crop": dict(type_hint=int, description="Padding of the crop around the mask."),
    "control_image": dict(type_hint=Any, required=True, description="ControlNet conditioning image."),
    "control_guidance_start": dict(type_hint=float, default=0.0, description="When ControlNet starts applying."),
    "control_guidance_end": dict(type_hint=float, default=1.0, description="When ControlNet stops applying."),
    "controlnet_conditioning_scale": dict(type_hint=float, default=1.0, description="ControlNet output scale."),
    "layers": dict(type_hint=int, default=4, description="Number of layers to generate."),
    "prompt_embeds": dict(type_hint=Any, required=True, description="Text embeddings of the prompt."),
    "prompt_embeds_mask": dict(type_hint=Any, required=True, description="Mask of the prompt embeddings."),
    "negative_prompt_embeds": dict(type_hint=Any, description="Text embeddings of the negative prompt."),
    "negative_prompt_embeds_mask": dict(type_hint=Any, description="Mask of the negative prompt embeddings."),
    "image_latents": dict(type_hint=Any, required=True, description="Latents of the reference image."),
    "batch_size": dict(type_hint=int, default=1, description="Number of prompts."),
    "dtype": dict(type_hint="torch.dtype", default="__torch.float32__", description="Data type of the model inputs."),
}

_OUTPUT_TEMPLATES: Dict[str, Dict[str, Any]] = {
    "images": dict(type_hint=list, description="The generated images."),
    "videos": dict(type_hint=list, description="The generated videos."),
    "latents": dict(type_hint=Any, description="The denoised latents."),
    "prompt_embeds": dict(
        type_hint=Any, kwargs_type="denoiser_input_fields", description="Text embeddings of the prompt."
    ),
    "prompt_embeds_mask": dict(
        type_hint=Any, kwargs_type="denoiser_input_fields", description="Mask of the prompt embeddings."
    ),
    "negative_prompt_embeds": dict(
        type_hint=Any, kwargs_type="denoiser_input_fields", description="Text embeddings of the negative prompt."
    ),
    "negative_prompt_embeds_mask": dict(
        type_hint=Any, kwargs_type="denoiser_input_fields", description="Mask of the negative prompt embeddings."
    ),
    "image_latents": dict(type_hint=Any, description="Latents of the reference image."),
}


def _from_template(cls, templates, template_name, note, overrides):
    if template_name not in templates:
        raise ValueError(f"{cls.__name__} template for {template_name} not found")
    values = dict(templates[template_name])
    values["name"] = overrides.get("name", values.get("name", template_name))
    if note and values.get("description"):
        values["description"] = f"{values['description']} ({note})"
    if values.get("default") == "__torch.float32__":  # resolved here so importing this module stays light
        import torch

        values["default"] = torch.float32
    values.update(overrides)
    return cls(**values)


@dataclass
class InputParam:
    """One input a block reads from the pipeline state.

    ``name=None`` together with ``kwargs_type="X"`` declares a group input: the block receives every state value
    tagged ``X`` (both as ``block_state.X`` dict and as individual attributes).
    """

    name: Optional[str] = None
    type_hint: Any = None
    default: Any = None
    required: bool = False
    description: str = ""
    kwargs_type: Optional[str] = None
    metadata: Optional[Dict[str, Any]] = None
    defaults_by_block: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"<{self.name}: {'required' if self.required else 'optional'}, default={self.default}>"

    @classmethod
    def template(cls, template_name: str, note: Optional[str] = None, **overrides: Any) -> "InputParam":
        """A standard input (e.g. ``InputParam.template("prompt")``) with optional field overrides."""
        return _from_template(cls, _INPUT_TEMPLATES, template_name, note, overrides)


@dataclass
class OutputParam:
    """One value a block writes to the pipeline state; ``kwargs_type`` tags it for group inputs."""

    name: Optional[str] = None
    type_hint: Any = None
    description: str = ""
    kwargs_type: Optional[str] = None
    metadata: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        hint = getattr(self.type_hint, "__name__", None) or str(self.type_hint)
        return f"<{self.name}: {hint}>"

    @classmethod
    def template(cls, template_name: str, note: Optional[str] = None, **overrides: Any) -> "OutputParam":
        """A standard output (e.g. ``OutputParam.template("images")``) with optional field overrides."""
        return _from_template(cls, _OUTPUT_TEMPLATES, template_name, note, overrides)


def input_key(param: InputParam) -> str:
    """Identity of an input for merging: its name, or ``*_<kwargs_type>`` for a group input."""
    return param.name if param.name is not None else f"*_{param.kwargs_type}"


def _distinct_defaults(defaults: Dict[str, Any]) -> bool:
    values = list(defaults.values())
    first = values[0]
    for v in values[1:]:
        try:
            same = v is first or bool(v == first)
        except Exception:  # tensors and other objects without a boolean ==
            same = v is first
        if not same:
            return True
    return False


def combine_inputs(*named_input_lists: Tuple[str, Sequence[InputParam]]) -> List[InputParam]:
    """Merge the inputs of alternative branches ``(block_name, inputs)``.

    One entry per name (group inputs per kwargs_type), the first declaration representing it. When the branches
    disagree on the default, the result is a copy with ``default=None`` and ``defaults_by_block`` recording every
    branch's default (nested maps are prefixed ``"outer.inner"``); the branch that runs applies its own default.
    """
    representative: Dict[str, InputParam] = {}
    defaults: Dict[str, Dict[str, Any]] = {}
    for block_name, params in named_input_lists:
        for param in params:
            key = input_key(param)
            if key not in representative:
                representative[key] = param
                defaults[key] = {}
            if param.defaults_by_block:
                for inner, value in param.defaults_by_block.items():
                    defaults[key][f"{block_name}.{inner}"] = value
            else:
                defaults[key][block_name] = param.default
    result = []
    for key, param in representative.items():
        if len(defaults[key]) > 1 and _distinct_defaults(defaults[key]):
            param = replace(param, default=None, defaults_by_block=dict(defaults[key]))
        result.append(param)
    return result


def combine_outputs(*named_output_lists: Tuple[str, Sequence[OutputParam]]) -> List[OutputParam]:
    """Merge outputs: one per name, first wins, except that a later tagged (kwargs_type) entry replaces an untagged
    one."""
    merged: Dict[str, OutputParam] = {}
    for _, params in named_output_lists:
        for param in params:
            existing = merged.get(param.name)
            if existing is None or (existing.kwargs_type is None and param.kwargs_type is not None):
                merged[param.name] = param
    return list(merged.values())


# ---------------------------------------------------------------------------------------------------------------------
# ComponentSpec / ConfigSpec
# ---------------------------------------------------------------------------------------------------------------------

_LOADING_FIELDS = ("pretrained_model_name_or_path", "subfolder", "variant", "revision")
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".sft")


def _is_torch_module_class(cls: Any) -> bool:
    try:
        import torch

        return isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    except ImportError:  # pragma: no cover
        return False


def _is_auto_model_class(cls: Any) -> bool:
    return isinstance(cls, type) and cls.__name__.startswith("AutoModel")


def _library_of(cls: type) -> str:
    module = cls.__module__ or ""
    root = module.split(".")[0]
    if root == "diffblocks" and getattr(cls, "_library_name", None):
        return cls._library_name  # our CLIP text encoders/tokenizers are written as transformers', like diffusers
    if root == "transformers":
        return "transformers"
    if root in ("diffblocks", "diffusers"):
        # folders written by diffblocks must load in diffusers: same library name
        return "diffusers"
    return module


def class_to_pair(obj_or_cls: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(library, class name)`` as written in model index files; ``(None, None)`` for None."""
    if obj_or_cls is None:
        return (None, None)
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return (_library_of(cls), cls.__name__)


def resolve_class(library: Optional[str], class_name: Optional[str]) -> Optional[type]:
    """The class named ``class_name`` of ``library`` (``"diffusers"`` resolves to diffblocks); None if unknown."""
    if not class_name:
        return None
    if library == "transformers":
        from ..models.clip import own_transformers_class

        own = own_transformers_class(class_name)  # CLIP text encoders/tokenizers: diffblocks' classes
        if own is not None:
            return own
    candidates = []
    if library in (None, "diffusers", "diffblocks") or (library or "").startswith(("diffusers.", "diffblocks.")):
        candidates += ["diffblocks", "diffblocks.modular_pipelines", "diffblocks.schedulers", "diffblocks.models"]
        if library and library.startswith(("diffusers.", "diffblocks.")):
            candidates.insert(0, "diffblocks" + library[library.index("."):])
    elif library:
        candidates.append(library)
    if library in (None,):
        candidates.append("transformers")
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            value = getattr(module, class_name)
        except Exception:  # lazy table pointing at a module that has not landed
            continue
        if isinstance(value, type):
            return value
    return None


@dataclass(eq=False)
class ComponentSpec:
    """How a pipeline obtains one component.

    ``default_creation_method="from_pretrained"`` (models, tokenizers): loaded lazily by :meth:`load` from
    ``pretrained_model_name_or_path``/``subfolder``/``variant``/``revision``. ``"from_config"`` (schedulers,
    guiders, image processors): built immediately by :meth:`create` from ``config``.
    Two specs are equal when their ``name``, ``load_id`` and creation method match (type and config are ignored).
    """

    name: Optional[str] = None
    type_hint: Any = None
    description: Optional[str] = None
    config: Any = None
    pretrained_model_name_or_path: Optional[str] = None
    subfolder: Optional[str] = ""
    variant: Optional[str] = None
    revision: Optional[str] = None
    default_creation_method: str = "from_pretrained"
    repo: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.default_creation_method not in ("from_pretrained", "from_config"):
            raise ValueError(
                f"`default_creation_method` must be 'from_pretrained' or 'from_config', got "
                f"{self.default_creation_method!r}"
            )
        if self.repo is not None and self.pretrained_model_name_or_path is None:
            self.pretrained_model_name_or_path = self.repo
        if isinstance(self.pretrained_model_name_or_path, os.PathLike):
            self.pretrained_model_name_or_path = os.fspath(self.pretrained_model_name_or_path)

    def __hash__(self) -> int:
        return hash((self.name, self.load_id, self.default_creation_method))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComponentSpec):
            return NotImplemented
        return (self.name, self.load_id, self.default_creation_method) == (
            other.name,
            other.load_id,
            other.default_creation_method,
        )

    @classmethod
    def loading_fields(cls) -> List[str]:
        """The fields that identify a checkpoint, in load-id order."""
        return list(_LOADING_FIELDS)

    @property
    def load_id(self) -> str:
        """``"repo|subfolder|variant|revision"`` (None shown as ``"null"``), or ``"null"`` for from_config specs."""
        if self.default_creation_method == "from_config":
            return "null"
        parts = [getattr(self, f) for f in _LOADING_FIELDS]
        return "|".join("null" if p is None else str(p) for p in parts)

    @classmethod
    def decode_load_id(cls, load_id: str) -> Dict[str, Optional[str]]:
        """Split a load id back into its four loading fields (``"null"`` -> None)."""
        if not isinstance(load_id, str):
            raise TypeError(f"`load_id` must be a str, got {type(load_id).__name__}")
        result: Dict[str, Optional[str]] = {f: None for f in _LOADING_FIELDS}
        if load_id == "null":
            return result
        for f, part in zip(_LOADING_FIELDS, load_id.split("|")):
            result[f] = None if part == "null" else part
        return result

    @classmethod
    def from_component(cls, name: str, component: Any) -> "ComponentSpec":
        """Describe an existing object: loaded-by-spec objects keep their checkpoint fields; config objects
        (schedulers, guiders, processors) become from_config specs carrying their config."""
        load_id = get_load_id(component)
        if load_id is not None and load_id != "null":
            return cls(name=name, type_hint=type(component), **cls.decode_load_id(load_id))
        if _is_torch_module_class(type(component)):
            raise ValueError(
                f"Cannot create ComponentSpec for '{name}' from a nn.Module ({type(component).__name__}) that was not "
                "created with `ComponentSpec.load()`: its checkpoint is unknown."
            )
        config = getattr(component, "config", None)
        if config is None and callable(getattr(component, "to_dict", None)) and not isinstance(component, dict):
            # transformers' processors and tokenizer-like objects describe themselves with ``to_dict()``
            try:
                described = component.to_dict()
            except Exception:  # pragma: no cover - an object whose to_dict needs arguments
                described = None
            if isinstance(described, dict):
                config = {k: v for k, v in described.items() if not k.startswith("_") and k != "image_processor_type"}
        if config is not None and (isinstance(config, dict) or hasattr(config, "items")):
            if load_id is None:
                logger.warning(
                    "Component was not created using `ComponentSpec`, defaulting to `from_config` creation method"
                )
            return cls(name=name, type_hint=type(component), config=config, default_creation_method="from_config")
        raise ValueError(
            f"Cannot create ComponentSpec from {name}({type(component).__name__}). Currently "
            "ComponentSpec.from_component() only supports objects loaded with ComponentSpec.load() and objects with "
            "a `config` (schedulers, guiders, image processors)."
        )

    # --- creation --------------------------------------------------------------------------------------------

    def create(self, config: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Any:
        """Build the component from a config (``type_hint.from_config`` or the class constructor)."""
        if not isinstance(self.type_hint, type):
            raise ValueError(
                f"`type_hint` is required when using from_config creation method (component {self.name!r} has "
                f"type_hint={self.type_hint!r})."
            )
        config = dict(config if config is not None else (self.config or {}))
        from_config = getattr(self.type_hint, "from_config", None)
        if from_config is not None and hasattr(self.type_hint, "config_name"):
            component = self.type_hint.from_config(config, **kwargs)
        else:
            params = inspect.signature(self.type_hint.__init__).parameters
            accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            merged = {**config, **kwargs}
            init_kwargs = {k: v for k, v in merged.items() if accepts_any or k in params}
            component = self.type_hint(**init_kwargs)
        set_load_id(component, "null")
        component_config = getattr(component, "config", None)
        if component_config is not None:
            self.config = component_config
        return component

    def load(self, **kwargs: Any) -> Any:
        """Load the component with ``type_hint.from_pretrained`` (``AutoModel`` when no type_hint is set).

        Loading fields passed here override the spec's for this load; the spec then records the values used and
        the object is tagged with its load id. ``torch_dtype``/``dtype`` (synonyms) are dropped for classes that
        are not torch modules (tokenizers, processors).
        """
        dtype = _pop_dtype(kwargs)
        passed = {f: kwargs.pop(f) for f in _LOADING_FIELDS if f in kwargs}
        load_fields = {f: passed.get(f, getattr(self, f)) for f in _LOADING_FIELDS}
        path = load_fields.pop("pretrained_model_name_or_path")
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str):
            from ..hub import builtin_folder

            path = builtin_folder(path) or path  # models shipped with diffblocks load from their folder
        if path is None:
            raise ValueError(
                f"`pretrained_model_name_or_path` info is required when using `load` method (component "
                f"{self.name!r}): set it on the ComponentSpec or pass it to load()."
            )
        is_single_file = isinstance(path, str) and (
            path.endswith(_SINGLE_FILE_SUFFIXES) and (os.path.isfile(path) or "://" in path)
        )
        if is_single_file:
            if self.type_hint is None:
                raise ValueError(
                    f"`type_hint` is required when loading a single file model but is missing for component: "
                    f"{self.name}"
                )
            loader = getattr(self.type_hint, "from_single_file", None)
            if loader is None:
                raise ValueError(f"{self.type_hint.__name__} cannot load a single file ({path!r}) for {self.name}")
            component = loader(path, **_dtype_kwargs(self.type_hint, dtype), **kwargs)
        else:
            hint = self.type_hint
            if hint is None:
                try:
                    from ..models import AutoModel  # type: ignore[attr-defined]
                except Exception as e:  # pragma: no cover - foundation not landed
                    raise ValueError(f"Unable to load {self.name} without `type_hint`: {e}") from e
                hint = AutoModel
            loader = getattr(hint, "from_pretrained", None)
            if loader is None:
                raise ValueError(
                    f"Unable to load {self.name} using load method: {getattr(hint, '__name__', hint)} has no "
                    "from_pretrained"
                )
            call_kwargs = dict(kwargs)
            call_kwargs.update(_dtype_kwargs(hint, dtype))
            for key in ("subfolder", "variant", "revision"):
                value = load_fields[key]
                if value is not None and not (key == "subfolder" and value == ""):
                    call_kwargs[key] = value
            try:
                component = loader(path, **call_kwargs)
            except Exception as e:
                if self.type_hint is None:
                    raise ValueError(f"Unable to load {self.name} without `type_hint`: {e}") from e
                raise ValueError(f"Unable to load {self.name} using load method: {e}") from e
            if self.type_hint is None:
                self.type_hint = type(component)
        self.pretrained_model_name_or_path = path
        for key in ("subfolder", "variant", "revision"):
            setattr(self, key, load_fields[key])
        set_load_id(component, self.load_id)
        return component


def _pop_dtype(kwargs: Dict[str, Any]) -> Any:
    """Take ``torch_dtype``/``dtype`` out of kwargs (synonyms; both and different -> ValueError)."""
    torch_dtype = kwargs.pop("torch_dtype", None)
    dtype = kwargs.pop("dtype", None)
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(
            f"You have passed both `dtype` ({dtype}) and `torch_dtype` ({torch_dtype}). Please only pass `dtype` "
            "(or `torch_dtype`), they mean the same thing."
        )
    return dtype if dtype is not None else torch_dtype


def _dtype_kwargs(cls: Any, dtype: Any) -> Dict[str, Any]:
    """The dtype keyword the loader of ``cls`` understands (none for non-model classes)."""
    if dtype is None:
        return {}
    if _is_torch_module_class(cls) or _is_auto_model_class(cls):
        module = getattr(cls, "__module__", "") or ""
        if module.startswith("transformers"):
            return {"dtype": dtype}
        return {"torch_dtype": dtype}
    return {}


@dataclass
class ConfigSpec:
    """A pipeline-level configuration value (``pipe.config[name]``) with its default."""

    name: str
    default: Any
    description: Optional[str] = None


# ---------------------------------------------------------------------------------------------------------------------
# documentation
# ---------------------------------------------------------------------------------------------------------------------


def type_to_str(type_hint: Any) -> str:
    """Readable name of a type hint: ``A | B`` for unions, the class name, or the hint's str."""
    if type_hint is Any:
        return ""
    origin = typing.get_origin(type_hint)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        return " | ".join(type_to_str(a) or "Any" for a in typing.get_args(type_hint))
    if origin is not None:
        return str(type_hint).replace("typing.", "")
    name = getattr(type_hint, "__name__", None)
    return name if name else str(type_hint)


def _wrap(text: str, indent: int) -> str:
    text = text or "TODO: Add description."
    return textwrap.fill(text, width=115, initial_indent=" " * indent, subsequent_indent=" " * indent)


def _unique_defaults(defaults: Dict[str, Any]) -> List[Any]:
    seen: List[Any] = []
    for v in defaults.values():
        if not any(v is s or _safe_eq(v, s) for s in seen):
            seen.append(v)
    return seen


def _safe_eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def format_input_params(params: Sequence[InputParam], indent_level: int = 2) -> str:
    pad = " " * indent_level
    lines = [f"{pad}Inputs:"]
    for p in params:
        if p.name is None and p.kwargs_type:
            head = f"**{p.kwargs_type} (`None`, *optional*):"
        else:
            hint = type_to_str(p.type_hint)
            if p.required:
                head = f"{p.name} (`{hint}`):"
            elif p.defaults_by_block:
                shown = " or ".join(str(v) for v in _unique_defaults(p.defaults_by_block))
                head = f"{p.name} (`{hint}`, *optional*, defaults to {shown}, depending on the workflow):"
            elif p.default is not None:
                head = f"{p.name} (`{hint}`, *optional*, defaults to {p.default}):"
            else:
                head = f"{p.name} (`{hint}`, *optional*):"
        lines.append(f"{pad}    {head}")
        lines.append(_wrap(p.description, indent_level + 8))
    return "\n".join(lines)


def format_output_params(params: Sequence[OutputParam], indent_level: int = 2) -> str:
    if not params:
        return ""
    pad = " " * indent_level
    lines = [f"{pad}Outputs:"]
    for p in params:
        lines.append(f"{pad}    {p.name} (`{type_to_str(p.type_hint)}`):")
        lines.append(_wrap(p.description, indent_level + 8))
    return "\n".join(lines)


def format_components(components: Sequence[ComponentSpec], indent_level: int = 2, add_empty_lines: bool = False) -> str:
    pad = " " * indent_level
    lines = [f"{pad}Components:"]
    for c in components:
        line = f"{pad}    {c.name} (`{type_to_str(c.type_hint) if c.type_hint is not None else 'None'}`)"
        if c.description:
            line += f": {c.description}"
        loading = [f"{f}={getattr(c, f)}" for f in _LOADING_FIELDS if getattr(c, f)]
        if loading and c.default_creation_method == "from_pretrained":
            line += f" [{', '.join(loading)}]"
        lines.append(line)
        if add_empty_lines:
            lines.append("")
    return "\n".join(lines)


def format_configs(configs: Sequence[ConfigSpec], indent_level: int = 2, add_empty_lines: bool = False) -> str:
    pad = " " * indent_level
    lines = [f"{pad}Configs:"]
    for c in configs:
        line = f"{pad}    {c.name} (default: {c.default})"
        if c.description:
            line += f": {c.description}"
        lines.append(line)
        if add_empty_lines:
            lines.append("")
    return "\n".join(lines)


def make_doc_string(
    inputs: Sequence[InputParam],
    outputs: Sequence[OutputParam],
    description: str = "",
    class_name: Optional[str] = None,
    expected_components: Optional[Sequence[ComponentSpec]] = None,
    expected_configs: Optional[Sequence[ConfigSpec]] = None,
) -> str:
    """The generated documentation of a block: description, components, configs, inputs and outputs."""
    parts = []
    if class_name:
        parts.append(f"class {class_name}\n\n")
    if description:
        parts.append("\n".join("  " + line.rstrip() for line in description.strip().split("\n")) + "\n\n")
    if expected_components:
        parts.append(format_components(expected_components) + "\n\n")
    if expected_configs:
        parts.append(format_configs(expected_configs) + "\n\n")
    parts.append(format_input_params(inputs))
    parts.append("\n\n")
    parts.append(format_output_params(outputs))
    return "".join(parts)


def format_workflow(workflow_map: Dict[str, Any]) -> str:
    """``Supported workflows:`` list of a ``_workflow_map``."""
    lines = ["Supported workflows:"]
    for name, triggers in workflow_map.items():
        alternatives = triggers if isinstance(triggers, (tuple, list)) else (triggers,)
        rendered = []
        for alt in alternatives:
            needed = [k for k, v in alt.items() if v]
            if needed:
                rendered.append(", ".join(f"`{k}`" for k in needed))
        if rendered:
            lines.append(f"  - `{name}`: requires " + " or ".join(rendered))
        else:
            lines.append(f"  - `{name}`: default (no additional inputs required)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# requirements
# ---------------------------------------------------------------------------------------------------------------------


def _flatten_requirements(reqs: Dict[str, Any], out: List[Tuple[str, str]]) -> None:
    for key, value in reqs.items():
        if isinstance(value, dict):
            _flatten_requirements(value, out)
            continue
        if not key:
            raise ValueError("Requirement package names must be non-empty strings.")
        spec = "" if value is None else str(value).strip()
        if spec and spec[0].isdigit():
            spec = "==" + spec
        out.append((key, spec))


def validate_requirements(reqs: Optional[Dict[str, Any]]) -> Dict[str, str]:
    """Normalize ``{package: specifier}`` (nested dicts flattened) and warn when the environment does not satisfy
    it. Returns the flat dict."""
    if reqs is None:
        return {}
    if not isinstance(reqs, dict):
        raise ValueError("Requirements must be provided as a dictionary mapping package names to version specifiers.")
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    pairs: List[Tuple[str, str]] = []
    _flatten_requirements(reqs, pairs)
    merged: Dict[str, str] = {}
    for pkg, spec in pairs:
        if pkg not in merged or not merged[pkg]:
            merged[pkg] = spec
        elif spec and spec != merged[pkg]:
            try:
                merged[pkg] = str(SpecifierSet(f"{merged[pkg]},{spec}"))
            except InvalidSpecifier:
                logger.warning(f"Cannot combine requirements {merged[pkg]!r} and {spec!r} for {pkg}; keeping the first.")
    from importlib import metadata

    for pkg, spec in merged.items():
        try:
            installed = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            installed = None
            logger.warning(f"{pkg} was specified in the requirements but wasn't found in the current environment.")
        if spec:
            try:
                specifier = SpecifierSet(spec)
            except InvalidSpecifier as e:
                raise ValueError(f"Requirement specifier '{spec}' for {pkg} is invalid.") from e
            if installed is not None and not specifier.contains(installed, prereleases=True):
                logger.warning(
                    f"{pkg} requirement '{spec}' is not satisfied by the installed version {installed}. "
                    "Things might work unexpected."
                )
    return merged
