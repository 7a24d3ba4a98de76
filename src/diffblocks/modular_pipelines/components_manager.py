"""ComponentsManager: one registry of models and other components shared by any number of pipelines.

What it keeps: ``components`` (id -> object, ids are ``f"{name}_{id(obj)}"``), ``added_time`` and
``collections`` (collection name -> set of ids; one component per name per collection). What it does:

* duplicate detection: the same object added twice (same name: the existing id is returned; another name: added,
  with a warning), and two objects loaded from the same checkpoint (same load id, read from the object's
  ``_diffblocks_load_id`` attribute, set by ``ComponentSpec.load`` / ``AutoModel``): a warning naming both ids;
* retrieval by exact name or pattern (``get_one``, ``search_components``, ``get_components_by_names``);
* reuse across pipelines: ``reuse_by_load_id`` (default True) + ``_lookup_load_id(load_id, torch_dtype)`` let a
  ``ModularPipeline`` attached to the manager take an already loaded object instead of loading a second copy;
* auto CPU offload across every registered model (``enable_auto_cpu_offload``): models live on the CPU and move to
  the execution device right before they run; when the device lacks room, other resident models go back to the
  CPU as decided by a strategy. The default planner is the pure function :func:`plan_offload`.

Warnings go through the logger ``diffblocks.modular_pipelines.components_manager`` at WARNING. They are printed
to stderr by default (a fallback handler that stays silent as soon as the application configured any logging
handler, so nothing is printed twice), and tests capture them with ``caplog``. Registry operations are guarded by
a re-entrant lock, so a UI or server may call the manager from several threads.
"""
from __future__ import annotations

import gc
import inspect
import itertools
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch

from ..hooks import DeviceHook, attach_device_hook, get_device_hook, to_device

logger = logging.getLogger(__name__)

__all__ = ["ComponentsManager", "AutoOffloadStrategy", "plan_offload", "parse_memory_size"]


class _FallbackStderrHandler(logging.Handler):
    """Prints records to stderr only when no other handler on the propagation path would receive them."""

    def emit(self, record: logging.LogRecord) -> None:
        current: Optional[logging.Logger] = logging.getLogger(record.name)
        while current is not None:
            for handler in current.handlers:
                if handler is self or isinstance(handler, logging.NullHandler):
                    continue
                if record.levelno >= handler.level:
                    return
            if not current.propagate:
                break
            current = current.parent  # type: ignore[assignment]
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - stderr closed
            self.handleError(record)


if not any(isinstance(h, _FallbackStderrHandler) for h in logger.handlers):
    _fallback = _FallbackStderrHandler(level=logging.WARNING)
    _fallback.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_fallback)


# ----------------------------------------------------------------------------------------------------------------
# sizes and memory
# ----------------------------------------------------------------------------------------------------------------
_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_memory_size(value: Union[int, float, str], argument: str = "memory_reserve_margin") -> int:
    """``3GB`` -> 3_000_000_000, ``"512MiB"`` -> 536870912, ints are bytes. Raises ValueError naming ``argument``."""
    if isinstance(value, bool):
        raise TypeError(f"`{argument}` must be a number of bytes or a size string like '3GB', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"`{argument}` must be >= 0 bytes, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(
            f"`{argument}` must be a number of bytes or a size string like '3GB', got {type(value).__name__}"
        )
    m = _SIZE_RE.match(value)
    unit = m.group(2).upper() if m else None
    if m is None or (unit and unit not in _UNITS):
        raise ValueError(
            f"`{argument}`={value!r} is not a memory size; expected an int (bytes) or a string such as '3GB', "
            f"'500MB' or '2GiB' (units: {', '.join(k if 'I' not in k else k[0] + 'iB' for k in _UNITS)})"
        )
    return int(float(m.group(1)) * _UNITS[unit or "B"])


def model_size_bytes(model: Any) -> int:
    """Bytes of a model's parameters and buffers (``get_memory_footprint()`` when the model provides one)."""
    footprint = getattr(model, "get_memory_footprint", None)
    if callable(footprint):
        try:
            return int(footprint())
        except Exception:  # pragma: no cover - third-party footprint failures fall back to counting
            pass
    if isinstance(model, torch.nn.Module):
        seen = set()
        total = 0
        for t in itertools.chain(model.parameters(), model.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return total
    raise AttributeError(f"Do not know how to compute memory footprint of `{type(model).__name__}`.")


_UNLIMITED = 2**62


def default_free_memory(device: torch.device) -> int:
    """Free bytes on ``device`` as reported by torch; a very large number when the backend cannot tell (CPU)."""
    backend = getattr(torch, device.type, None)
    if device.type == "mps" and backend is not None:  # pragma: no cover - macOS only
        try:
            return int(backend.recommended_max_memory() - backend.driver_allocated_memory())
        except Exception:
            return _UNLIMITED
    mem_get_info = getattr(backend, "mem_get_info", None) if backend is not None else None
    if device.type == "cpu" or mem_get_info is None:
        return _UNLIMITED
    index = device.index if device.index is not None else 0
    return int(mem_get_info(index)[0])  # pragma: no cover - accelerator only


def _empty_cache(device: torch.device) -> None:
    backend = getattr(torch, device.type, None)
    empty = getattr(backend, "empty_cache", None) if device.type != "cpu" else None
    if callable(empty):  # pragma: no cover - accelerator only
        try:
            empty()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------------------------
# the planner
# ----------------------------------------------------------------------------------------------------------------
_EXACT_SEARCH_LIMIT = 18


def plan_offload(
    resident: Mapping[str, Tuple[int, float]],
    free_bytes: int,
    request_bytes: int,
    reserve_bytes: int,
) -> List[str]:
    """Choose which resident models to move off the device so a model of ``request_bytes`` fits.

    ``resident`` maps a model id to ``(size_bytes, last_used)`` (larger ``last_used`` = used more recently);
    ``free_bytes`` is the free device memory now and ``reserve_bytes`` what must stay free after the move.
    Pure function. Returns the ids to evict, least recently used first:

    * ``[]`` when ``request_bytes <= free_bytes - reserve_bytes``;
    * otherwise the set with the fewest total bytes that makes room; among sets of equal size the one whose
      members were least recently used; then the one listed first in ``resident``;
    * when even evicting everything cannot make room, every resident id (the caller then loads the model anyway
      and warns).
    """
    need = request_bytes + reserve_bytes - free_bytes
    if need <= 0 or not resident:
        return []
    items = list(resident.items())
    order = {k: i for i, (k, _) in enumerate(items)}

    def lru_sorted(ids) -> List[str]:
        return sorted(ids, key=lambda k: (resident[k][1], order[k]))

    total = sum(int(s) for _, (s, _) in items)
    if total < need:
        return lru_sorted(resident)

    def tie_key(ids) -> Tuple:
        recency = sorted((resident[k][1] for k in ids), reverse=True)
        return (tuple(recency), tuple(sorted(order[k] for k in ids)))

    best: Optional[Tuple[int, Tuple, Tuple[str, ...]]] = None
    if len(items) <= _EXACT_SEARCH_LIMIT:
        # exhaustive: smallest sufficient total, then LRU, then listing order
        ids = [k for k, _ in items]
        sizes = [int(resident[k][0]) for k in ids]
        for r in range(1, len(ids) + 1):
            for combo in itertools.combinations(range(len(ids)), r):
                size = sum(sizes[i] for i in combo)
                if size < need:
                    continue
                chosen = tuple(ids[i] for i in combo)
                key = (size, tie_key(chosen), chosen)
                if best is None or key[:2] < best[:2]:
                    best = key
    else:
        # greedy for many models: take LRU first until enough, then drop members that are not needed
        chosen_list: List[str] = []
        acc = 0
        for k in lru_sorted(resident):
            chosen_list.append(k)
            acc += int(resident[k][0])
            if acc >= need:
                break
        for k in sorted(chosen_list, key=lambda k: -int(resident[k][0])):
            if acc - int(resident[k][0]) >= need:
                chosen_list.remove(k)
                acc -= int(resident[k][0])
        best = (acc, (), tuple(chosen_list))
    assert best is not None
    return lru_sorted(best[2])


class AutoOffloadStrategy:
    """diffusers-style strategy object: ``strategy(hooks=, model_id=, model=, execution_device=) -> hooks``.

    ``hooks`` are the handles of models resident on the device (each with ``model_id`` and ``model``); the
    decision is delegated to :func:`plan_offload` with the device's free memory minus ``memory_reserve_margin``.
    """

    def __init__(
        self,
        memory_reserve_margin: Union[int, str] = "3GB",
        free_memory_fn: Optional[Callable[[torch.device], int]] = None,
    ):
        self.memory_reserve_margin = parse_memory_size(memory_reserve_margin, "memory_reserve_margin")
        self.free_memory_fn = free_memory_fn

    def __call__(self, hooks, model_id, model, execution_device) -> list:
        hooks = list(hooks)
        if not hooks:
            return []
        device = to_device(execution_device, "execution_device")
        free = (self.free_memory_fn or default_free_memory)(device)
        resident = OrderedDict(
            (h.model_id, (model_size_bytes(h.model), getattr(h, "last_used", 0))) for h in hooks
        )
        request = model_size_bytes(model)
        ids = set(plan_offload(resident, free, request, self.memory_reserve_margin))
        if ids and sum(resident[i][0] for i in ids) + free - self.memory_reserve_margin < request:
            logger.warning("no combination of models to offload to cpu is found, offloading all models")
        return [h for h in hooks if h.model_id in ids]


def _is_hooks_style(strategy: Callable) -> bool:
    """True for diffusers-style strategies taking ``hooks=`` (AutoOffloadStrategy and user classes like it)."""
    if isinstance(strategy, AutoOffloadStrategy):
        return True
    try:
        params = inspect.signature(strategy).parameters
    except (TypeError, ValueError):
        return False
    return "hooks" in params


# ----------------------------------------------------------------------------------------------------------------
# display helpers
# ----------------------------------------------------------------------------------------------------------------
def _summarize_by_prefix(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Group dotted keys by value and name each group by its longest common dotted prefix."""
    groups: Dict[Any, List[str]] = {}
    originals: Dict[Any, Any] = {}
    for key, value in values.items():
        hashable = tuple(value) if isinstance(value, list) else value
        groups.setdefault(hashable, []).append(key)
        originals.setdefault(hashable, value)
    summary: Dict[str, Any] = {}
    for hashable, keys in groups.items():
        parts = [k.split(".") for k in keys]
        common: List[str] = []
        for column in zip(*parts):
            if all(c == column[0] for c in column):
                common.append(column[0])
            else:
                break
        summary[".".join(common)] = originals[hashable]
    return summary


def _load_id_of(component: Any) -> Optional[str]:
    load_id = getattr(component, "_diffblocks_load_id", None)
    if load_id is None:
        load_id = getattr(component, "_diffusers_load_id", None)
    return load_id


def _device_of(component: Any) -> str:
    device = getattr(component, "device", None)
    if device is None and isinstance(component, torch.nn.Module):
        for t in itertools.chain(component.parameters(), component.buffers()):
            device = t.device
            break
        else:
            device = torch.device("cpu")
    return "N/A" if device is None else str(device)


def _dtype_of(component: Any) -> str:
    dtype = getattr(component, "dtype", None)
    if not isinstance(dtype, torch.dtype) and isinstance(component, torch.nn.Module):
        dtype = None
        for t in itertools.chain(component.parameters(), component.buffers()):
            if t.is_floating_point():
                dtype = t.dtype
                break
    return "N/A" if dtype is None else str(dtype)


def _as_dtype(value: Any) -> Optional[torch.dtype]:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        candidate = getattr(torch, value.replace("torch.", ""), None)
        if isinstance(candidate, torch.dtype):
            return candidate
    raise ValueError(f"`torch_dtype` must be a torch.dtype such as torch.float16 (or its name), got {value!r}")


# ----------------------------------------------------------------------------------------------------------------
# the manager
# ----------------------------------------------------------------------------------------------------------------
class ComponentsManager:
    """A registry of components shared by pipelines, with duplicate detection, collections and auto offload.

    Args:
        reuse_by_load_id: when True (default), a ``ModularPipeline`` attached to this manager reuses an already
            registered object whose load id (and dtype) match the component it is about to load, instead of
            loading a second copy. Set False to always load separate copies.
    """

    _available_info_fields = [
        "model_id",
        "added_time",
        "collection",
        "class_name",
        "size_gb",
        "adapters",
        "has_hook",
        "execution_device",
        "ip_adapter",
        "quantization",
    ]

    def __init__(self, reuse_by_load_id: bool = True):
        if not isinstance(reuse_by_load_id, bool):
            raise TypeError(f"`reuse_by_load_id` must be True or False, got {reuse_by_load_id!r}")
        self.reuse_by_load_id = reuse_by_load_id
        self.components: "OrderedDict[str, Any]" = OrderedDict()
        self.added_time: "OrderedDict[str, float]" = OrderedDict()
        self.collections: "OrderedDict[str, Set[str]]" = OrderedDict()
        self._lock = threading.RLock()
        # offload state
        self._hooks: "OrderedDict[int, DeviceHook]" = OrderedDict()  # id(module) -> hook
        self._auto_offload_enabled = False
        self._auto_offload_device: Optional[torch.device] = None
        self._offload_strategy: Optional[Callable] = None
        self._memory_reserve = 0
        self._free_memory_fn: Callable[[torch.device], int] = default_free_memory

    def __deepcopy__(self, memo: dict) -> "ComponentsManager":
        # a manager is a shared registry: copies of objects holding it (pipelines, blocks) share the same one
        return self

    def __copy__(self) -> "ComponentsManager":
        return self

    # ------------------------------------------------------------------------------------------------------------
    # ids and lookups
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _id_to_name(component_id: str) -> str:
        return component_id.rsplit("_", 1)[0] if "_" in component_id else component_id

    def _collections_of(self, component_id: str) -> List[str]:
        return [c for c, ids in self.collections.items() if component_id in ids]

    def _lookup_ids(
        self,
        name: Optional[str] = None,
        collection: Optional[str] = None,
        load_id: Optional[str] = None,
        components: Optional[Mapping[str, Any]] = None,
    ) -> Set[str]:
        """Ids matching all given filters exactly (no patterns); an unknown collection gives an empty set."""
        with self._lock:
            pool = self.components if components is None else components
            if collection and collection not in self.collections:
                return set()
            in_collection = self.collections[collection] if collection else None
            result = set()
            for cid, comp in pool.items():
                if name and self._id_to_name(cid) != name:
                    continue
                if in_collection is not None and cid not in in_collection:
                    continue
                if load_id and _load_id_of(comp) != load_id:
                    continue
                result.add(cid)
            return result

    def _ordered(self, ids) -> List[str]:
        ids = set(ids)
        return [cid for cid in self.components if cid in ids]

    def _lookup_load_id(self, load_id: str, torch_dtype: Any = None) -> Optional[Any]:
        """An already registered object loaded with ``load_id`` (and of ``torch_dtype`` when given), or None.

        Pure lookup: callers check ``reuse_by_load_id`` first. ``"null"`` (created from a config) never matches.
        Components without a dtype (tokenizers, schedulers) match regardless of ``torch_dtype``.
        """
        if not load_id or load_id == "null":
            return None
        dtype = _as_dtype(torch_dtype)
        with self._lock:
            for comp in self.components.values():
                if _load_id_of(comp) != load_id:
                    continue
                if dtype is not None:
                    comp_dtype = getattr(comp, "dtype", None)
                    if isinstance(comp_dtype, torch.dtype) and comp_dtype != dtype:
                        continue
                return comp
        return None

    # ------------------------------------------------------------------------------------------------------------
    # add / remove
    # ------------------------------------------------------------------------------------------------------------
    def add(self, name: str, component: Any, collection: Optional[str] = None) -> str:
        """Register ``component`` under ``name`` (optionally in ``collection``) and return its id ``name_<id>``.

        The same object under the same name returns the existing id; under another name it is added again with a
        warning; another object with the same load id is added with a warning. In a collection, a newer component
        replaces the older one of the same name (the older leaves the manager if no collection holds it any more).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty str, got {name!r}")
        if collection is not None and not isinstance(collection, str):
            raise TypeError(f"`collection` must be a str or None, got {type(collection).__name__}")
        with self._lock:
            component_id = f"{name}_{id(component)}"
            is_new = True
            same_object = [cid for cid, comp in self.components.items() if comp is component]
            for cid in same_object:
                if self._id_to_name(cid) == name:
                    logger.warning(f"ComponentsManager: component '{name}' already exists as '{cid}'")
                    component_id = cid
                    is_new = False
                    break
            if is_new:
                for cid in same_object:
                    logger.warning(
                        f"ComponentsManager: adding component '{name}' as '{component_id}', but it is duplicate of "
                        f"'{cid}'\nTo remove a duplicate, call `components_manager.remove('<component_id>')`."
                    )
                load_id = _load_id_of(component)
                if load_id and load_id != "null":
                    twins = [
                        cid
                        for cid, comp in self.components.items()
                        if comp is not component and _load_id_of(comp) == load_id
                    ]
                    if twins:
                        logger.warning(
                            f"ComponentsManager: adding component '{component_id}', but it has duplicate load_id "
                            f"'{load_id}' with existing components: {', '.join(twins)}. To remove a duplicate, "
                            f"call `components_manager.remove('<component_id>')`."
                        )
                self.components[component_id] = component
                self.added_time[component_id] = time.time()

            if collection:
                members = self.collections.setdefault(collection, set())
                if component_id not in members:
                    for old_id in self._ordered(self._lookup_ids(name=name, collection=collection)):
                        logger.warning(
                            f"ComponentsManager: removing existing {name} from collection '{collection}': {old_id}"
                        )
                        self.remove_from_collection(old_id, collection)
                    members.add(component_id)
                    logger.info(f"ComponentsManager: added component '{name}' in collection '{collection}': "
                                f"{component_id}")
            elif is_new:
                logger.info(f"ComponentsManager: added component '{name}' as '{component_id}'")

            if is_new and self._auto_offload_enabled and isinstance(component, torch.nn.Module):
                self._hook_module(component_id, component)
            return component_id

    def remove_from_collection(self, component_id: str, collection: str) -> None:
        """Take ``component_id`` out of ``collection``; it leaves the manager when no collection holds it any more."""
        with self._lock:
            if collection not in self.collections:
                logger.warning(f"Collection '{collection}' not found in ComponentsManager")
                return
            members = self.collections[collection]
            if component_id not in members:
                logger.warning(f"Component '{component_id}' not found in collection '{collection}'")
                return
            members.discard(component_id)
            if not self._collections_of(component_id):
                logger.info(f"ComponentsManager: removing component '{component_id}' from ComponentsManager")
                self.remove(component_id)

    def remove(self, component_id: Optional[str] = None) -> None:
        """Remove a component by id. A model no other id refers to goes back to the CPU and loses its hook."""
        with self._lock:
            if component_id not in self.components:
                logger.warning(f"Component '{component_id}' not found in ComponentsManager")
                return
            component = self.components.pop(component_id)
            self.added_time.pop(component_id, None)
            for members in self.collections.values():
                members.discard(component_id)
            still_registered = any(c is component for c in self.components.values())
            if isinstance(component, torch.nn.Module) and not still_registered:
                hook = self._hooks.pop(id(component), None)
                if hook is not None:
                    hook.offload()
                    hook.remove()
                    _empty_cache(hook.execution_device)
                else:
                    try:
                        component.to("cpu")
                    except Exception:  # pragma: no cover - e.g. meta tensors
                        pass
                del component
                gc.collect()
            elif isinstance(component, torch.nn.Module):
                hook = self._hooks.get(id(component))
                if hook is not None and hook.model_id == component_id:
                    hook.model_id = next(cid for cid, c in self.components.items() if c is hook.module)

    # ------------------------------------------------------------------------------------------------------------
    # retrieval
    # ------------------------------------------------------------------------------------------------------------
    def _by_names(self, selected: Mapping[str, Any], with_names: bool) -> Dict[str, Any]:
        if not with_names:
            return dict(selected)
        out: Dict[str, Any] = {}
        for cid, comp in selected.items():
            base = self._id_to_name(cid)
            if base in out:
                raise ValueError(
                    f"Duplicate component names found in the search results: {base}, please set "
                    f"`return_dict_with_names=False` to return a dictionary with component IDs as keys"
                )
            out[base] = comp
        return out

    def search_components(
        self,
        names: Optional[str] = None,
        collection: Optional[str] = None,
        load_id: Optional[str] = None,
        return_dict_with_names: bool = True,
    ) -> Dict[str, Any]:
        """Components whose base name matches ``names``, optionally filtered by collection and load id.

        Patterns: ``"unet"`` exact name (or, if no name equals it, any name containing it); ``"unet*"`` prefix;
        ``"*unet*"`` / ``"*unet"`` contains; ``"unet|vae"`` any of (exact, or per-term patterns when a term has
        ``*``); a leading ``!`` negates the whole pattern. Returns ``{name: obj}`` (``{id: obj}`` with
        ``return_dict_with_names=False``).
        """
        if names is not None and not isinstance(names, str):
            raise ValueError(
                f"Invalid type for `names`: {type(names)}, only support string (a name or a pattern such as "
                f"'unet', 'unet*', '!unet', 'unet|vae'); use get_components_by_names for a list"
            )
        with self._lock:
            pool_ids = self._ordered(self._lookup_ids(collection=collection, load_id=load_id))
            pool = OrderedDict((cid, self.components[cid]) for cid in pool_ids)
            if names is None:
                return self._by_names(pool, return_dict_with_names)
            negate = names.startswith("!")
            pattern = names[1:] if negate else names
            bases = {cid: self._id_to_name(cid) for cid in pool}

            def term_matches(term: str, base: str, exact: bool) -> bool:
                if exact:
                    return term == base
                if len(term) > 1 and term.startswith("*") and term.endswith("*"):
                    return term[1:-1] in base
                if term.endswith("*"):
                    return base.startswith(term[:-1])
                if term.startswith("*"):
                    return term[1:] in base
                return term == base

            if "|" in pattern:
                terms = pattern.split("|")
                exact = not any("*" in (t[:1] + t[-1:]) for t in terms)
                test = lambda base: any(term_matches(t, base, exact) for t in terms)  # noqa: E731
            elif pattern in bases.values():
                test = lambda base: base == pattern  # noqa: E731
            elif pattern.startswith("*") or pattern.endswith("*"):
                test = lambda base: term_matches(pattern, base, False)  # noqa: E731
            elif any(pattern in b for b in bases.values()):
                test = lambda base: pattern in base  # noqa: E731
            else:
                raise ValueError(f"Component or pattern '{pattern}' not found in ComponentsManager")

            matches = OrderedDict((cid, comp) for cid, comp in pool.items() if test(bases[cid]) != negate)
            if not matches:
                raise ValueError(f"No components found matching pattern '{pattern}'")
            return self._by_names(matches, return_dict_with_names)

    def get_one(
        self,
        component_id: Optional[str] = None,
        name: Optional[str] = None,
        collection: Optional[str] = None,
        load_id: Optional[str] = None,
    ) -> Any:
        """Exactly one component: by ``component_id``, or by name pattern / collection / load id (see
        ``search_components``). Raises ValueError when none or several match."""
        if component_id is not None and (name is not None or collection is not None or load_id is not None):
            raise ValueError("If searching by component_id, do not pass name, collection, or load_id")
        with self._lock:
            if component_id is not None:
                if component_id not in self.components:
                    raise ValueError(f"Component '{component_id}' not found in ComponentsManager")
                return self.components[component_id]
            found = self.search_components(name, collection, load_id, return_dict_with_names=False)
            if not found:
                raise ValueError(f"No components found matching '{name}'")
            if len(found) > 1:
                raise ValueError(
                    f"Multiple components found matching '{name}': {[self._id_to_name(i) for i in found]} "
                    f"(ids: {list(found)})"
                )
            return next(iter(found.values()))

    def get_ids(self, names: Union[str, Sequence[str], None] = None, collection: Optional[str] = None) -> List[str]:
        """Ids of components whose base name is one of ``names`` (exact), optionally within ``collection``, in the
        order of ``names``."""
        if names is None or isinstance(names, str):
            names = [names]  # type: ignore[list-item]
        elif not isinstance(names, (list, tuple, set)):
            raise TypeError(f"`names` must be a str or a list of str, got {type(names).__name__}")
        with self._lock:
            ids: List[str] = []
            for n in names:  # in the order of `names` (then registration order)
                ids += [i for i in self._ordered(self._lookup_ids(name=n, collection=collection)) if i not in ids]
            return ids

    def get_components_by_ids(self, ids: Sequence[str], return_dict_with_names: bool = True) -> Dict[str, Any]:
        """``{name: obj}`` (or ``{id: obj}``) for the given ids; an unknown id raises KeyError."""
        with self._lock:
            selected = OrderedDict()
            for cid in ids:
                if cid not in self.components:
                    raise KeyError(f"Component '{cid}' not found in ComponentsManager")
                selected[cid] = self.components[cid]
            return self._by_names(selected, return_dict_with_names)

    def get_components_by_names(self, names: Union[str, Sequence[str]], collection: Optional[str] = None) -> Dict[str, Any]:
        """``{name: obj}`` for the given names (missing names are left out), ready for
        ``pipe.update_components(**...)``. Raises ValueError when a name has several components."""
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, (list, tuple, set)) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"`names` must be a list of str, got {names!r}")
        with self._lock:
            return self.get_components_by_ids(self.get_ids(list(names), collection))

    # ------------------------------------------------------------------------------------------------------------
    # info and display
    # ------------------------------------------------------------------------------------------------------------
    def get_model_info(self, component_id: str, fields: Union[str, Sequence[str], None] = None) -> Dict[str, Any]:
        """Metadata of a component: id, added time, collections; for models also class, size in GB, LoRA adapters,
        hook and execution device, IP-Adapter scales and quantization config. ``fields`` selects keys."""
        with self._lock:
            if component_id not in self.components:
                raise ValueError(f"Component '{component_id}' not found in ComponentsManager")
            if fields is not None:
                fields = [fields] if isinstance(fields, str) else list(fields)
                for f in fields:
                    if f not in self._available_info_fields:
                        raise ValueError(
                            f"Field '{f}' not found in available_info_fields; choose from {self._available_info_fields}"
                        )
            component = self.components[component_id]
            info: Dict[str, Any] = {
                "model_id": component_id,
                "added_time": self.added_time[component_id],
                "collection": ", ".join(self._collections_of(component_id)) or None,
            }
            if isinstance(component, torch.nn.Module):
                hook = get_device_hook(component)
                exec_device = getattr(component, "_diffblocks_execution_device", None)
                info.update(
                    {
                        "class_name": type(component).__name__,
                        "size_gb": model_size_bytes(component) / 1024**3,
                        "adapters": None,
                        "has_hook": hook is not None or exec_device is not None,
                        "execution_device": exec_device,
                    }
                )
                peft_config = getattr(component, "peft_config", None)
                if isinstance(peft_config, Mapping):
                    info["adapters"] = list(peft_config.keys())
                ip = self._ip_adapter_info(component)
                if ip is not None:
                    info["ip_adapter"] = ip
                quantizer = getattr(component, "hf_quantizer", None)
                info["quantization"] = None
                if quantizer is not None:
                    qconfig = getattr(quantizer, "quantization_config", None)
                    to_dict = getattr(qconfig, "to_diff_dict", None) or getattr(qconfig, "to_dict", None)
                    info["quantization"] = to_dict() if callable(to_dict) else qconfig
            if fields is not None:
                return {k: v for k, v in info.items() if k in fields}
            return info

    @staticmethod
    def _ip_adapter_info(model: torch.nn.Module) -> Optional[Dict[str, Any]]:
        try:
            processors = getattr(model, "attn_processors", None)
        except Exception:
            processors = None
        if isinstance(processors, Mapping):
            scales = {
                k: p.scale
                for k, p in processors.items()
                if "IPAdapter" in type(p).__name__ and hasattr(p, "scale")
            }
            if scales:
                return _summarize_by_prefix(scales)
            if any("IPAdapter" in type(p).__name__ for p in processors.values()):
                return {"": None}
        config = getattr(model, "config", None)
        hid_type = getattr(config, "encoder_hid_dim_type", None) if config is not None else None
        if hid_type == "ip_image_proj":
            return {"": "enabled"}
        return None

    def __repr__(self) -> str:
        with self._lock:
            if not self.components:
                return "Components:\n" + "=" * 50 + "\nNo components registered.\n" + "=" * 50
            colls = {cid: (self._collections_of(cid) or ["N/A"]) for cid in self.components}
            models = [(cid, c) for cid, c in self.components.items() if isinstance(c, torch.nn.Module)]
            others = [(cid, c) for cid, c in self.components.items() if not isinstance(c, torch.nn.Module)]
            load_ids = [_load_id_of(c) for _, c in models]
            widths = [
                max([15] + [len(cid) for cid in self.components]),
                max([25] + [len(type(c).__name__) for c in self.components.values()]),
                20,
                15,
                10,
                max([15] + [len(str(x)) for x in load_ids if x is not None]),
                max([10] + [len(c) for cs in colls.values() for c in cs]),
            ]
            rule_len = sum(widths) + 3 * len(widths) - 1
            eq_rule, dash_rule = "=" * rule_len, "-" * rule_len

            def row(cells: Sequence[str]) -> str:
                padded = [f"{cell:<{w}}" for cell, w in zip(cells[:-1], widths)]
                return " | ".join(padded + [cells[-1]])

            lines = ["Components:", eq_rule]
            if models:
                lines += ["Models:", dash_rule]
                lines.append(row(["Name_ID", "Class", "Device: act(exec)", "Dtype", "Size (GB)", "Load ID",
                                  "Collection"]))
                lines.append(dash_rule)
                for (cid, comp), load_id in zip(models, load_ids):
                    info = self.get_model_info(cid)
                    device = _device_of(comp)
                    if info["execution_device"] is not None:
                        device = f"{device}({info['execution_device']})"
                    size = f"{info['size_gb']:.2f}"
                    cs = colls[cid]
                    lines.append(row([cid, type(comp).__name__, device, _dtype_of(comp), size,
                                      "N/A" if load_id is None else str(load_id), cs[0]]))
                    lines += [row([""] * 6 + [c]) for c in cs[1:]]
                lines.append(dash_rule)
            if others:
                if models:
                    lines.append("")
                lines += ["Other Components:", dash_rule]
                short = widths[:2]

                def row2(cells: Sequence[str]) -> str:
                    return " | ".join([f"{cells[0]:<{short[0]}}", f"{cells[1]:<{short[1]}}", cells[2]])

                lines.append(row2(["ID", "Class", "Collection"]))
                lines.append(dash_rule)
                for cid, comp in others:
                    cs = colls[cid]
                    lines.append(row2([cid, type(comp).__name__, cs[0]]))
                    lines += [row2(["", "", c]) for c in cs[1:]]
                lines.append(dash_rule)
            lines += ["", "Additional Component Info:", "=" * 50]
            base_counts: Dict[str, int] = {}
            for cid in self.components:
                base_counts[self._id_to_name(cid)] = base_counts.get(self._id_to_name(cid), 0) + 1
            for cid, comp in models:
                info = self.get_model_info(cid)
                if info.get("adapters") is None and not info.get("ip_adapter") and not info.get("quantization"):
                    continue
                base = self._id_to_name(cid)
                # the component's name when it is unambiguous (as in the docs), else its id
                lines += ["", f"{base if base_counts[base] == 1 else cid}:"]
                if info.get("adapters") is not None:
                    lines.append(f"  Adapters: {info['adapters']}")
                if info.get("ip_adapter"):
                    lines.append("  IP-Adapter: Enabled")
                if info.get("quantization"):
                    lines.append(f"  Quantization: {info['quantization']}")
            return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------------------------------------------
    # auto CPU offload
    # ------------------------------------------------------------------------------------------------------------
    @property
    def model_hooks(self) -> Optional[List[DeviceHook]]:
        """The offload hooks (one per distinct model) while auto offload is on, else None."""
        with self._lock:
            return list(self._hooks.values()) if self._auto_offload_enabled else None

    def enable_auto_cpu_offload(
        self,
        device: Union[str, int, torch.device, None] = None,
        memory_reserve_margin: Union[int, str] = "3GB",
        offload_strategy: Optional[Callable] = None,
        *,
        memory_reserve: Union[int, str, None] = None,
        strategy: Optional[Callable] = None,
        free_memory_fn: Optional[Callable[[torch.device], int]] = None,
    ) -> None:
        """Keep every registered model on the CPU and move each to ``device`` right before it runs.

        When ``device`` lacks room (free memory minus ``memory_reserve_margin``, alias ``memory_reserve``),
        other resident models go back to the CPU, chosen by ``offload_strategy`` (alias ``strategy``): either a
        planner ``(resident: {id: (size_bytes, last_used)}, free_bytes, request_bytes, reserve_bytes) -> [ids]``
        (default :func:`plan_offload`) or a diffusers-style callable ``(hooks, model_id, model, execution_device)
        -> hooks`` such as :class:`AutoOffloadStrategy`. Models added later are hooked too; removed ones unhooked.
        ``free_memory_fn(device) -> bytes`` replaces the device query (simulated budgets, tests).
        ``device=None`` picks the current accelerator (the CPU, with a warning, when there is none).
        """
        if offload_strategy is not None and strategy is not None:
            raise ValueError("Pass either `offload_strategy` or its alias `strategy`, not both")
        strategy = strategy if strategy is not None else offload_strategy
        if strategy is not None and not callable(strategy):
            raise TypeError(f"`offload_strategy` must be callable, got {type(strategy).__name__}")
        if memory_reserve is not None:
            reserve = parse_memory_size(memory_reserve, "memory_reserve")
        else:
            reserve = parse_memory_size(memory_reserve_margin, "memory_reserve_margin")
        if free_memory_fn is not None and not callable(free_memory_fn):
            raise TypeError(f"`free_memory_fn` must be callable, got {type(free_memory_fn).__name__}")
        if device is None:
            accel = None
            try:
                accel = torch.accelerator.current_accelerator()  # type: ignore[attr-defined]
            except Exception:  # pragma: no cover - older torch
                if torch.cuda.is_available():
                    accel = torch.device("cuda")
            if accel is None:
                logger.warning("enable_auto_cpu_offload: no accelerator found, models will run on the cpu")
                device = torch.device("cpu")
            else:
                device = accel  # pragma: no cover - accelerator only
        device = to_device(device, "device")
        if device.type not in ("cpu", "meta"):
            backend = getattr(torch, device.type, None)
            is_available = getattr(backend, "is_available", None)
            if callable(is_available) and not is_available():
                raise ValueError(
                    f"`device`={str(device)!r} is not available on this machine; pass an available device "
                    f"(e.g. 'cpu'{', ' + repr('cuda') if torch.cuda.is_available() else ''})"
                )
            if device.index is None:
                device = torch.device(device.type, 0)
        elif device.type == "meta":
            raise ValueError("`device`='meta' cannot run models; pass e.g. 'cuda' or 'cpu'")

        with self._lock:
            self.disable_auto_cpu_offload()
            self._auto_offload_device = device
            self._memory_reserve = reserve
            self._offload_strategy = strategy if strategy is not None else plan_offload
            self._free_memory_fn = free_memory_fn or default_free_memory
            self._auto_offload_enabled = True
            for cid, comp in self.components.items():
                if isinstance(comp, torch.nn.Module):
                    self._hook_module(cid, comp)

    def set_offload_strategy(self, offload_strategy: Callable) -> None:
        """Replace the strategy used by auto offload (see ``enable_auto_cpu_offload``)."""
        with self._lock:
            if not self._auto_offload_enabled:
                raise ValueError("Auto CPU offloading is not enabled. Call `enable_auto_cpu_offload` first.")
            if not callable(offload_strategy):
                raise TypeError(f"`offload_strategy` must be callable, got {type(offload_strategy).__name__}")
            self._offload_strategy = offload_strategy

    def disable_auto_cpu_offload(self) -> None:
        """Send every hooked model back to the CPU and remove the hooks."""
        with self._lock:
            devices = set()
            for hook in self._hooks.values():
                hook.offload()
                hook.remove()
                devices.add(hook.execution_device)
            for d in devices:
                _empty_cache(d)
            self._hooks.clear()
            self._auto_offload_enabled = False
            self._offload_strategy = None

    def _hook_module(self, component_id: str, module: torch.nn.Module) -> None:
        if id(module) in self._hooks:
            return
        assert self._auto_offload_device is not None
        self._hooks[id(module)] = attach_device_hook(
            module,
            self._auto_offload_device,
            offload_device="cpu",
            on_before_onload=self._make_room,
            model_id=component_id,
            lock=self._lock,
        )

    def _make_room(self, hook: DeviceHook) -> None:
        """Called by a hook before its model moves to the device: evict what the strategy chooses."""
        with self._lock:
            device = hook.execution_device
            candidates = [
                h for h in self._hooks.values()
                if h is not hook and h.resident and not h.in_use and h.execution_device == device
            ]
            if not candidates:
                return
            strategy = self._offload_strategy or plan_offload
            if _is_hooks_style(strategy):
                chosen = list(strategy(hooks=candidates, model_id=hook.model_id, model=hook.module,
                                       execution_device=device) or [])
                unknown = [h for h in chosen if h not in candidates]
                if unknown:
                    raise ValueError(
                        f"offload strategy returned hooks that are not resident on {device}: "
                        f"{[getattr(h, 'model_id', h) for h in unknown]}"
                    )
            else:
                resident = OrderedDict((h.model_id, (model_size_bytes(h.module), h.last_used)) for h in candidates)
                free = int(self._free_memory_fn(device))
                request = model_size_bytes(hook.module)
                ids = list(strategy(resident, free, request, self._memory_reserve) or [])
                unknown = [i for i in ids if i not in resident]
                if unknown:
                    raise ValueError(
                        f"offload strategy returned ids that are not resident on {device}: {unknown}; "
                        f"choose from {list(resident)}"
                    )
                freed = sum(resident[i][0] for i in set(ids))
                if request > free + freed - self._memory_reserve and free < _UNLIMITED:
                    logger.warning(
                        f"ComponentsManager: not enough memory on {device} for {hook.model_id} "
                        f"({request / 1024**3:.2f} GB needed, {max(free + freed - self._memory_reserve, 0) / 1024**3:.2f}"
                        f" GB available after offloading {len(ids)} model(s)); moving it anyway"
                    )
                by_id = {h.model_id: h for h in candidates}
                chosen = [by_id[i] for i in dict.fromkeys(ids)]
            for h in chosen:
                logger.info(f"ComponentsManager: moving {hook.model_id} to {device}, offloading {h.model_id} to cpu")
                h.offload()
            if chosen:
                _empty_cache(device)
