"""Configuration handling shared by models, schedulers and pipelines.

A configurable class declares ``config_name`` (the JSON file it reads and writes) and decorates its
``__init__`` with :func:`register_to_config`. Every ``__init__`` argument is then recorded in a frozen
``config`` mapping that can be saved (``save_config``), read back (``load_config``) and used to build
another instance (``from_config``), possibly of a compatible class: switching a scheduler keeps the keys
the new class does not know as hidden entries, so switching back restores the original configuration.

The JSON files are the diffusers format: keys sorted, ``_class_name`` and ``_diffusers_version`` added.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import PosixPath, Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

logger = logging.getLogger(__name__)

# The diffusers release whose folder format we read and write. It goes into ``_diffusers_version`` so that
# diffusers applies none of its legacy-format fix-ups (which trigger on versions below 0.9/0.10) to our files.
DIFFUSERS_FORMAT_VERSION = "0.36.0"

# keys that live in a config but are never written to disk
_NEVER_SAVED = ("_use_default_values", "_ignore_files", "_pre_quantization_dtype")


class FrozenDict(OrderedDict):
    """An ordered mapping that cannot be changed after construction.

    Keys are also readable as attributes (``config.in_channels``). Use ``dict(config)`` to get an
    editable copy.
    """

    _frozen = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._frozen = True

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails, so dict methods always win over keys
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    def _refuse(self, what: str) -> None:
        raise TypeError(
            f"A {type(self).__name__} cannot be modified ({what}); make an editable copy with dict(config)."
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            self._refuse(f"setting attribute {name!r}")
        super().__setattr__(name, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._frozen:
            self._refuse(f"setting key {key!r}")
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._refuse(f"deleting key {key!r}")

    def setdefault(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("setdefault")

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("pop")

    def popitem(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("popitem")

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("update")

    def clear(self) -> None:
        self._refuse("clear")

    def __reduce__(self):  # copy, deepcopy and pickle rebuild through __init__
        return (type(self), (list(self.items()),))

    def __copy__(self) -> "FrozenDict":
        return type(self)(self.items())


@functools.lru_cache(maxsize=None)
def _init_parameters(init) -> Tuple[Tuple[str, Any], ...]:
    """(name, default) of every ``__init__`` parameter after ``self`` (default is ``inspect._empty`` if none)."""
    params = list(inspect.signature(init).parameters.values())[1:]
    return tuple(
        (p.name, p.default)
        for p in params
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )


def _init_keys(klass: type) -> set:
    """Names of ``klass.__init__``'s parameters (without self and ``**kwargs``)."""
    return {name for name, _ in _init_parameters(klass.__init__)}


def register_to_config(init):
    """Decorator for ``__init__`` of a :class:`ConfigMixin` subclass: records every argument in ``config``.

    Arguments whose name starts with ``_`` are stored in the config but not passed to ``__init__``.
    Parameters listed in ``ignore_for_config`` are passed through but not recorded.
    """

    @functools.wraps(init)
    def wrapped_init(self, *args, **kwargs):
        if not isinstance(self, ConfigMixin):
            raise RuntimeError(
                f"@register_to_config was applied to {type(self).__name__}.__init__, but "
                f"{type(self).__name__} does not inherit from ConfigMixin."
            )
        init_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        private_kwargs = {k: v for k, v in kwargs.items() if k.startswith("_")}
        ignore = set(getattr(self, "ignore_for_config", ()))
        params = [(n, d) for n, d in _init_parameters(init) if n not in ignore]

        recorded: Dict[str, Any] = {}
        for value, (name, _) in zip(args, params):
            recorded[name] = value
        for name, default in params:
            if name in recorded:
                continue
            recorded[name] = init_kwargs.get(name, None if default is inspect.Parameter.empty else default)
        # Arguments not given as keywords were filled from defaults (positional ones count too, as in
        # diffusers); ``from_config`` of another class drops them so that the new class's defaults win.
        defaulted = [name for name in recorded if name not in init_kwargs]
        if defaulted:
            recorded["_use_default_values"] = defaulted
        _IN_CONFIG_INIT.depth = getattr(_IN_CONFIG_INIT, "depth", 0) + 1
        try:
            self.register_to_config(**{**private_kwargs, **recorded})
            init(self, *args, **init_kwargs)
        finally:
            _IN_CONFIG_INIT.depth -= 1
        _expose_config_keys(type(self), self.__dict__["_internal_dict"], self.__dict__)

    return wrapped_init


def _json_ready(value: Any) -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None and isinstance(value, np.ndarray):
        return value.tolist()
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, PosixPath)):
        return value.as_posix()
    if isinstance(value, tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    try:
        import torch

        if isinstance(value, torch.dtype):
            return str(value).replace("torch.", "")
    except ImportError:  # pragma: no cover
        pass
    return value


def _commit_hash_from_path(path: str) -> Optional[str]:
    match = re.search(r"snapshots[\\/]([0-9a-f]{40})(?:[\\/]|$)", path)
    return match.group(1) if match else None


class _DeprecatedConfigAttribute:
    """``obj.key`` reading ``obj.config.key`` with a FutureWarning, for a config key that is not an attribute of the
    object (deprecated diffusers behaviour, kept so old scripts run).

    A non-data descriptor on the class rather than a ``__getattr__`` on ConfigMixin: attributes in the instance
    dict still win, and classes without ``__getattr__`` keep CPython's specialised attribute loads (the schedulers'
    and guiders' per-step methods read a dozen attributes each, right after the UNet has flushed the caches).
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Optional[type] = None) -> Any:
        if obj is not None:
            internal = obj.__dict__.get("_internal_dict")
            if internal is not None and self.name in internal:
                cls_name = type(obj).__name__
                warnings.warn(
                    f"Accessing config attribute `{self.name}` directly via '{cls_name}' object attribute is "
                    f"deprecated. Please access '{self.name}' over '{cls_name}'s config object instead, e.g. "
                    f"'obj.config.{self.name}'.",
                    FutureWarning,
                    stacklevel=2,
                )
                return internal[self.name]
        raise AttributeError(f"'{(objtype or type(obj)).__name__}' object has no attribute '{self.name}'")


_IN_CONFIG_INIT = threading.local()


def _expose_config_keys(cls: type, keys: Any, attributes: Dict[str, Any]) -> None:
    """Give ``cls`` a :class:`_DeprecatedConfigAttribute` for each config key that neither a class in its MRO nor
    the instance (``attributes``, its ``__dict__`` after ``__init__``) defines. Keys an instance holds as
    attributes get no descriptor: CPython (3.11) does not specialise loads of an instance attribute that a class
    descriptor shadows. Torch modules keep their own ``__getattr__`` fallback, which already covers config keys."""
    done = cls.__dict__.get("_exposed_config_keys")
    if done is None:
        if _is_torch_module(cls):
            return
        done = set()
        type.__setattr__(cls, "_exposed_config_keys", done)
    for name in keys:
        if name in done or name in attributes or not isinstance(name, str) or not name.isidentifier():
            continue
        done.add(name)
        if not any(name in klass.__dict__ for klass in cls.__mro__):
            type.__setattr__(cls, name, _DeprecatedConfigAttribute(name))


def _is_torch_module(cls: type) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and issubclass(cls, torch.nn.Module)


class ConfigMixin:
    """Mixin giving a class a frozen ``config`` recorded from its ``__init__`` arguments.

    Subclasses set ``config_name`` and decorate ``__init__`` with :func:`register_to_config`.
    ``_compatibles`` lists the names of classes whose configs this class accepts silently
    (e.g. interchangeable schedulers).
    """

    config_name: Optional[str] = None
    ignore_for_config: list = []
    has_compatibles: bool = False
    _compatibles: list = []
    _deprecated_kwargs: list = []
    _auto_class = None

    # ------------------------------------------------------------------ recording
    def register_to_config(self, **kwargs: Any) -> None:
        """Merge ``kwargs`` into this object's config (the config stays frozen; a new mapping is made)."""
        if self.config_name is None:
            raise NotImplementedError(f"{type(self).__name__} must define `config_name` to record a config.")
        kwargs.pop("kwargs", None)
        current = self.__dict__.get("_internal_dict")
        merged = {**current, **kwargs} if current is not None else kwargs
        if not getattr(_IN_CONFIG_INIT, "depth", 0):
            # keys added after construction (a decorated __init__ exposes its keys once it has run)
            _expose_config_keys(type(self), kwargs, self.__dict__)
        # object.__setattr__ keeps torch.nn.Module.__setattr__ (and its checks) out of the way
        object.__setattr__(self, "_internal_dict", FrozenDict(merged))

    @property
    def config(self) -> FrozenDict:
        """The frozen configuration this object was built with."""
        return self.__dict__["_internal_dict"]

    # ------------------------------------------------------------------ serialisation
    def to_json_string(self) -> str:
        """The config as the JSON text written to ``config_name`` (sorted keys, trailing newline)."""
        data = dict(self.__dict__.get("_internal_dict", {}))
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        for key in _NEVER_SAVED:
            data.pop(key, None)
        if self._auto_class is not None:
            data["auto_map"] = self._auto_class
        data = {k: _json_ready(v) for k, v in data.items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: Union[str, os.PathLike]) -> None:
        """Write :meth:`to_json_string` to ``json_file_path`` atomically (temp file, then rename)."""
        from .utils.fs import atomic_file

        with atomic_file(os.fspath(json_file_path)) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(self.to_json_string())

    def save_config(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write the config to ``save_directory/config_name``, creating the folder if needed."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by diffblocks (no network access is assumed).")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, self.config_name))
        logger.info("Configuration saved in %s", os.path.join(save_directory, self.config_name))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        return_unused_kwargs: bool = False,
        return_commit_hash: bool = False,
        **kwargs: Any,
    ):
        """Read the config dict of ``pretrained_model_name_or_path`` (a file, a folder or a Hub repo id).

        Hub keyword arguments (``subfolder``, ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
        ``force_download``, ``proxies``) are consumed; any other keyword is returned as unused when
        ``return_unused_kwargs`` is true (``from_config`` turns those into overrides).
        """
        if cls.config_name is None:
            raise ValueError(
                "`config_name` is not defined on ConfigMixin itself: load a config through a class that "
                "inherits from ConfigMixin and sets `config_name`."
            )
        hub_kwargs = {
            key: kwargs.pop(key)
            for key in ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")
            if key in kwargs
        }
        subfolder = kwargs.pop("subfolder", None)
        for private in ("user_agent", "_from_pipeline", "_from_auto", "resume_download", "dduf_entries"):
            kwargs.pop(private, None)
        if pretrained_model_name_or_path is None:
            raise ValueError("`pretrained_model_name_or_path` must be a file, a folder or a repo id, got None.")

        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            config_file = path
        elif os.path.isdir(path):
            candidates = []
            if subfolder is not None:
                candidates.append(os.path.join(path, subfolder, cls.config_name))
            candidates.append(os.path.join(path, cls.config_name))
            config_file = next((c for c in candidates if os.path.isfile(c)), None)
            if config_file is None:
                where = os.path.join(path, subfolder) if subfolder else path
                raise EnvironmentError(f"Error no file named {cls.config_name} found in directory {where}.")
        else:
            from .hub import resolve_file

            config_file = resolve_file(path, cls.config_name, subfolder=subfolder, **hub_kwargs)

        config_dict = cls._dict_from_json_file(config_file)
        outputs: Tuple[Any, ...] = (config_dict,)
        if return_unused_kwargs:
            outputs += (kwargs,)
        if return_commit_hash:
            outputs += (_commit_hash_from_path(os.path.abspath(config_file)),)
        return outputs if len(outputs) > 1 else config_dict

    @staticmethod
    def _dict_from_json_file(json_file: Union[str, os.PathLike]) -> Dict[str, Any]:
        try:
            with open(json_file, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EnvironmentError(f"It looks like the config file at '{json_file}' is not a valid JSON file.")
        if not isinstance(data, dict):
            raise EnvironmentError(f"It looks like the config file at '{json_file}' is not a valid JSON file.")
        return data

    @classmethod
    def _get_compatibles(cls) -> list:
        """The classes named in ``_compatibles`` (plus this class) that diffblocks provides."""
        import diffblocks

        found = []
        for name in sorted(set([cls.__name__] + list(cls._compatibles))):
            klass = _lookup_library_class(diffblocks, name)
            if klass is not None:
                found.append(klass)
        return found

    @classmethod
    def extract_init_dict(cls, config_dict: Dict[str, Any], **kwargs: Any):
        """Split ``config_dict`` (+ overriding ``kwargs``) into ``(init_dict, unused_kwargs, hidden_dict)``.

        ``init_dict`` holds what this class's ``__init__`` takes; keys of compatible classes are dropped
        silently; other unknown keys are warned about and returned in ``unused_kwargs``; ``hidden_dict``
        holds every original key that did not reach ``__init__`` (kept in the new object's config).
        """
        used_defaults = set(config_dict.get("_use_default_values", ()))
        config_dict = {k: v for k, v in config_dict.items() if k not in used_defaults and k != "_use_default_values"}
        original = dict(config_dict)

        own_keys = _init_keys(cls)
        expected = own_keys - set(cls.ignore_for_config)

        # only look the compatible classes up (importing their modules) when the config has keys we do not take
        unknown = {k for k in config_dict if not k.startswith("_") and k not in own_keys}
        if cls.has_compatibles and unknown:
            foreign = set()
            for klass in cls._get_compatibles():
                foreign |= _init_keys(klass)
            foreign -= own_keys
            config_dict = {k: v for k, v in config_dict.items() if k not in foreign}

        source_name = config_dict.pop("_class_name", cls.__name__)
        if isinstance(source_name, str):
            if source_name != cls.__name__:
                import diffblocks

                source_cls = _lookup_library_class(diffblocks, source_name)
                if source_cls is not None:
                    extra = _init_keys(source_cls) - expected
                    config_dict = {k: v for k, v in config_dict.items() if k not in extra}
        elif not isinstance(source_name, (list, tuple)):
            raise ValueError(
                "Make sure that the `_class_name` is of type string or list of string (for custom pipelines), "
                f"got {type(source_name).__name__}."
            )

        config_dict = {k: v for k, v in config_dict.items() if not k.startswith("_") and k != "quantization_config"}

        init_dict: Dict[str, Any] = {}
        for key in expected:
            if key in kwargs:
                config_dict.pop(key, None)
                init_dict[key] = kwargs.pop(key)
            elif key in config_dict:
                init_dict[key] = config_dict.pop(key)

        if config_dict:
            logger.warning(
                f"The config attributes {config_dict} were passed to {cls.__name__}, but are not expected and will be "
                f"ignored. Please verify your {cls.config_name} configuration file."
            )
        missing = expected - set(init_dict)
        if missing:
            logger.info(f"{missing} was not found in config. Values will be initialized to default values.")

        unused_kwargs = {**config_dict, **kwargs}
        hidden_dict = {k: v for k, v in original.items() if k not in init_dict}
        return init_dict, unused_kwargs, hidden_dict

    @classmethod
    def from_config(cls, config: Union[Dict[str, Any], FrozenDict, None] = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """Build an instance from a config dict (typically another object's ``.config``).

        Keyword arguments override config values. Keys the class does not take are kept hidden in the new
        object's config, so ``A.from_config(B.from_config(a.config).config)`` gives back ``a.config``.
        """
        if "pretrained_model_name_or_path" in kwargs:
            config = kwargs.pop("pretrained_model_name_or_path")
        if config is None:
            raise ValueError("Please make sure to provide a config as the first positional argument.")
        if not isinstance(config, dict):
            warnings.warn(
                f"Passing a path to {cls.__name__}.from_config is deprecated; use "
                f"{cls.__name__}.from_config({cls.__name__}.load_config(path)) or from_pretrained instead.",
                FutureWarning,
                stacklevel=2,
            )
            config, kwargs = cls.load_config(config, return_unused_kwargs=True, **kwargs)

        init_dict, unused_kwargs, hidden_dict = cls.extract_init_dict(config, **kwargs)
        if "dtype" in unused_kwargs:
            init_dict["dtype"] = unused_kwargs.pop("dtype")
        for name in cls._deprecated_kwargs:
            if name in unused_kwargs:
                init_dict[name] = unused_kwargs.pop(name)

        obj = cls(**init_dict)
        if "_class_name" in hidden_dict:
            hidden_dict["_class_name"] = cls.__name__
        obj.register_to_config(**hidden_dict)
        unused_kwargs = {**unused_kwargs, **hidden_dict}
        if return_unused_kwargs:
            return obj, unused_kwargs
        return obj


def _lookup_library_class(package, name: str):
    """``getattr(package, name)`` for lazily exported classes, None when absent or not importable yet."""
    try:
        return getattr(package, name)
    except (AttributeError, ImportError):
        return None


__all__ = ["ConfigMixin", "FrozenDict", "register_to_config", "DIFFUSERS_FORMAT_VERSION"]
