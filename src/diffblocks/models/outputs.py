"""``BaseOutput``: the return type of every model and pipeline call.

An output is a dataclass that also behaves like an ordered mapping of its *set* fields: ``out.sample``,
``out["sample"]`` and ``out[0]`` all give the same tensor, and ``out.to_tuple()`` gives the set fields in
declaration order. Fields left at ``None`` are not keys, so ``out[0]`` is the first field that has a value
(the same convention as diffusers, which lets ``return_dict=False`` code and tuple unpacking line up).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Tuple


class BaseOutput(OrderedDict):
    """Ordered, attribute-accessible container; subclass it with ``@dataclass``."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        # let torch.compile / pytree utilities see through outputs like through tuples
        try:
            import torch.utils._pytree as pytree

            def _flatten(out: "BaseOutput"):
                return list(out.values()), list(out.keys())

            def _unflatten(values, keys):
                return cls(**dict(zip(keys, values)))

            pytree.register_pytree_node(cls, _flatten, _unflatten, serialized_type_name=f"{cls.__module__}.{cls.__name__}")
        except Exception:  # pragma: no cover - registration is an optimisation only
            pass

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(self)]
        if not names:
            raise ValueError(f"{type(self).__name__} has no fields")
        for name in names:
            value = getattr(self, name)
            if value is not None:
                OrderedDict.__setitem__(self, name, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if value is not None and name in self.keys():
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only as a mapping; set its fields as attributes instead")

    __delitem__ = _refuse
    setdefault = _refuse
    pop = _refuse
    update = _refuse

    def __reduce__(self):
        if not dataclasses.is_dataclass(self):
            return super().__reduce__()
        values = tuple(getattr(self, f.name) for f in dataclasses.fields(self))
        return type(self), values

    def to_tuple(self) -> Tuple[Any, ...]:
        """The set (non-``None``) fields, in declaration order."""
        return tuple(OrderedDict.__getitem__(self, k) for k in self.keys())
