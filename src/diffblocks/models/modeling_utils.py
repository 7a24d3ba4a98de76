"""``ModelMixin``: loading and saving torch models in the diffusers folder layout.

A model class is declared ``class MyModel(ModelMixin, ConfigMixin)`` with ``config_name = "config.json"`` and
``@register_to_config`` on ``__init__``. ``from_pretrained`` builds the module on the meta device (no random
init, no allocation) and then assigns the checkpoint tensors to it, so loading costs one read of the weights;
safetensors weights stay memory-mapped when no dtype change is asked.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..utils.fs import normal_tree_permissions
from . import weights as W

logger = logging.getLogger(__name__)

_MAX_LISTED_KEYS = 10

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def _first_keys(keys, n: int = _MAX_LISTED_KEYS) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} in total)"


def _check_dtype(cls_name: str, torch_dtype: Any) -> Optional[torch.dtype]:
    if torch_dtype is None:
        return None
    if isinstance(torch_dtype, str):
        name = torch_dtype.replace("torch.", "")
        candidate = getattr(torch, name, None)
        if not isinstance(candidate, torch.dtype):
            raise ValueError(
                f"torch_dtype={torch_dtype!r} is not a torch dtype; pass e.g. torch.float16, torch.bfloat16 or "
                "torch.float32."
            )
        torch_dtype = candidate
    if not isinstance(torch_dtype, torch.dtype):
        logger.warning(
            "Passed `torch_dtype` %r is not a `torch.dtype`. Defaulting to `torch.float32`.", torch_dtype
        )
        return torch.float32
    if not torch_dtype.is_floating_point:
        raise ValueError(
            f"Can't instantiate {cls_name} model under dtype={torch_dtype} since it is not a floating point dtype"
        )
    return torch_dtype


def _check_device_map(device_map: Any) -> Optional[torch.device]:
    """Only single-device maps are supported on this CPU-first library: None, a device, or {"": device}."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(
                f"device_map={device_map!r} spreads the model over several devices; diffblocks supports a single "
                "device (e.g. device_map='cpu' or {'': 'cpu'})."
            )
        device_map = devices.pop()
    if isinstance(device_map, bool):
        raise TypeError(f"device_map must be None, a device string, an int or a torch.device, got {device_map!r}")
    if isinstance(device_map, int):
        if device_map < 0:
            raise ValueError(
                "You can't pass device_map as a negative int. If you want to put the model on the cpu, pass "
                "device_map = 'cpu' "
            )
        return torch.device("cuda", device_map)
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        return torch.device(device_map)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device_map={device_map!r} is not a device; pass None, 'cpu', 'cuda', 'cuda:0', an int or a "
            "torch.device."
        ) from None


class ModelMixin(torch.nn.Module):
    """Base class of diffblocks models: ``from_pretrained``, ``save_pretrained``, ``dtype``/``device``."""

    config_name = W.CONFIG_NAME
    _keys_to_ignore_on_load_unexpected: Optional[List[str]] = None
    _keys_to_ignore_on_load_missing: Optional[List[str]] = None
    _keep_in_fp32_modules: Optional[List[str]] = None
    _no_split_modules: Optional[List[str]] = None
    _supports_gradient_checkpointing = False

    def __init__(self) -> None:
        super().__init__()

    # ------------------------------------------------------------------ attribute fallback to config
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            internal = self.__dict__.get("_internal_dict")
            if internal is not None and name in internal:
                warnings.warn(
                    f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                    f"deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, e.g. "
                    f"'unet.config.{name}'.",
                    FutureWarning,
                    stacklevel=2,
                )
                return internal[name]
            raise

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Device of the first parameter (or buffer); CPU for a module without tensors."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the first floating parameter (or buffer); float32 when there is none."""
        first = None
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
            first = first or t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return first or torch.float32

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self) -> None:
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        for m in self.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        for m in self.modules():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = False

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op: Any = None) -> None:
        """Accepted for drop-in compatibility; attention already runs through torch's fused SDPA kernels."""
        if not isinstance(valid, bool):
            raise TypeError(f"valid must be a bool, got {type(valid).__name__}")
        if valid:
            warnings.warn(
                "diffblocks does not use xformers: attention always runs through "
                "torch.nn.functional.scaled_dot_product_attention, which selects memory-efficient kernels itself. "
                "The call has no effect.",
                UserWarning,
                stacklevel=3,
            )

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """No-op with a warning (see :meth:`set_use_memory_efficient_attention_xformers`)."""
        self.set_use_memory_efficient_attention_xformers(True, attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        """No-op (xformers is never used)."""
        self.set_use_memory_efficient_attention_xformers(False)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (optionally only those with ``requires_grad``, or without embedding tables)."""
        excluded = set()
        if exclude_embeddings:
            for m in self.modules():
                if isinstance(m, torch.nn.Embedding):
                    excluded.update(id(p) for p in m.parameters(recurse=False))
        return sum(
            p.numel() for p in self.parameters()
            if (not only_trainable or p.requires_grad) and id(p) not in excluded
        )

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by parameters (and buffers) of this model."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        if return_buffers:
            total += sum(b.numel() * b.element_size() for b in self.buffers())
        return total

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        is_main_process: bool = True,
        save_function: Any = None,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Union[int, str] = "10GB",
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` and the weights (sharded past ``max_shard_size``) into ``save_directory``.

        Files are written into a temporary sibling folder first and moved into place at the end, so a
        failed save leaves neither a half-written folder nor half-written files.
        """
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by diffblocks (no network access is assumed).")
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"save_directory must be a path, got {type(save_directory).__name__}")
        if variant is not None and (not isinstance(variant, str) or not variant or os.sep in variant):
            raise ValueError(f"variant must be a non-empty string such as 'fp16' or None, got {variant!r}")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            logger.error("Provided path (%s) should be a directory, not a file", save_directory)
            return
        if not is_main_process:
            return
        W.parse_size(max_shard_size if max_shard_size is not None else "10GB")  # validate before writing

        state_dict = self.state_dict()
        target = os.path.abspath(save_directory)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
        try:
            if hasattr(self, "save_config"):
                self.save_config(tmp)
            if save_function is not None:
                weights_name = W.SAFETENSORS_WEIGHTS_NAME if safe_serialization else W.WEIGHTS_NAME
                save_function(state_dict, os.path.join(tmp, W.add_variant(weights_name, variant)))
            else:
                W.save_state_dict(
                    state_dict, tmp, variant=variant, safe_serialization=safe_serialization,
                    max_shard_size=max_shard_size,
                )
            normal_tree_permissions(tmp)  # mkdtemp made it 0700
            _move_into_place(tmp, target, variant=variant, safe_serialization=safe_serialization)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("Model weights saved in %s", target)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs: Any):
        """Build the model from a folder (or Hub repo id) holding ``config.json`` + weights.

        Accepted keywords follow diffusers: ``subfolder``, ``variant``, ``torch_dtype``/``dtype``, ``revision``,
        ``use_safetensors``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``,
        ``low_cpu_mem_usage`` (default True: meta-device construction + assignment), ``ignore_mismatched_sizes``,
        ``device_map`` (single device), ``output_loading_info``. Other keywords override config values
        (e.g. ``in_channels=9``).
        """
        from ..hub import resolve_model_folder

        if pretrained_model_name_or_path is None or not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError(
                "pretrained_model_name_or_path must be a local folder or a Hub repo id (str), got "
                f"{type(pretrained_model_name_or_path).__name__}"
            )
        path = os.fspath(pretrained_model_name_or_path)
        subfolder = kwargs.pop("subfolder", None)
        variant = kwargs.pop("variant", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        dtype_kw = kwargs.pop("dtype", None)
        if torch_dtype is None:
            torch_dtype = dtype_kw
        use_safetensors = kwargs.pop("use_safetensors", None)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", True)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        device_map = kwargs.pop("device_map", None)
        output_loading_info = kwargs.pop("output_loading_info", False)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        for ignored in ("max_memory", "offload_folder", "offload_state_dict", "disable_mmap", "quantization_config",
                        "mirror", "user_agent", "from_flax", "resume_download", "_from_pipeline", "_from_auto",
                        "allow_pickle", "keep_in_fp32_modules"):
            kwargs.pop(ignored, None)
        if subfolder is not None and not isinstance(subfolder, str):
            raise TypeError(f"subfolder must be a string or None, got {type(subfolder).__name__}")
        if variant is not None and (not isinstance(variant, str) or not variant):
            raise ValueError(f"variant must be a non-empty string such as 'fp16' or None, got {variant!r}")
        if use_safetensors not in (None, True, False):
            raise TypeError(f"use_safetensors must be None, True or False, got {use_safetensors!r}")
        torch_dtype = _check_dtype(cls.__name__, torch_dtype)
        device = _check_device_map(device_map)
        if ignore_mismatched_sizes and low_cpu_mem_usage:
            # mismatched tensors need a real initialisation: build on the CPU like diffusers does
            low_cpu_mem_usage = False

        folder = resolve_model_folder(
            path, subfolder=subfolder, variant=variant, use_safetensors=use_safetensors, **hub_kwargs
        )
        config = cls.load_config(folder)
        files = W.find_weight_files(folder, variant=variant, use_safetensors=use_safetensors)
        state_dict = W.load_weight_files(files.files)
        if hasattr(cls, "_convert_state_dict_keys"):
            state_dict = cls._convert_state_dict_keys(state_dict)

        # like diffusers, the model is built with the requested dtype as default dtype, so tensors created in
        # ``__init__`` (e.g. non-persistent buffers) get it too
        if low_cpu_mem_usage:
            with torch.device("meta"), _skip_init(), _default_dtype(torch_dtype):
                model = cls.from_config(config, **kwargs)
        else:
            with _default_dtype(torch_dtype):
                model = cls.from_config(config, **kwargs)
            if torch_dtype is not None:
                for name, module in model.named_modules():
                    if name and _keep_fp32(model, name):
                        module.to(torch.float32)
        info = _assign_state_dict(
            model, state_dict, path=folder, dtype=torch_dtype, meta=low_cpu_mem_usage,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
        )
        del state_dict
        if low_cpu_mem_usage:
            with _default_dtype(torch_dtype):
                _finish_meta_model(model)
        if torch_dtype is not None and not low_cpu_mem_usage:
            _cast_model(model, torch_dtype)
        if device is not None and device.type != "cpu":
            model.to(device)
        if hasattr(model, "register_to_config"):
            model.register_to_config(_name_or_path=path)
        model.eval()
        if output_loading_info:
            return model, info
        return model

    # ------------------------------------------------------------------ misc
    def _init_non_persistent_buffers(self) -> None:  # pragma: no cover - overridden by models that need it
        """Recompute buffers that are not stored in checkpoints (called after meta-device loading)."""


@contextlib.contextmanager
def _skip_init():
    """Turn the in-place ``torch.nn.init`` functions into no-ops (the values are replaced by the checkpoint)."""
    import torch.nn.init as init

    names = [n for n in ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                         "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                         "orthogonal_", "sparse_") if hasattr(init, n)]
    saved = {n: getattr(init, n) for n in names}

    def _keep(tensor, *args, **kwargs):
        return tensor

    for n in names:
        setattr(init, n, _keep)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


@contextlib.contextmanager
def _default_dtype(dtype: Optional[torch.dtype]):
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _move_into_place(tmp: str, target: str, *, variant: Optional[str], safe_serialization: bool) -> None:
    """Rename ``tmp`` to ``target`` or, when ``target`` exists, replace its files with those of ``tmp``."""
    if not os.path.exists(target):
        os.replace(tmp, target)
        return
    weights_name = W.SAFETENSORS_WEIGHTS_NAME if safe_serialization else W.WEIGHTS_NAME
    new_files = os.listdir(tmp)
    for name in new_files:
        os.replace(os.path.join(tmp, name), os.path.join(target, name))
    W._remove_stale(target, weights_name, variant, keep=set(new_files))
    shutil.rmtree(tmp, ignore_errors=True)


def _keep_fp32(model: torch.nn.Module, name: str) -> bool:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    parts = name.split(".")
    return any(k in parts for k in keep)


def _assign_state_dict(
    model: torch.nn.Module,
    state_dict: Dict[str, torch.Tensor],
    *,
    path: str,
    dtype: Optional[torch.dtype],
    meta: bool,
    ignore_mismatched_sizes: bool,
) -> Dict[str, List]:
    """Check keys and shapes, cast floating tensors, then assign (meta) or copy them into ``model``."""
    cls_name = type(model).__name__
    expected = model.state_dict()
    ignore_unexpected = [re.compile(p) for p in (model._keys_to_ignore_on_load_unexpected or [])]
    ignore_missing = [re.compile(p) for p in (model._keys_to_ignore_on_load_missing or [])]
    missing = [k for k in expected if k not in state_dict and not any(p.search(k) for p in ignore_missing)]
    unexpected = [k for k in state_dict if k not in expected and not any(p.search(k) for p in ignore_unexpected)]
    mismatched: List[Tuple[str, tuple, tuple]] = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in state_dict if k in expected and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched and not ignore_mismatched_sizes:
        k, got, want = mismatched[0]
        listed = "\n".join(f"- {k}: checkpoint {g}, model {w}" for k, g, w in mismatched[:_MAX_LISTED_KEYS])
        raise ValueError(
            f"Cannot load {path} because {k} expected shape {torch.Size(want)}, but got {torch.Size(got)}. "
            f"{len(mismatched)} tensor(s) have a different shape in the checkpoint:\n{listed}\n"
            "If you want to instead overwrite randomly initialized weights, please make sure to pass both "
            "`low_cpu_mem_usage=False` and `ignore_mismatched_sizes=True`."
        )
    if unexpected:
        raise ValueError(
            f"Error(s) in loading the checkpoint at {path} into {cls_name}: the checkpoint has keys the model "
            f"does not have (unexpected keys): {_first_keys(unexpected)}. Check that the folder holds a "
            f"{cls_name} checkpoint and that its config.json matches the weights."
        )
    if missing and meta:
        raise ValueError(
            f"Error(s) in loading the checkpoint at {path} into {cls_name}: the model has keys the checkpoint "
            f"does not have (missing keys): {_first_keys(missing)}. Pass `low_cpu_mem_usage=False` to initialise "
            "them randomly instead."
        )
    if missing:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly initialized: %s",
            cls_name, path, missing,
        )
    if mismatched:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly initialized "
            "because the shapes did not match:\n%s",
            cls_name, path,
            "\n".join(f"- {k}: found shape {g} in the checkpoint and {w} in the model instantiated"
                      for k, g, w in mismatched),
        )
        for k, _, _ in mismatched:
            state_dict.pop(k)

    to_load: Dict[str, torch.Tensor] = {}
    keep_fp32 = bool(getattr(model, "_keep_in_fp32_modules", None))
    for key, tensor in state_dict.items():
        if key not in expected:
            continue
        if tensor.is_floating_point():
            if dtype is not None and keep_fp32 and _keep_fp32(model, key):
                target = torch.float32
            elif dtype is not None:
                target = dtype
            else:
                target = expected[key].dtype if expected[key].is_floating_point() else tensor.dtype
            if tensor.dtype != target:
                tensor = tensor.to(target)
        to_load[key] = tensor
    if meta:
        if not _assign_directly(model, to_load):
            model.load_state_dict(to_load, strict=False, assign=True)
    else:
        with torch.no_grad():
            model.load_state_dict(to_load, strict=False)
    return {
        "missing_keys": missing,
        "unexpected_keys": unexpected,
        "mismatched_keys": mismatched,
        "error_msgs": [],
    }


def _assign_directly(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> bool:
    """Put ``state``'s tensors in place without ``load_state_dict``'s per-module machinery.

    Only used when no module customises state-dict loading (hooks or an overridden ``_load_from_state_dict``);
    returns False (nothing changed) otherwise, and the caller falls back to ``load_state_dict(assign=True)``.
    """
    base = torch.nn.Module._load_from_state_dict
    modules = dict(model.named_modules())
    for m in modules.values():
        if type(m)._load_from_state_dict is not base or m._load_state_dict_pre_hooks or \
                getattr(m, "_load_state_dict_post_hooks", None):
            return False
    plan = []
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is None or (leaf not in module._parameters and leaf not in module._buffers):
            return False
        plan.append((module, leaf, tensor))
    for module, leaf, tensor in plan:
        old = module._parameters.get(leaf)
        if old is not None:
            module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            module._buffers[leaf] = tensor
    return True


def _finish_meta_model(model: torch.nn.Module) -> None:
    """Materialise what the checkpoint did not provide (non-persistent buffers) through the model's hook."""
    if any(b.is_meta for b in model.buffers()):
        hook = getattr(model, "_init_non_persistent_buffers", None)
        if callable(hook):
            with torch.device("cpu"):
                hook()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(
            f"{type(model).__name__} still has tensors on the meta device after loading: {_first_keys(left)}. "
            "Buffers that are not stored in checkpoints (persistent=False) must be recomputed in "
            "`_init_non_persistent_buffers()`."
        )


def _cast_model(model: torch.nn.Module, dtype: torch.dtype) -> None:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if not keep:
        model.to(dtype)
        return
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
