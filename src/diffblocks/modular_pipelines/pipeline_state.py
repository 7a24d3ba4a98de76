"""The data a pipeline run carries between blocks.

``PipelineState`` has two layers:

* ``inputs``: what the user passed to the pipeline call (plus the declared defaults of the inputs the user did
  not pass). Read-only for blocks: no block write ever lands here.
* ``intermediates``: what blocks produced. Mutable, shared by all blocks.

A read looks in ``intermediates`` first, then ``inputs`` (an intermediate shadows a user input of the same name).
Every write made on behalf of a block goes to ``intermediates``. ``values`` is the merged read view used by the
newer diffusers API (``state.values``, ``set``/``get``/``get_by_kwargs``).

``BlockState`` is the attribute bag a block works on: ``get_block_state`` fills it from the state and
``set_block_state`` writes the block's outputs (and reassigned inputs) back.
"""
from __future__ import annotations

from collections import ChainMap
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union


def _format_value(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        return f"Tensor(dtype={value.dtype}, shape={value.shape})"
    if isinstance(value, list) and value and hasattr(value[0], "shape") and hasattr(value[0], "dtype"):
        return f"[Tensor(dtype={value[0].dtype}, shape={value[0].shape}), ...]"
    return repr(value)


def _same_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Dict equality that also works for tensors (equal shape, dtype and values)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if x is y:
            continue
        if hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(y, "shape"):
            try:
                if x.shape != y.shape or x.dtype != y.dtype or not bool((x == y).all()):
                    return False
                continue
            except Exception:
                return False
        try:
            if not bool(x == y):
                return False
        except Exception:
            return False
    return True


class PipelineState:
    """Inputs (immutable for blocks) and intermediates (mutable) of one pipeline run."""

    __slots__ = ("_inputs", "intermediates", "kwargs_mapping")

    def __init__(
        self,
        inputs: Optional[Mapping[str, Any]] = None,
        intermediates: Optional[Mapping[str, Any]] = None,
        kwargs_mapping: Optional[Mapping[str, List[str]]] = None,
        values: Optional[Mapping[str, Any]] = None,
        input_kwargs: Optional[Mapping[str, List[str]]] = None,
        intermediate_kwargs: Optional[Mapping[str, List[str]]] = None,
    ) -> None:
        self._inputs: Dict[str, Any] = dict(inputs or {})
        self.intermediates: Dict[str, Any] = dict(intermediates or {})
        if values:
            self.intermediates.update(values)
        self.kwargs_mapping: Dict[str, List[str]] = {}
        # seed-era constructors kept the tags of the two layers apart; one mapping serves both
        for mapping in (kwargs_mapping, input_kwargs, intermediate_kwargs):
            for tag, keys in (mapping or {}).items():
                for key in keys:
                    self._tag(key, tag)

    # --- layers --------------------------------------------------------------------------------------------------

    @property
    def inputs(self) -> Mapping[str, Any]:
        """The user's inputs (read-only view)."""
        return MappingProxyType(self._inputs)

    @property
    def values(self) -> ChainMap:
        """Merged view: intermediates shadow inputs; writing to it writes an intermediate."""
        return ChainMap(self.intermediates, self._inputs)

    def _tag(self, key: str, kwargs_type: Optional[str]) -> None:
        if kwargs_type is not None:
            keys = self.kwargs_mapping.setdefault(kwargs_type, [])
            if key not in keys:
                keys.append(key)

    def set_input(self, key: str, value: Any, kwargs_type: Optional[str] = None) -> None:
        """Record a user input. A stale intermediate of the same name (from an earlier run) is dropped."""
        self._inputs[key] = value
        self.intermediates.pop(key, None)
        self._tag(key, kwargs_type)

    def set_intermediate(self, key: str, value: Any, kwargs_type: Optional[str] = None) -> None:
        """Record a value produced by a block."""
        self.intermediates[key] = value
        self._tag(key, kwargs_type)

    # newer API: every write is an intermediate
    set = set_intermediate

    def get(self, keys: Union[str, Iterable[str]], default: Any = None) -> Any:
        """Value of ``keys`` (str) or ``{key: value}`` (list); intermediates shadow inputs."""
        if isinstance(keys, str):
            intermediates = self.intermediates
            if keys in intermediates:
                return intermediates[keys]
            return self._inputs.get(keys, default)
        return {k: self.get(k, default) for k in keys}

    def get_by_kwargs(self, kwargs_type: str) -> Dict[str, Any]:
        """Every value tagged ``kwargs_type`` (``{}`` for an unknown tag)."""
        return {k: self.get(k) for k in self.kwargs_mapping.get(kwargs_type, ())}

    # seed-era accessors
    def get_input(self, key: str, default: Any = None) -> Any:
        return self._inputs.get(key, default)

    def get_inputs(self, keys: Iterable[str], default: Any = None) -> Dict[str, Any]:
        return {k: self._inputs.get(k, default) for k in keys}

    def get_intermediate(self, key: str, default: Any = None) -> Any:
        return self.intermediates.get(key, default)

    def get_intermediates(self, keys: Iterable[str], default: Any = None) -> Dict[str, Any]:
        return {k: self.intermediates.get(k, default) for k in keys}

    def get_inputs_kwargs(self, kwargs_type: str) -> Dict[str, Any]:
        return {k: self._inputs[k] for k in self.kwargs_mapping.get(kwargs_type, ()) if k in self._inputs}

    def get_intermediate_kwargs(self, kwargs_type: str) -> Dict[str, Any]:
        return {k: self.intermediates[k] for k in self.kwargs_mapping.get(kwargs_type, ()) if k in self.intermediates}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "inputs": dict(self._inputs),
            "intermediates": dict(self.intermediates),
            "values": dict(self.values),
            "kwargs_mapping": {k: list(v) for k, v in self.kwargs_mapping.items()},
        }

    # --- python protocol -----------------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails; slots may be unset during copy/unpickle
        if name.startswith("__") or name in PipelineState.__slots__:
            raise AttributeError(name)
        try:
            intermediates = object.__getattribute__(self, "intermediates")
            inputs = object.__getattribute__(self, "_inputs")
        except AttributeError:
            raise AttributeError(name) from None
        if name in intermediates:
            return intermediates[name]
        if name in inputs:
            return inputs[name]
        raise AttributeError(f"'PipelineState' has no value named {name!r}")

    def __contains__(self, key: str) -> bool:
        return key in self.intermediates or key in self._inputs

    def __getstate__(self) -> Dict[str, Any]:
        return {"_inputs": self._inputs, "intermediates": self.intermediates, "kwargs_mapping": self.kwargs_mapping}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PipelineState):
            return NotImplemented
        return (
            _same_values(self._inputs, other._inputs)
            and _same_values(self.intermediates, other.intermediates)
            and self.kwargs_mapping == other.kwargs_mapping
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        def block(d: Mapping[str, Any]) -> str:
            return "".join(f"    {k!r}: {_format_value(v)}\n" for k, v in d.items())

        return (
            "PipelineState(\n"
            f"  inputs={{\n{block(self._inputs)}  }},\n"
            f"  intermediates={{\n{block(self.intermediates)}  }},\n"
            ")"
        )


def _format_block_value(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        return f"Tensor(dtype={value.dtype}, shape={value.shape})"
    if isinstance(value, (list, tuple)) and value and all(hasattr(v, "shape") and hasattr(v, "dtype") for v in value):
        shapes = [tuple(v.shape) for v in value]
        return f"{type(value).__name__}[{len(value)}] of Tensors with shapes {shapes}"
    if isinstance(value, dict) and value:
        inner = ", ".join(f"{k!r}: {_format_block_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    return repr(value)


class BlockState:
    """A block's local view of the state: plain attributes (``block_state.image``)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __getitem__(self, key: str) -> Any:
        return self.__dict__.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__dict__[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def as_dict(self) -> Dict[str, Any]:
        """The attributes as a dict (private bookkeeping excluded)."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_BlockState")}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockState):
            return NotImplemented
        return _same_values(self.as_dict(), other.as_dict())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = "".join(f"    {k}: {_format_block_value(v)}\n" for k, v in self.as_dict().items())
        return f"BlockState(\n{body})"
