"""``DiffusionPipeline``: the base of every classic pipeline.

A pipeline is a bag of named components (models, scheduler, tokenizers, ...) plus a few plain settings, all
recorded in its config (``model_index.json``): a component is stored as ``(library, ClassName)`` and a setting
as its value. This module loads such folders (local or from the Hugging Face cache), saves them so diffusers can
read them back, moves pipelines between devices and dtypes, builds one pipeline from another without copying
weights (``from_pipe``), and offers the progress bar and offload helpers pipelines use while running.

Libraries in ``model_index.json``:

* ``"diffusers"`` and pipeline sub-modules (``"stable_diffusion"``, ``"stable_diffusion_xl"``, ``"controlnet"``,
  ...) are looked up in diffblocks' own lazy export tables (models, schedulers, pipelines);
* ``"transformers"`` classes come from ``transformers`` (``CLIPFeatureExtractor`` is read as
  ``CLIPImageProcessor``), except the CLIP text encoders and tokenizers, which are diffblocks' own
  (``models/clip.py``; they are recorded back as ``"transformers"`` so diffusers reads the folders);
* anything else (custom code) is refused with a clear error.

``from_pipe`` differs from diffusers on purpose: it never changes the dtype of a component it shares with the
source pipeline (diffusers issue 12754: ``from_pipe(pipe)`` silently cast the *source* pipeline to float32).
Only components passed to ``from_pipe`` that the source pipeline does not hold are cast to the requested
``torch_dtype``/``dtype``; a shared component whose dtype differs from the requested one is left alone and a
warning says so (use ``pipe.to(dtype)`` to cast every pipeline sharing it).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch

from ..configuration import ConfigMixin
from ..models.outputs import BaseOutput
from ..utils.image_utils import numpy_to_pil as _numpy_to_pil
from ..utils.torch_utils import unwrap_module

logger = logging.getLogger(__name__)


@dataclass
class ImagePipelineOutput(BaseOutput):
    """Output of image pipelines: ``images`` is a list of PIL images, a (B, H, W, C) array or a tensor."""

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]


MODEL_INDEX_NAME = "model_index.json"
_SIGNATURE_CACHE: Dict[Tuple[type, type, Tuple[str, ...]], Tuple[Tuple[str, ...], Tuple[str, ...]]] = {}
#: libraries in model_index.json that name diffblocks' own classes (besides pipeline sub-module names)
_OWN_LIBRARIES = ("diffusers", "diffblocks")
#: transformers class names renamed since the folders were written
_TRANSFORMERS_RENAMES = {"CLIPFeatureExtractor": "CLIPImageProcessor"}
_SINGLE_DEVICE_MAPS_REFUSED = ("balanced", "auto", "balanced_low_0", "sequential")
_WEIGHT_PREFIXES = r"(?:diffusion_pytorch_model|model|pytorch_model)"
_SHARD = r"(?:-\d{5}-of-\d{5})"

SAFETY_CHECKER_WARNING = (
    "You have disabled the safety checker for {cls} by passing `safety_checker=None`. Ensure that you abide by "
    "the conditions of the Stable Diffusion license and do not expose unfiltered results in services or "
    "applications open to the public. Both the diffusers team and Hugging Face strongly recommend keeping the "
    "safety filter enabled in all public-facing circumstances, disabling it only for use cases that involve "
    "analyzing network behavior or auditing its results. For more information, please have a look at "
    "https://github.com/huggingface/diffusers/pull/254 ."
)


# ------------------------------------------------------------------------------------------- class lookup
def _own_tables() -> List[Tuple[str, Dict[str, str]]]:
    """(package, export table) pairs searched for diffblocks classes, most specific first."""
    tables = []
    for package in ("diffblocks.models", "diffblocks.schedulers", "diffblocks.pipelines", "diffblocks"):
        module = importlib.import_module(package)
        tables.append((package, getattr(module, "_EXPORTS", {})))
    return tables


def resolve_own_class(class_name: str) -> Optional[type]:
    """The diffblocks class exported as ``class_name`` (models, schedulers, pipelines, top level) or None."""
    for package, table in _own_tables():
        if class_name in table:
            module_name = table[class_name]
            try:
                module = importlib.import_module(module_name, package)
            except ImportError as err:
                raise ImportError(
                    f"{class_name} is part of diffblocks' API but its module {package}{module_name} could not be "
                    f"imported: {err}"
                ) from err
            return getattr(module, class_name)
    return None


def resolve_class(library: Optional[str], class_name: Optional[str], *, component: str = "", pipeline: str = "") -> type:
    """Turn a model_index entry ``[library, class_name]`` into a class; unknown names raise a ValueError."""
    where = f" (component `{component}` of {pipeline})" if component else ""
    if not isinstance(class_name, str) or not isinstance(library, str):
        raise ValueError(f"Invalid model_index entry{where}: expected [library, class name], got {[library, class_name]}")
    if library == "transformers":
        from ..models.clip import own_transformers_class

        own = own_transformers_class(class_name)
        if own is not None:  # CLIP text encoders and tokenizers: diffblocks' classes (same files)
            return own
        import transformers

        name = _TRANSFORMERS_RENAMES.get(class_name, class_name)
        cls = getattr(transformers, name, None)
        if cls is None:
            raise ValueError(
                f"The class {class_name!r}{where} is not available in the installed transformers "
                f"{transformers.__version__}."
            )
        return cls
    if library in _OWN_LIBRARIES or re.fullmatch(r"[a-z0-9_]+", library):
        cls = resolve_own_class(class_name)
        if cls is not None:
            return cls
        raise ValueError(
            f"The class {class_name!r} (library {library!r}){where} is not supported by diffblocks. It must be one of "
            f"the classes exported by diffblocks.models, diffblocks.schedulers or diffblocks.pipelines."
        )
    raise ValueError(
        f"The library {library!r} of class {class_name!r}{where} is not supported: diffblocks loads classes from "
        "'diffusers' (its own re-implementations), its pipeline sub-modules and 'transformers'; custom code is not "
        "loaded."
    )


def _loadable_bases() -> List[type]:
    """Base classes that know how to save and load themselves (save_pretrained / from_pretrained)."""
    bases: List[type] = [DiffusionPipeline]
    for module_name, name in (
        ("diffblocks.models.modeling_utils", "ModelMixin"),
        ("diffblocks.schedulers.scheduling_utils", "SchedulerMixin"),
    ):
        try:
            bases.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):  # pragma: no cover - until the module lands
            pass
    # only when transformers is loaded: a class deriving from its bases implies it is (importing it costs seconds)
    if "transformers" in sys.modules:
        import transformers

        for name in (
            "PreTrainedModel",
            "PreTrainedTokenizerBase",
            "FeatureExtractionMixin",
            "ImageProcessingMixin",
            "ProcessorMixin",
        ):
            base = getattr(transformers, name, None)
            if base is not None:
                bases.append(base)
    return bases


def _loadable_base_of(cls: type) -> Optional[type]:
    from ..models.clip import is_own_clip_class

    if is_own_clip_class(cls):
        return cls  # diffblocks' CLIP text encoders / tokenizers save and load themselves
    for base in _loadable_bases():
        if isinstance(cls, type) and issubclass(cls, base):
            return base
    return None


def class_library_tuple(obj: Any) -> Tuple[Optional[str], Optional[str]]:
    """``(library, ClassName)`` recorded in model_index.json for a component object (``(None, None)`` for None).

    diffblocks classes are written as ``"diffusers"`` (or their pipeline sub-module, e.g. ``"stable_diffusion"``)
    so folders stay interchangeable with diffusers; transformers classes as ``"transformers"``.
    """
    if obj is None or (isinstance(obj, (list, tuple)) and len(obj) > 0 and obj[0] is None):
        return (None, None)
    obj = unwrap_module(obj)
    cls = obj if isinstance(obj, type) else type(obj)
    module = cls.__module__ or ""
    parts = module.split(".")
    name = cls.__name__
    library = cls.__dict__.get("_library_name") or getattr(cls, "_library_name", None)
    if parts[0] == "diffblocks" and library:
        return (library, name)  # e.g. our CLIP classes are recorded as transformers', like diffusers folders
    if parts[0] == "diffblocks":
        if len(parts) >= 3 and parts[1] == "pipelines" and parts[2] not in ("pipeline_utils", "auto_pipeline"):
            return (parts[2], name)
        return ("diffusers", name)
    if parts[0] == "transformers":
        import transformers

        # transformers 5 may hand out backend-specific classes (e.g. CLIPImageProcessorPil when torchvision is
        # missing): record the public name so diffusers and other installs read the folder the same way
        if name.endswith("Pil") and getattr(transformers, name[:-3], None) is not None:
            return ("transformers", name[:-3])
        return ("transformers", name)
    return (module, name)


# ------------------------------------------------------------------------------------------- small helpers
def _is_module(obj: Any) -> bool:
    return isinstance(obj, torch.nn.Module)


def _module_device(module: torch.nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    first = None
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
        first = first or tensor.dtype
    return first or torch.float32


def _resolve_dtype(dtype: Any, torch_dtype: Any, *, where: str) -> Any:
    """Merge the ``dtype`` and ``torch_dtype`` arguments (both names are accepted; passing both is an error)."""
    if dtype is not None and torch_dtype is not None:
        raise ValueError(
            f"{where}: you have passed both `dtype` and `torch_dtype` ({dtype} and {torch_dtype}); pass only one."
        )
    value = dtype if dtype is not None else torch_dtype
    if value is None:
        return None
    if isinstance(value, dict):
        bad = {k: v for k, v in value.items() if not isinstance(v, torch.dtype)}
        if bad:
            raise TypeError(f"{where}: `torch_dtype` dict values must be torch.dtype, got {bad}")
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    if not isinstance(value, torch.dtype):
        raise TypeError(
            f"{where}: `torch_dtype` must be a torch.dtype (e.g. torch.float16), a dict of them keyed by component "
            f"name with an optional 'default', or None; got {value!r}"
        )
    return value


def _dtype_for(dtype: Any, name: str) -> Optional[torch.dtype]:
    if isinstance(dtype, dict):
        return dtype.get(name, dtype.get("default", torch.float32))
    return dtype


def _variant_weight_regex(variant: Optional[str]) -> "re.Pattern[str]":
    if variant is None:
        return re.compile(rf"^{_WEIGHT_PREFIXES}(?:{_SHARD}?\.(?:safetensors|bin)|\.(?:safetensors|bin)\.index\.json)$")
    v = re.escape(variant)
    return re.compile(
        rf"^{_WEIGHT_PREFIXES}(?:\.{v}{_SHARD}?\.(?:safetensors|bin)|\.(?:safetensors|bin)\.index\.{v}\.json)$"
    )


def _folder_variants(folder: str) -> List[str]:
    """Variant names of the weight files directly in ``folder`` (e.g. ["fp16", "non_ema"])."""
    found = set()
    pattern = re.compile(rf"^{_WEIGHT_PREFIXES}\.([A-Za-z0-9_]+)(?:{_SHARD})?\.(?:safetensors|bin)$")
    legacy = re.compile(rf"^{_WEIGHT_PREFIXES}{_SHARD}\.([A-Za-z0-9_]+)\.(?:safetensors|bin)$")
    for name in os.listdir(folder):
        match = pattern.match(name) or legacy.match(name)
        if match and match.group(1) not in ("safetensors", "bin"):
            found.add(match.group(1))
    return sorted(found)


def _has_plain_weights(folder: str) -> bool:
    regex = _variant_weight_regex(None)
    return any(regex.match(name) for name in os.listdir(folder))


def _signature_types(pipeline_class: type) -> Dict[str, Tuple[type, ...]]:
    """``{param: (accepted classes...)}`` from the type hints of ``pipeline_class.__init__`` (best effort)."""
    import typing

    try:
        hints = typing.get_type_hints(pipeline_class.__init__)
    except Exception:  # noqa: BLE001 - unresolvable forward references: no checks
        return {}
    result: Dict[str, Tuple[type, ...]] = {}
    for name, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin is Union or type(hint).__name__ == "UnionType":
            args = tuple(a for a in typing.get_args(hint) if isinstance(a, type))
        elif isinstance(hint, type):
            args = (hint,)
        else:
            continue
        result[name] = args
    return result


# ------------------------------------------------------------------------------------------- the pipeline
class DiffusionPipeline(ConfigMixin):
    """Base class of classic pipelines: component registry, loading/saving, device/dtype moves, from_pipe.

    Subclasses declare their components as ``__init__`` parameters and call ``self.register_modules(...)``
    with them (and ``self.register_to_config(...)`` for plain settings).
    """

    config_name = MODEL_INDEX_NAME
    model_cpu_offload_seq: Optional[str] = None
    hf_device_map: Optional[Dict[str, Any]] = None
    _optional_components: List[str] = []
    _exclude_from_cpu_offload: List[str] = []
    _callback_tensor_inputs: List[str] = ["latents"]
    _load_connected_pipes = False
    _is_onnx = False

    # -------------------------------------------------------------------------------- registration
    def register_modules(self, **kwargs: Any) -> None:
        """Set each ``name=component`` as an attribute and record ``(library, ClassName)`` in the config."""
        for name, module in kwargs.items():
            # the attribute first: a config key that is already an attribute gets no deprecated-access descriptor
            # (which would cost CPython's specialised loads of `pipe.unet` & co. in the denoise loop)
            object.__setattr__(self, name, module)
            self.register_to_config(**{name: class_library_tuple(module)})

    def __setattr__(self, name: str, value: Any) -> None:
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in self.__dict__ and name in internal:
            current = internal[name]
            if isinstance(current, (list, tuple)) and len(current) == 2:
                # a component: record the new object's (library, class); unlike diffusers this also works when
                # the entry was null, so `pipe.safety_checker = checker` is saved with the pipeline
                self.register_to_config(**{name: class_library_tuple(value)})
            else:
                self.register_to_config(**{name: value})
        object.__setattr__(self, name, value)

    @classmethod
    def _get_signature_keys(cls, obj: Any) -> Tuple[List[str], List[str]]:
        """(expected component names, optional setting names) of ``obj.__init__``, both sorted.

        Parameters without a default, plus defaulted ones listed in ``_optional_components``, are components."""
        klass = obj if isinstance(obj, type) else type(obj)
        key = (cls, klass, tuple(cls._optional_components))
        cached = _SIGNATURE_CACHE.get(key)
        if cached is None:
            params = inspect.signature(klass.__init__).parameters
            expected, optional = set(), set()
            for name, param in params.items():
                if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue
                if param.default is inspect.Parameter.empty or name in cls._optional_components:
                    expected.add(name)
                else:
                    optional.add(name)
            cached = (tuple(sorted(expected)), tuple(sorted(optional)))
            _SIGNATURE_CACHE[key] = cached
        return list(cached[0]), list(cached[1])

    @classmethod
    def _get_signature_types(cls) -> Dict[str, Tuple[type, ...]]:
        return _signature_types(cls)

    @property
    def components(self) -> Dict[str, Any]:
        """``{name: component}`` for every component of the pipeline (optional ones may be None).

        ``OtherPipeline(**pipe.components)`` builds another pipeline sharing the same objects."""
        expected, optional = self._get_signature_keys(self)
        found = {
            k: getattr(self, k)
            for k in self.config.keys()
            if not k.startswith("_") and k not in optional and hasattr(self, k)
        }
        names = set(found)
        missing = set(expected) - names
        for name in missing & set(self._optional_components):
            found[name] = getattr(self, name, None)
        if set(found) != set(expected):
            raise ValueError(
                f"{self.__class__.__name__} has been incorrectly initialized or {self.__class__} is incorrectly "
                f"implemented. Expected {sorted(expected)} to be defined, but {sorted(found)} are defined."
            )
        return {k: found[k] for k in expected}

    @property
    def parameters(self) -> Dict[str, Any]:  # type: ignore[override]
        """Values of the pipeline's plain settings (e.g. ``requires_safety_checker``)."""
        _, optional = self._get_signature_keys(self)
        return {k: v for k, v in self.config.items() if k in optional}

    @property
    def name_or_path(self) -> Optional[str]:
        return self.config.get("_name_or_path", None)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} {self.to_json_string()}"

    def _module_items(self) -> List[Tuple[str, torch.nn.Module]]:
        """(name, nn.Module) components in sorted name order."""
        names = self._get_signature_keys(self)[0]
        attrs = self.__dict__
        return [(n, attrs[n]) for n in names if isinstance(attrs.get(n), torch.nn.Module)]

    # -------------------------------------------------------------------------------- device / dtype
    def to(self, *args: Any, **kwargs: Any) -> "DiffusionPipeline":
        """Move/cast every nn.Module component in place and return ``self``.

        Accepts ``to(device)``, ``to(dtype)``, ``to(device, dtype)``, ``to(None, dtype)`` and the keywords
        ``device=``, ``dtype=`` (``silence_dtype_warnings=`` is accepted and ignored).
        """
        kwargs.pop("silence_dtype_warnings", None)
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        if kwargs:
            logger.debug("DiffusionPipeline.to ignores the keyword arguments %s", sorted(kwargs))
        if len(args) > 2:
            raise ValueError(
                f"`to()` takes at most two positional arguments (device, dtype), got {len(args)}: {args!r}"
            )
        if len(args) == 2:
            if isinstance(args[0], torch.dtype):
                raise ValueError(
                    "When passing two arguments, make sure the first corresponds to `device` and the second to `dtype`."
                )
            if device is not None or dtype is not None:
                raise ValueError("Pass `device` and `dtype` either positionally or as keywords, not both.")
            device, dtype = args
        elif len(args) == 1:
            if isinstance(args[0], torch.dtype):
                if dtype is not None:
                    raise ValueError("`dtype` was passed both positionally and as a keyword argument.")
                dtype = args[0]
            else:
                if device is not None:
                    raise ValueError("`device` was passed both positionally and as a keyword argument.")
                device = args[0]
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"`dtype` must be a torch.dtype, got {dtype!r}")
        if device is not None:
            if isinstance(device, int):
                device = torch.device("cuda", device)
            elif not isinstance(device, (str, torch.device)):
                raise TypeError(f"`device` must be a str, int or torch.device, got {device!r}")
            device = torch.device(device)

        if device is not None and device.type != "cpu":
            if getattr(self, "_offload_mode", None) == "sequential":
                raise ValueError(
                    "It seems like you have activated sequential model offloading by calling "
                    "`enable_sequential_cpu_offload`, but are now attempting to move the pipeline to GPU. This is "
                    "not compatible with offloading. Please, move your pipeline `.to('cpu')` or consider removing "
                    "the move altogether if you use sequential offloading."
                )
            if getattr(self, "_offload_mode", None) == "model":
                logger.warning(
                    "You are trying to call `.to('%s')` after enabling model CPU offload. It is strongly recommended "
                    "against doing so as memory gains from offloading are likely to be lost. Offloading "
                    "automatically takes care of moving the individual components to the device they need.",
                    device,
                )
        for _, module in self._module_items():
            if getattr(self, "_offload_mode", None) == "sequential" and device is not None:
                continue  # weights are streamed by the hooks; moving them would defeat the offload
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        """The first component's device that is not cpu/meta, else the first component's device, else cpu."""
        modules = self._module_items()
        for _, module in modules:
            dev = _module_device(module)
            if dev.type not in ("cpu", "meta"):
                return dev
        return _module_device(modules[0][1]) if modules else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first nn.Module component (sorted by name), float32 if there is none."""
        modules = self._module_items()
        return _module_dtype(modules[0][1]) if modules else torch.float32

    @property
    def _execution_device(self) -> torch.device:
        """Where computations run: the ``_diffblocks_execution_device`` set by offload hooks on a model
        component (first in ``model_cpu_offload_seq`` order), else :attr:`device`."""
        modules = self._module_items()
        if self.model_cpu_offload_seq:
            order = {n: i for i, n in enumerate(self.model_cpu_offload_seq.split("->"))}
            modules = sorted(modules, key=lambda item: order.get(item[0], len(order)))
        for _, module in modules:
            exec_device = module.__dict__.get("_diffblocks_execution_device")
            if exec_device is not None:
                return torch.device(exec_device)
        return self.device

    # -------------------------------------------------------------------------------- progress bar
    def progress_bar(self, iterable: Optional[Iterable] = None, total: Optional[int] = None):
        """A tqdm bar configured by :meth:`set_progress_bar_config` (hidden when stderr is not a terminal,
        unless ``disable=False`` was set)."""
        from tqdm.auto import tqdm

        config = self.__dict__.get("_progress_bar_config")
        if config is None:
            config = {}
            object.__setattr__(self, "_progress_bar_config", config)
        elif not isinstance(config, dict):
            raise ValueError(f"`self._progress_bar_config` should be of type `dict`, but is {type(config)}.")
        options = dict(config)
        if "disable" not in options:
            from ..utils.logging import is_progress_bar_enabled

            options["disable"] = None if is_progress_bar_enabled() else True
        if iterable is not None:
            return tqdm(iterable, **options)
        if total is not None:
            return tqdm(total=total, **options)
        raise ValueError("Either `total` or `iterable` has to be defined.")

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options passed to tqdm by :meth:`progress_bar` (e.g. ``disable=True``, ``desc="..."``)."""
        object.__setattr__(self, "_progress_bar_config", dict(kwargs))

    # -------------------------------------------------------------------------------- misc API
    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> List[PIL.Image.Image]:
        """(B, H, W, C) floats in [0, 1] -> list of PIL images."""
        return _numpy_to_pil(images)

    @property
    def interrupt(self) -> bool:
        """True once a step-end callback asked the running ``__call__`` to stop."""
        return bool(self.__dict__.get("_interrupt", False))

    def enable_attention_slicing(self, slice_size: Union[str, int, None] = "auto") -> None:
        """Forward ``slice_size`` to components that implement ``set_attention_slice``; otherwise a no-op
        (attention already runs through ``scaled_dot_product_attention``, which is memory-efficient)."""
        for _, module in self._module_items():
            setter = getattr(module, "set_attention_slice", None)
            if callable(setter):
                setter(slice_size)

    def disable_attention_slicing(self) -> None:
        self.enable_attention_slicing(None)

    def _vae_or_error(self, what: str) -> Any:
        vae = self.__dict__.get("vae")
        if vae is None or not callable(getattr(vae, what, None)):
            raise ValueError(
                f"`{type(self).__name__}` has no VAE component supporting `{what}()`; VAE slicing/tiling needs a "
                "`vae` such as AutoencoderKL."
            )
        return vae

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (same as ``pipe.vae.enable_slicing()``)."""
        self._vae_or_error("enable_slicing").enable_slicing()

    def disable_vae_slicing(self) -> None:
        self._vae_or_error("disable_slicing").disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode/decode large images in overlapping tiles (same as ``pipe.vae.enable_tiling()``)."""
        self._vae_or_error("enable_tiling").enable_tiling()

    def disable_vae_tiling(self) -> None:
        self._vae_or_error("disable_tiling").disable_tiling()

    def enable_xformers_memory_efficient_attention(self, attention_op: Optional[Callable] = None) -> None:
        """No-op kept for API compatibility: attention already uses PyTorch's fused kernels."""
        logger.info("diffblocks uses torch scaled_dot_product_attention; xformers is not needed")

    def disable_xformers_memory_efficient_attention(self) -> None:
        return None

    def run_blocks(self, blocks: Any, state: Any = None, **inputs: Any) -> Any:
        """Run a modular ``blocks`` object with this pipeline as its components holder and return the state.

        Each keyword becomes a user input of a new ``PipelineState`` (or of ``state``), tagged with the
        ``kwargs_type`` the blocks declare for it; declared inputs that are not given get their declared
        default. ``blocks(self, state)`` is then called, so blocks read ``components.unet`` etc. from here.
        """
        from ..modular_pipelines import PipelineState

        if state is None:
            state = PipelineState()
        declared = getattr(blocks, "inputs", None) or []
        for param in declared:
            name = getattr(param, "name", None)
            kind = getattr(param, "kwargs_type", None)
            if name is not None and name in inputs:
                state.set_input(name, inputs.pop(name), kind)
            elif name is None and kind and isinstance(inputs.get(kind), dict):
                for key, value in inputs.pop(kind).items():
                    state.set_input(key, value, kind)
            elif name is not None and name not in state:
                state.set_input(name, getattr(param, "default", None), kind)
        for name, value in inputs.items():
            state.set_input(name, value)
        _, state = blocks(self, state)
        return state

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs: Any) -> "DiffusionPipeline":
        """Load a pipeline folder (local path or Hub repo id / HF cache).

        The class comes from ``_class_name`` in model_index.json when called on ``DiffusionPipeline`` itself,
        otherwise the called class is used. Components can be passed to replace the stored ones (``None``
        skips optional ones); plain settings (``requires_safety_checker=False``) override the config.

        Keyword arguments: ``torch_dtype``/``dtype`` (a dtype, or a dict ``{component: dtype, "default": dtype}``),
        ``variant``, ``use_safetensors``, ``low_cpu_mem_usage``, ``device_map`` (None or one device, e.g. "cpu"),
        ``cache_dir``, ``local_files_only``, ``revision``, ``token``, ``force_download``.
        """
        if isinstance(pretrained_model_name_or_path, os.PathLike):
            pretrained_model_name_or_path = os.fspath(pretrained_model_name_or_path)
        if not isinstance(pretrained_model_name_or_path, str) or not pretrained_model_name_or_path:
            raise TypeError(
                "`pretrained_model_name_or_path` must be a local folder or a Hub repo id (str), got "
                f"{pretrained_model_name_or_path!r}"
            )
        where = f"{cls.__name__}.from_pretrained"
        cache_dir = kwargs.pop("cache_dir", None)
        force_download = kwargs.pop("force_download", False)
        kwargs.pop("proxies", None)
        local_files_only = kwargs.pop("local_files_only", None)
        token = kwargs.pop("token", None)
        revision = kwargs.pop("revision", None)
        dtype = _resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None), where=where)
        device_map = kwargs.pop("device_map", None)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", True)
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        custom_pipeline = kwargs.pop("custom_pipeline", None)
        for unsupported in ("custom_revision", "trust_remote_code", "dduf_file", "use_onnx", "provider",
                            "sess_options", "provider_options", "max_memory", "offload_folder",
                            "offload_state_dict", "quantization_config", "disable_mmap", "use_flashpack",
                            "load_connected_pipeline"):
            value = kwargs.pop(unsupported, None)
            if value not in (None, False):
                logger.warning("%s: the argument `%s=%r` is not supported by diffblocks and is ignored.",
                               where, unsupported, value)
        if custom_pipeline is not None:
            raise ValueError(
                f"{where}: `custom_pipeline={custom_pipeline!r}` is not supported: diffblocks does not run code "
                "downloaded with a checkpoint."
            )
        if variant is not None and not isinstance(variant, str):
            raise TypeError(f"`variant` must be a str such as 'fp16' or 'non_ema', got {variant!r}")
        if use_safetensors not in (None, True, False):
            raise TypeError(f"`use_safetensors` must be None, True or False, got {use_safetensors!r}")
        target_device = _check_device_map(device_map)

        # 1. local folder
        if os.path.isdir(pretrained_model_name_or_path):
            folder = pretrained_model_name_or_path
        else:
            folder = _download_pipeline_folder(
                pretrained_model_name_or_path,
                cache_dir=cache_dir,
                revision=revision,
                local_files_only=local_files_only,
                token=token,
                force_download=force_download,
                variant=variant,
                use_safetensors=use_safetensors,
                skip_components=[k for k, v in kwargs.items()],
            )
        config_dict = cls._read_model_index(folder)
        config_dict.pop("_ignore_files", None)

        # 2. class
        pipeline_class = cls._pick_pipeline_class(config_dict)

        # 3. variants present per component folder
        model_variants = _component_variants(folder, config_dict, variant)

        # 4. route kwargs
        expected, optional = pipeline_class._get_signature_keys(pipeline_class)
        passed_components = {k: kwargs.pop(k) for k in list(kwargs) if k in expected}
        passed_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in optional}
        if kwargs:
            logger.warning(
                "Keyword arguments %s are not expected by %s and will be ignored.", kwargs, pipeline_class.__name__
            )
        unknown = {
            k: v for k, v in config_dict.items()
            if not k.startswith("_") and k not in expected and k not in optional
        }
        if unknown:
            logger.warning(
                "The config attributes %s were passed to %s, but are not expected and will be ignored. Please verify "
                "your %s configuration file.", unknown, pipeline_class.__name__, MODEL_INDEX_NAME,
            )
        init_kwargs: Dict[str, Any] = {
            k: config_dict[k] for k in optional if k in config_dict and k not in pipeline_class._optional_components
        }
        init_kwargs.update(passed_settings)

        # 5. components
        types = _signature_types(pipeline_class)
        names = [n for n in expected if n in config_dict or n in passed_components]
        from tqdm.auto import tqdm

        from ..utils.logging import tqdm_disable_option

        to_load = sum(1 for n in names if n not in passed_components and isinstance(config_dict.get(n), (list, tuple))
                      and None not in config_dict.get(n))
        loading_bar = tqdm(total=to_load, desc="Loading pipeline components...", unit="component",
                           disable=tqdm_disable_option(), leave=False)
        for name in names:
            entry = config_dict.get(name)
            is_entry = isinstance(entry, (list, tuple)) and len(entry) == 2
            if name in passed_components:
                obj = passed_components[name]
                if obj is not None and is_entry and entry[0] is not None:
                    _check_passed_component(name, obj, entry, pipeline_class)
                init_kwargs[name] = obj
                continue
            if not is_entry:
                raise ValueError(
                    f"The entry {name!r} of {os.path.join(folder, MODEL_INDEX_NAME)} must be [library, class name], "
                    f"got {entry!r}"
                )
            if entry[0] is None or entry[1] is None:
                continue  # intentionally absent component
            component_class = resolve_class(entry[0], entry[1], component=name, pipeline=pipeline_class.__name__)
            init_kwargs[name] = _load_component(
                name,
                component_class,
                folder,
                pipeline_class=pipeline_class,
                torch_dtype=_dtype_for(dtype, name),
                variant=model_variants.get(name),
                use_safetensors=use_safetensors,
                low_cpu_mem_usage=low_cpu_mem_usage,
            )
            if target_device is not None and _is_module(init_kwargs[name]):
                init_kwargs[name].to(target_device)
            loading_bar.set_postfix_str(name, refresh=False)
            loading_bar.update(1)
        loading_bar.close()

        missing = set(expected) - set(init_kwargs)
        allowed_missing = set(passed_components) | set(pipeline_class._optional_components)
        if missing and missing <= allowed_missing:
            for name in missing:
                init_kwargs[name] = passed_components.get(name)
        elif missing:
            have = sorted((set(init_kwargs) | set(passed_components)) - set(optional))
            raise ValueError(
                f"Pipeline {pipeline_class} expected {expected}, but only {have} were passed. Missing: "
                f"{sorted(missing - allowed_missing)} (neither in {MODEL_INDEX_NAME} nor passed as arguments)."
            )
        for name, obj in init_kwargs.items():
            accepted = types.get(name)
            if obj is None or not accepted or name in ("scheduler",) or "tokenizer" in name:
                continue
            if not isinstance(obj, accepted):
                logger.warning("Expected types for %s: %s, got %s.", name, accepted, type(obj))

        pipeline = pipeline_class(**init_kwargs)
        pipeline.register_to_config(_name_or_path=pretrained_model_name_or_path)
        if target_device is not None:
            pipeline.hf_device_map = {n: str(target_device) for n, _ in pipeline._module_items()}
        return pipeline

    @classmethod
    def _read_model_index(cls, folder: str) -> Dict[str, Any]:
        path = os.path.join(folder, MODEL_INDEX_NAME)
        if not os.path.isfile(path):
            raise EnvironmentError(f"Error no file named {MODEL_INDEX_NAME} found in directory {folder}.")
        try:
            with open(path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as err:
            raise EnvironmentError(f"It looks like the config file at '{path}' is not a valid JSON file.") from err
        if not isinstance(data, dict):
            raise EnvironmentError(f"The config file at '{path}' must hold a JSON object, got {type(data).__name__}.")
        return data

    @classmethod
    def _pick_pipeline_class(cls, config_dict: Dict[str, Any]) -> type:
        if cls is not DiffusionPipeline:
            return cls
        class_name = config_dict.get("_class_name")
        if class_name is None:
            raise ValueError(
                f"The class name could not be found in the configuration file {MODEL_INDEX_NAME}: it has no "
                "`_class_name` entry."
            )
        if isinstance(class_name, (list, tuple)):
            raise ValueError(
                f"{MODEL_INDEX_NAME} names a custom pipeline {list(class_name)}; diffblocks does not run code "
                "shipped with checkpoints."
            )
        try:
            found = resolve_own_class(class_name)
        except ImportError as err:
            raise NotImplementedError(
                f"The pipeline class {class_name!r} named by `_class_name` in {MODEL_INDEX_NAME} is part of "
                f"diffblocks' API but is not available in this build: {err}"
            ) from err
        if found is None or not (isinstance(found, type) and issubclass(found, DiffusionPipeline)):
            raise ValueError(
                f"The pipeline class {class_name!r} named by `_class_name` in {MODEL_INDEX_NAME} is not supported by "
                "diffblocks. Supported pipelines: " + ", ".join(_supported_pipeline_names())
            )
        return found

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs: Any) -> str:
        """Fetch (or find in the HF cache) the files of a pipeline repo and return the local snapshot folder."""
        return _download_pipeline_folder(
            pretrained_model_name,
            cache_dir=kwargs.pop("cache_dir", None),
            revision=kwargs.pop("revision", None),
            local_files_only=kwargs.pop("local_files_only", None),
            token=kwargs.pop("token", None),
            force_download=kwargs.pop("force_download", False),
            variant=kwargs.pop("variant", None),
            use_safetensors=kwargs.pop("use_safetensors", None),
            skip_components=list(kwargs),
        )

    # -------------------------------------------------------------------------------- saving
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Optional[Union[int, str]] = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write every component to ``save_directory/<name>/`` and the config to ``model_index.json``.

        The folder is written to a temporary sibling first and moved into place, so a failure leaves
        ``save_directory`` as it was. Saving into an existing folder (e.g. a ``variant="fp16"`` copy next to
        the full-precision weights) replaces only the files written now.
        """
        if push_to_hub:
            raise NotImplementedError("`push_to_hub=True` is not supported by diffblocks; upload the folder yourself.")
        if isinstance(save_directory, os.PathLike):
            save_directory = os.fspath(save_directory)
        if not isinstance(save_directory, str) or not save_directory:
            raise TypeError(f"`save_directory` must be a folder path, got {save_directory!r}")
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) is a file, expected a folder.")
        if variant is not None and (not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_]+", variant)):
            raise ValueError(f"`variant` must be a name made of letters, digits and '_' (e.g. 'fp16'), got {variant!r}")

        expected, _ = self._get_signature_keys(self)
        config = dict(self.config)
        targets = []
        for name in expected:
            entry = config.get(name)
            obj = getattr(self, name, None)
            if obj is None:
                continue
            save_fn = getattr(unwrap_module(obj), "save_pretrained", None)
            if _loadable_base_of(type(unwrap_module(obj))) is None or not callable(save_fn):
                logger.warning("self.%s=%s of type %s cannot be saved.", name, obj, type(obj))
                self.register_to_config(**{name: (None, None)})
                continue
            targets.append((name, unwrap_module(obj)))

        final = os.path.abspath(save_directory)
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.saving-", dir=parent)
        try:
            for name, obj in targets:
                save_kwargs = _save_kwargs_for(obj, safe_serialization=safe_serialization, variant=variant,
                                               max_shard_size=max_shard_size)
                obj.save_pretrained(os.path.join(staging, name), **save_kwargs)
            self.save_config(staging)
            _merge_into(staging, final, variant=variant)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)

    # -------------------------------------------------------------------------------- from_pipe
    @classmethod
    def from_pipe(cls, pipeline: "DiffusionPipeline", **kwargs: Any) -> "DiffusionPipeline":
        """Build a ``cls`` pipeline from the components of ``pipeline`` without copying any weights.

        Components (``unet=...``) and settings (``requires_safety_checker=...``) passed here override the
        source's. Shared components keep their dtype and device (see the module docstring); components passed
        here that the source does not hold are cast to ``torch_dtype``/``dtype`` when one is given.
        """
        if not isinstance(pipeline, DiffusionPipeline):
            raise TypeError(f"`pipeline` must be a DiffusionPipeline, got {type(pipeline).__name__}")
        where = f"{cls.__name__}.from_pipe"
        dtype = _resolve_dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None), where=where)
        if isinstance(dtype, dict):
            raise TypeError(f"{where}: `torch_dtype` must be one torch.dtype here, got a dict")
        if kwargs.pop("custom_pipeline", None) is not None:
            raise ValueError(f"{where}: `custom_pipeline` is not supported by diffblocks.")
        pipeline_class = cls if cls is not DiffusionPipeline else type(pipeline)

        original_config = dict(pipeline.config)
        expected, optional = pipeline_class._get_signature_keys(pipeline_class)
        params = inspect.signature(pipeline_class.__init__).parameters
        true_optional = {k for k in expected if params[k].default is not inspect.Parameter.empty}
        types = _signature_types(pipeline_class)
        name_or_path = original_config.pop("_name_or_path", None)

        passed = {k: kwargs.pop(k) for k in list(kwargs) if k in expected}
        carried: Dict[str, Any] = {}
        model_mixin = _model_mixin_class()
        for name, component in pipeline.components.items():
            if name not in expected or name in passed:
                continue
            accepted = types.get(name)
            if (
                model_mixin is None
                or not isinstance(component, model_mixin)
                or not accepted
                or type(component) in accepted
                or isinstance(component, accepted)
            ):
                carried[name] = component
            else:
                logger.warning(
                    "component %s is not switched over to new pipeline because type does not match the expected. "
                    "%s is %s while the new pipeline expect %s. please pass the component of the correct type to the "
                    "new pipeline. `from_pipe(..., %s=%s)`", name, name, type(component), accepted, name, name,
                )
        passed_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in optional}
        original_settings = {k: original_config[k] for k in original_config if k in optional and k not in passed_settings}
        for key in [k for k in original_config if k.startswith("_") and k[1:] in optional and k[1:] not in passed_settings]:
            original_settings[key[1:]] = original_config.pop(key)

        pipeline_kwargs = {**passed, **carried, **passed_settings, **original_settings, **kwargs}
        unused_config = {
            (k if k.startswith("_") else f"_{k}"): v for k, v in original_config.items() if k not in pipeline_kwargs
        }
        source_optional = list(getattr(pipeline, "_optional_components", []) or [])
        missing = set(expected) - set(source_optional) - set(pipeline_kwargs) - true_optional
        if missing:
            raise ValueError(
                f"Pipeline {pipeline_class} expected {expected}, but only {set(passed) | set(carried)} were passed"
            )

        new_pipeline = pipeline_class(**pipeline_kwargs)
        if name_or_path is not None:
            new_pipeline.register_to_config(_name_or_path=name_or_path)
        new_pipeline.register_to_config(**unused_config)

        if dtype is not None:
            shared_ids = {id(c) for c in pipeline.components.values() if c is not None}
            for name, component in new_pipeline.components.items():
                if not _is_module(component):
                    continue
                if id(component) in shared_ids:
                    if _module_dtype(component) != dtype:
                        logger.warning(
                            "%s: the shared component `%s` stays %s (requested %s): from_pipe never casts components "
                            "it shares with the source pipeline. Call `.to(%s)` on a pipeline to cast them for every "
                            "pipeline sharing them.", where, name, _module_dtype(component), dtype, dtype,
                        )
                else:
                    component.to(dtype=dtype)
        return new_pipeline

    # -------------------------------------------------------------------------------- offload
    def _offload_target(self, gpu_id: Optional[int], device: Union[str, torch.device, None], what: str) -> torch.device:
        if gpu_id is not None and (not isinstance(gpu_id, int) or isinstance(gpu_id, bool) or gpu_id < 0):
            raise ValueError(f"`gpu_id` must be a non-negative int or None, got {gpu_id!r}")
        if device is None:
            device = _default_accelerator()
            if device is None:
                raise RuntimeError(f"`{what}` requires accelerator, but not found")
        device = torch.device(device)
        if gpu_id is not None and device.index is not None:
            raise ValueError(
                f"You have passed both `gpu_id`={gpu_id} and an index as part of the passed device `device`={device}. "
                f"Cannot pass both. Please make sure to either not define `gpu_id` or not pass the index as part of "
                f"the device: `device`={device.type}"
            )
        if device.type == "cpu":
            self._offload_gpu_id = None
            return device
        index = gpu_id if gpu_id is not None else device.index
        if index is None:
            index = getattr(self, "_offload_gpu_id", None) or 0
        self._offload_gpu_id = index
        return torch.device(device.type, index)

    def enable_model_cpu_offload(self, gpu_id: Optional[int] = None, device: Union[str, torch.device, None] = None) -> None:
        """Keep models on the CPU and move each whole model to ``device`` right before it runs; the model
        before it in ``model_cpu_offload_seq`` goes back to the CPU. Models outside the sequence get their own
        hook, except those in ``_exclude_from_cpu_offload``, which stay on ``device``.

        ``device`` defaults to the available accelerator (``device="cpu"`` is accepted, mainly for testing)."""
        if self.model_cpu_offload_seq is None:
            raise ValueError(
                "Model CPU offload cannot be enabled because no `model_cpu_offload_seq` class attribute is set."
            )
        from .. import hooks

        target = self._offload_target(gpu_id, device, "enable_model_cpu_offload")
        self.remove_all_hooks()
        modules = dict(self._module_items())
        order = [n for n in self.model_cpu_offload_seq.split("->") if n in modules]
        chain = hooks.attach_offload_chain([modules[n] for n in order], target)
        extra = []
        for name, module in modules.items():
            if name in order:
                continue
            if name in self._exclude_from_cpu_offload:
                module.to(target)
            else:
                extra.append(hooks.attach_device_hook(module, target))
        object.__setattr__(self, "_offload_device", target)
        object.__setattr__(self, "_offload_mode", "model")
        object.__setattr__(self, "_offload_hooks", chain + extra)

    def enable_sequential_cpu_offload(self, gpu_id: Optional[int] = None, device: Union[str, torch.device, None] = None) -> None:
        """Keep weights on the CPU and stream each sub-module's own tensors to ``device`` while it runs
        (lowest memory, slowest). Components in ``_exclude_from_cpu_offload`` are moved to ``device``."""
        from .. import hooks

        target = self._offload_target(gpu_id, device, "enable_sequential_cpu_offload")
        self.remove_all_hooks()
        attached = []
        for name, module in self._module_items():
            if name in self._exclude_from_cpu_offload:
                module.to(target)
            else:
                attached.append(hooks.attach_sequential_offload(module, target))
        object.__setattr__(self, "_offload_device", target)
        object.__setattr__(self, "_offload_mode", "sequential")
        object.__setattr__(self, "_offload_hooks", attached)

    def maybe_free_model_hooks(self) -> None:
        """Called at the end of ``__call__``: with model offload on, send every model back to the CPU so the
        next call starts from the same state (the hooks stay armed)."""
        if getattr(self, "_offload_mode", None) != "model":
            return
        for hook in getattr(self, "_offload_hooks", []):
            if getattr(hook, "resident", False):
                hook.offload()

    def remove_all_hooks(self) -> None:
        """Remove offload hooks from every component (weights stay where they are)."""
        if getattr(self, "_offload_mode", None) is None:
            return
        from .. import hooks

        for _, module in self._module_items():
            hooks.remove_hooks(module)
        object.__setattr__(self, "_offload_mode", None)
        object.__setattr__(self, "_offload_hooks", [])

    def reset_device_map(self) -> None:
        """Remove hooks, move every model to the CPU and forget ``hf_device_map``."""
        self.remove_all_hooks()
        for _, module in self._module_items():
            module.to("cpu")
        self.hf_device_map = None


# ------------------------------------------------------------------------------------------- loading helpers
def _supported_pipeline_names() -> List[str]:
    from .. import pipelines

    return sorted(n for n in pipelines._EXPORTS if n.endswith("Pipeline") and n != "DiffusionPipeline")


def _model_mixin_class() -> Optional[type]:
    try:
        from ..models.modeling_utils import ModelMixin
    except ImportError:  # pragma: no cover
        return None
    return ModelMixin


def _default_accelerator() -> Optional[torch.device]:
    if torch.cuda.is_available():
        return torch.device("cuda")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return None


def _check_device_map(device_map: Any) -> Optional[torch.device]:
    if device_map is None:
        return None
    if isinstance(device_map, torch.device):
        return device_map
    if not isinstance(device_map, str):
        raise ValueError(f"`device_map` must be a string (one device such as 'cpu' or 'cuda'), got {device_map!r}")
    if device_map in _SINGLE_DEVICE_MAPS_REFUSED:
        raise NotImplementedError(
            f"{device_map} not supported. Supported strategies are: one device name such as cpu, cuda, cuda:1, mps"
        )
    try:
        return torch.device(device_map)
    except RuntimeError as err:
        raise NotImplementedError(
            f"{device_map} not supported. Supported strategies are: one device name such as cpu, cuda, cuda:1, mps"
        ) from err


def _component_variants(folder: str, config_dict: Dict[str, Any], variant: Optional[str]) -> Dict[str, Optional[str]]:
    """Which components load the requested variant (a folder with variant files) and which load plain weights."""
    result: Dict[str, Optional[str]] = {}
    if variant is None:
        return result
    for name, entry in config_dict.items():
        sub = os.path.join(folder, name)
        if name.startswith("_") or not isinstance(entry, (list, tuple)) or not os.path.isdir(sub):
            continue
        if variant in _folder_variants(sub):
            result[name] = variant
    if not result:
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available. No component folder of {folder} has weights named like `*.{variant}.safetensors` or "
            f"`*.{variant}.bin`."
        )
    plain = [n for n, e in config_dict.items() if isinstance(e, (list, tuple)) and os.path.isdir(os.path.join(folder, n))
             and n not in result and _has_plain_weights(os.path.join(folder, n))]
    if plain:
        logger.info("Loading `variant=%s` for %s and the non-variant weights for %s.", variant, sorted(result), sorted(plain))
    return result


def _check_passed_component(name: str, obj: Any, entry: Sequence[Any], pipeline_class: type) -> None:
    library, class_name = entry[0], entry[1]
    if library not in _OWN_LIBRARIES and library != "transformers":
        # a pipeline sub-module class (e.g. the safety checker): only warn
        try:
            expected_cls = resolve_class(library, class_name)
        except (ValueError, ImportError):
            expected_cls = None
        if expected_cls is not None and not isinstance(unwrap_module(obj), expected_cls):
            logger.warning(
                "You have passed a non-standard module %s. We cannot verify whether it has the correct type", obj
            )
        return
    try:
        expected_cls = resolve_class(library, class_name)
    except (ValueError, ImportError):
        return  # a class we cannot resolve: nothing to compare with
    actual = type(unwrap_module(obj))
    from ..models.clip import is_own_clip_class

    own_clip = is_own_clip_class(expected_cls)
    kind = "PreTrainedModel" if isinstance(expected_cls, type) and issubclass(expected_cls, torch.nn.Module) \
        else "PreTrainedTokenizerBase"
    if own_clip and (actual.__module__ or "").startswith("transformers"):
        # transformers' own models/tokenizers are accepted in place of our CLIP classes (same role, same files);
        # transformers is already imported since the object exists
        import transformers

        if issubclass(actual, getattr(transformers, kind)):
            return
        raise ValueError(f"`{name}`: {obj} is of type: {actual}, but should be {expected_cls} or transformers' {kind}")
    base = _loadable_base_of(expected_cls)
    if base is None:
        return
    if not issubclass(actual, base):
        if own_clip:
            raise ValueError(f"`{name}`: {obj} is of type: {actual}, but should be {base} (or transformers' {kind})")
        raise ValueError(f"`{name}`: {obj} is of type: {actual}, but should be {base}")


def _save_kwargs_for(obj: Any, *, safe_serialization: bool, variant: Optional[str], max_shard_size: Any) -> Dict[str, Any]:
    params = inspect.signature(obj.save_pretrained).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    wanted = {"safe_serialization": safe_serialization, "variant": variant}
    if max_shard_size is not None:
        wanted["max_shard_size"] = max_shard_size
    module = type(obj).__module__ or ""
    is_model = _is_module(obj)
    out = {}
    for key, value in wanted.items():
        if key in params or (accepts_any and is_model):
            out[key] = value
    if module.startswith("transformers") and is_model and "safe_serialization" in out:
        # transformers 5 always writes safetensors and no longer takes the argument
        if "safe_serialization" not in params:
            out.pop("safe_serialization")
    return out


def _merge_into(staging: str, final: str, *, variant: Optional[str]) -> None:
    """Move the staged pipeline folder into ``final``: a rename when ``final`` does not exist, otherwise a
    file-by-file replace that also drops stale weight files of the same variant in the touched components."""
    from ..utils.fs import normal_tree_permissions

    normal_tree_permissions(staging)
    if not os.path.exists(final):
        os.replace(staging, final)
        return
    stale_regex = _variant_weight_regex(variant)
    for root, _, files in os.walk(staging):
        rel = os.path.relpath(root, staging)
        dest_dir = final if rel == "." else os.path.join(final, rel)
        os.makedirs(dest_dir, exist_ok=True)
        if rel != ".":
            for existing in os.listdir(dest_dir):
                if existing not in files and stale_regex.match(existing):
                    os.remove(os.path.join(dest_dir, existing))
        for file_name in files:
            os.replace(os.path.join(root, file_name), os.path.join(dest_dir, file_name))


def _load_component(
    name: str,
    component_class: type,
    folder: str,
    *,
    pipeline_class: type,
    torch_dtype: Optional[torch.dtype],
    variant: Optional[str],
    use_safetensors: Optional[bool],
    low_cpu_mem_usage: bool,
) -> Any:
    """Load one component from ``folder/name`` (or the folder root for flat layouts)."""
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        path = folder
    base = _loadable_base_of(component_class)
    load = getattr(component_class, "from_pretrained", None)
    if base is None or not callable(load):
        raise ValueError(
            f"The component {component_class} of {pipeline_class} cannot be loaded as it does not seem to have any of "
            "the loading methods defined (from_pretrained on a diffblocks model, scheduler or pipeline, or a "
            "transformers model, tokenizer or processor)."
        )
    is_torch = issubclass(component_class, torch.nn.Module)
    kwargs: Dict[str, Any] = {}
    if is_torch:
        _check_plain_weights_exist(name, path, variant)
    if _is_transformers_class(component_class):  # incl. diffblocks' own PreTrainedModel subclasses
        if is_torch:
            # transformers 5 keeps the checkpoint's dtype when none is given; diffblocks models load float32 by
            # default (the seed: "fp16 weights are converted to the default fp32 precision"): same rule for both
            kwargs["dtype"] = torch_dtype if torch_dtype is not None else torch.float32
            if variant is not None:
                kwargs["variant"] = variant
            if use_safetensors is not None:
                kwargs["use_safetensors"] = use_safetensors
            from ..models.clip import load_clip_text_model, supports_fast_load

            if supports_fast_load(component_class):
                # CLIP text encoders: build the transformers model ourselves (same object, a fraction of the time)
                model = load_clip_text_model(component_class, path, **kwargs)
                if model is not None:
                    return model
    elif is_torch:
        kwargs.update(
            torch_dtype=torch_dtype,
            variant=variant,
            use_safetensors=use_safetensors,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
    logger.debug("Loading %s (%s) from %s with %s", name, component_class.__name__, path, kwargs)
    return load(path, **kwargs)


def _is_transformers_class(cls: type) -> bool:
    if (cls.__module__ or "").startswith("transformers"):
        return True
    if "transformers" not in sys.modules:
        return False
    import transformers

    bases = tuple(getattr(transformers, n) for n in ("PreTrainedModel", "PreTrainedTokenizerBase",
                                                     "ImageProcessingMixin", "FeatureExtractionMixin",
                                                     "ProcessorMixin") if hasattr(transformers, n))
    return issubclass(cls, bases)


def _check_plain_weights_exist(name: str, path: str, variant: Optional[str]) -> None:
    """Clear error when a component folder holds only variant weights and no variant was asked for."""
    if variant is not None or not os.path.isdir(path):
        return
    if _has_plain_weights(path):
        return
    variants = _folder_variants(path)
    if variants:
        expected = "diffusion_pytorch_model.safetensors" if any(
            f.startswith("diffusion_pytorch_model") for f in os.listdir(path)) else "model.safetensors"
        raise EnvironmentError(
            f"Error no file named {expected} found in directory {path}. The component `{name}` only has variant "
            f"weights ({', '.join(variants)}); pass `variant={variants[0]!r}` to load them."
        )


_IGNORED_ALWAYS = ["*.msgpack", "*.onnx", "*.pb", "*.h5", "*.ckpt", "*.onnx_data"]
_WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".msgpack", ".onnx", ".pb", ".h5", ".ckpt", ".onnx_data")


def pipeline_allow_patterns(
    filenames: Sequence[str],
    model_index: Dict[str, Any],
    *,
    variant: Optional[str] = None,
    use_safetensors: Optional[bool] = None,
    skip_components: Sequence[str] = (),
) -> List[str]:
    """Files of a pipeline repo to fetch (pure function over the repo's file list and its model_index.json).

    ``model_index.json``; every non-weight file of each needed component folder (configs, tokenizer and
    scheduler files); and per component the weights chosen like local loading: the ``variant`` files where a
    folder has them (plain weights elsewhere), safetensors unless ``use_safetensors=False`` or some model folder
    lacks them (then ``.bin``; with ``use_safetensors=True`` that is an error). Components in
    ``skip_components`` (passed by the caller) and null entries are not fetched; other root files never are.
    """
    from .. import hub

    folders = sorted(
        k for k, v in model_index.items()
        if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is not None
        and k not in set(skip_components)
    )
    in_folders = [f for f in filenames if "/" in f and f.split("/", 1)[0] in folders and f.count("/") == 1]
    weights = [f for f in in_folders if f.endswith(_WEIGHT_EXTENSIONS)]
    others = [f for f in in_folders if not f.endswith(_WEIGHT_EXTENSIONS)]
    model_folders = sorted({f.split("/", 1)[0] for f in weights
                            if f.endswith((".safetensors", ".bin")) and not f.endswith(".json")})

    def pick(ignore: List[str]) -> set:
        usable, _ = hub.variant_compatible_siblings(weights, variant, ignore_patterns=ignore + _IGNORED_ALWAYS)
        return set(usable)

    chosen: Optional[set] = None
    if use_safetensors is not False:
        try:
            candidate = pick(["*.bin"])
        except ValueError:
            candidate = set()
        covered = {f.split("/", 1)[0] for f in candidate if f.endswith(".safetensors")}
        if all(folder in covered for folder in model_folders):
            chosen = candidate
        elif use_safetensors is True:
            raise EnvironmentError(
                f"Could not find the necessary `safetensors` weights in {sorted(weights)} (variant={variant})"
            )
    if chosen is None:
        chosen = pick(["*.safetensors"])
    return sorted({MODEL_INDEX_NAME, *others, *chosen})


def _download_pipeline_folder(
    repo_id: str,
    *,
    cache_dir: Optional[str],
    revision: Optional[str],
    local_files_only: Optional[bool],
    token: Any,
    force_download: bool,
    variant: Optional[str],
    use_safetensors: Optional[bool],
    skip_components: Sequence[str],
) -> str:
    """Resolve a Hub repo id to a local snapshot folder holding what the pipeline needs."""
    from .. import hub

    builtin = hub.builtin_folder(repo_id)
    if builtin is not None:
        return builtin
    if repo_id.count("/") > 1:
        raise ValueError(
            f'The provided pretrained_model_name_or_path "{repo_id}" is neither a valid local path nor a valid repo id.'
        )
    from .. import hub

    warn_revision = getattr(hub, "_warn_deprecated_revision", None)
    if callable(warn_revision):
        warn_revision(revision)
    offline = bool(local_files_only) or hub.is_offline()
    # one metadata round trip: the repo's commit and file list (from the cache when offline)
    commit, files, _ = hub.repo_file_list(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                          token=token)
    snapshot = hub.cached_snapshot(repo_id, commit, cache_dir) if commit else None
    index_path = os.path.join(snapshot, MODEL_INDEX_NAME) if snapshot else None
    if index_path is None or not os.path.isfile(index_path) or force_download:
        index_path = hub.resolve_file(repo_id, MODEL_INDEX_NAME, revision=commit or revision, cache_dir=cache_dir,
                                      local_files_only=offline, token=token, force_download=force_download)
    with open(index_path, "r", encoding="utf-8") as handle:
        model_index = json.load(handle)
    wanted = pipeline_allow_patterns(
        files, model_index, variant=variant, use_safetensors=use_safetensors, skip_components=skip_components
    )
    if snapshot and not force_download and all(os.path.isfile(os.path.join(snapshot, f)) for f in wanted):
        return snapshot  # everything needed is cached for the current commit: no further request
    return hub.resolve_folder(repo_id, allow_patterns=wanted, revision=commit or revision, cache_dir=cache_dir,
                              local_files_only=offline, token=token, force_download=force_download)
