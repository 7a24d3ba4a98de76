"""Device hooks: move a model (or its weights, piece by piece) to an execution device right before use.

Two variants, shared by the ComponentsManager's auto offload and the classic pipelines' offload methods:

* **Model-level** (:func:`attach_device_hook`): the whole model lives on ``offload_device`` (normally the CPU)
  and is moved to ``execution_device`` right before its ``forward`` runs (and, for models that have them, before
  ``encode`` / ``decode``, e.g. a VAE). It stays there until someone calls :meth:`DeviceHook.offload`. Callbacks
  let the owner decide what else to evict (``on_before_onload``), which is how the ComponentsManager makes room and
  how :func:`attach_offload_chain` reproduces ``enable_model_cpu_offload`` (each model sends its predecessor back).
* **Sequential** (:func:`attach_sequential_offload`): every submodule that owns parameters or buffers moves
  only its own tensors to the device for the duration of its ``forward`` and back afterwards. Lowest memory,
  slowest. Limitation: a tensor read by a parent module without calling the owning submodule is not streamed.

Every hooked root module carries ``module._diffblocks_execution_device`` (a ``torch.device``) and
``module._diffblocks_hook`` (the hook object); :func:`remove_hooks` undoes everything.

Residency is tracked by the hook (``DeviceHook.resident``) rather than read from parameter devices, so the
logic behaves the same when the execution device is the CPU (which is how it is tested).
"""
from __future__ import annotations

import functools
import itertools
import logging
import threading
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DeviceHook",
    "SequentialOffloadHook",
    "attach_device_hook",
    "attach_offload_chain",
    "attach_sequential_offload",
    "get_device_hook",
    "remove_hooks",
    "send_to_device",
    "to_device",
]

HOOK_ATTR = "_diffblocks_hook"
EXECUTION_DEVICE_ATTR = "_diffblocks_execution_device"
_SEQ_ATTR = "_diffblocks_sequential_hook"

DeviceLike = Union[str, int, torch.device]

# A logical clock: strictly increasing, so "least recently used" is well defined even within one timer tick.
_clock = itertools.count(1)


def to_device(device: DeviceLike, argument: str = "device") -> torch.device:
    """Normalise ``device`` (``"cuda"``, ``"cuda:1"``, ``1``, ``torch.device``) to a ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, bool):
        raise TypeError(f"`{argument}` must be a str, int or torch.device, got {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"`{argument}` must be a non-negative device index, got {device}")
        return torch.device("cuda", device)
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as e:
            raise ValueError(
                f"`{argument}`={device!r} is not a valid device; expected e.g. 'cpu', 'cuda', 'cuda:0', 'mps'"
            ) from e
    raise TypeError(f"`{argument}` must be a str, int or torch.device, got {type(device).__name__}")


def send_to_device(obj: Any, device: torch.device) -> Any:
    """Return ``obj`` with every tensor (inside tuples, lists and dicts, recursively) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device)
    if isinstance(obj, (list, tuple)):
        if not obj:
            return obj
        moved = [send_to_device(o, device) for o in obj]
        if all(a is b for a, b in zip(moved, obj)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*moved)
        return type(obj)(moved)
    if isinstance(obj, dict):
        if not obj:
            return obj
        moved = {k: send_to_device(v, device) for k, v in obj.items()}
        if all(moved[k] is obj[k] for k in obj):
            return obj
        try:
            return type(obj)(moved)
        except TypeError:
            return moved
    return obj


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        return True
    return a.index == b.index


def get_device_hook(module: torch.nn.Module) -> Optional["DeviceHook"]:
    """The model-level hook attached to ``module``, or None."""
    hook = module.__dict__.get(HOOK_ATTR)
    return hook if isinstance(hook, DeviceHook) else None


class DeviceHook:
    """Moves one model to ``execution_device`` before it runs; :meth:`offload` sends it back.

    Attributes: ``module`` (alias ``model``), ``model_id`` (a label, set by the owner), ``execution_device``,
    ``offload_device``, ``resident`` (True while the model is on the execution device), ``last_used`` (a logical
    clock value, larger = more recent).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        execution_device: torch.device,
        offload_device: torch.device,
        on_before_onload: Optional[Callable[["DeviceHook"], None]] = None,
        on_before_forward: Optional[Callable[["DeviceHook"], None]] = None,
        move_inputs: bool = True,
        model_id: Optional[str] = None,
        lock: Optional[Any] = None,
    ):
        self.module = module
        self.execution_device = execution_device
        self.offload_device = offload_device
        self.on_before_onload = on_before_onload
        self.on_before_forward = on_before_forward
        self.move_inputs = move_inputs
        self.model_id = model_id
        self.resident = False
        self.last_used = 0
        self.in_use = 0  # > 0 while a forward/encode/decode of this model is running (never evict then)
        # hooks that evict each other must share one lock (else two threads can deadlock)
        self._lock = lock if lock is not None else threading.RLock()
        self._handles: List[Any] = []
        self._wrapped_methods: List[str] = []
        self._attached = False

    @property
    def model(self) -> torch.nn.Module:
        return self.module

    def __repr__(self) -> str:
        state = "resident" if self.resident else "offloaded"
        return f"DeviceHook({self.model_id or type(self.module).__name__}, {self.execution_device}, {state})"

    # --- movement -------------------------------------------------------------------------------------------
    def onload(self) -> None:
        """Move the model to the execution device (no callbacks)."""
        with self._lock:
            self.module.to(self.execution_device)
            self.resident = True

    def offload(self) -> None:
        """Move the model back to the offload device."""
        with self._lock:
            self.module.to(self.offload_device)
            self.resident = False

    def prepare(self) -> None:
        """What runs before each forward/encode/decode: callbacks, then the move if the model is not resident."""
        with self._lock:
            if self.on_before_forward is not None:
                self.on_before_forward(self)
            if not self.resident:
                if self.on_before_onload is not None:
                    self.on_before_onload(self)
                logger.debug("moving %s to %s", self.model_id or type(self.module).__name__, self.execution_device)
                self.onload()
            self.last_used = next(_clock)
            self.in_use += 1

    def release(self) -> None:
        """Called after each forward/encode/decode (also on error): the model may be evicted again."""
        with self._lock:
            self.in_use = max(0, self.in_use - 1)
            self.last_used = next(_clock)

    # --- wiring ---------------------------------------------------------------------------------------------
    def _attach(self, methods: Iterable[str]) -> None:
        module = self.module

        def pre_forward(mod, args, kwargs):
            self.prepare()
            if self.move_inputs:
                return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)
            return None

        def post_forward(mod, args, output):
            self.release()
            return None

        self._handles.append(module.register_forward_pre_hook(pre_forward, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post_forward, always_call=True))
        for name in methods:
            if name == "forward" or name in module.__dict__:
                continue
            original = getattr(type(module), name, None)
            if not callable(original):
                continue
            bound = getattr(module, name)
            module.__dict__[name] = self._wrap_method(bound)
            self._wrapped_methods.append(name)
        module.__dict__[HOOK_ATTR] = self
        module.__dict__[EXECUTION_DEVICE_ATTR] = self.execution_device
        self._attached = True

    def _wrap_method(self, bound: Callable) -> Callable:
        hook = self

        @functools.wraps(bound)
        def wrapper(*args, **kwargs):
            hook.prepare()
            try:
                if hook.move_inputs:
                    args = send_to_device(args, hook.execution_device)
                    kwargs = send_to_device(kwargs, hook.execution_device)
                return bound(*args, **kwargs)
            finally:
                hook.release()

        wrapper.__diffblocks_hook_wrapper__ = True  # type: ignore[attr-defined]
        return wrapper

    def remove(self) -> None:
        """Detach from the module (the model stays where it is)."""
        with self._lock:
            if not self._attached:
                return
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for name in self._wrapped_methods:
                fn = self.module.__dict__.get(name)
                if getattr(fn, "__diffblocks_hook_wrapper__", False):
                    del self.module.__dict__[name]
            self._wrapped_methods.clear()
            if self.module.__dict__.get(HOOK_ATTR) is self:
                del self.module.__dict__[HOOK_ATTR]
                self.module.__dict__.pop(EXECUTION_DEVICE_ATTR, None)
            self._attached = False


def attach_device_hook(
    module: torch.nn.Module,
    execution_device: DeviceLike,
    *,
    offload_device: DeviceLike = "cpu",
    on_before_onload: Optional[Callable[[DeviceHook], None]] = None,
    on_before_forward: Optional[Callable[[DeviceHook], None]] = None,
    methods: Sequence[str] = ("encode", "decode"),
    move_inputs: bool = True,
    offload: bool = True,
    model_id: Optional[str] = None,
    lock: Optional[Any] = None,
) -> DeviceHook:
    """Attach a model-level device hook to ``module`` and return it.

    Before ``module.forward`` (and before each method named in ``methods`` that the module has, e.g. a VAE's
    ``encode``/``decode``) the hook calls ``on_before_forward(hook)`` if given; then, when the model is not
    resident, ``on_before_onload(hook)`` (the place to evict other models) and moves the model to
    ``execution_device``. Tensor arguments are moved to the device when ``move_inputs``. With ``offload=True``
    (default) the model is moved to ``offload_device`` now. An existing hook on the module is replaced.
    Hooks whose callbacks move each other's models must be given the same ``lock`` (an ``RLock``).
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(methods, str):
        raise TypeError("`methods` must be a sequence of method names, e.g. ('encode', 'decode'), not a str")
    remove_hooks(module)
    hook = DeviceHook(
        module,
        to_device(execution_device, "execution_device"),
        to_device(offload_device, "offload_device"),
        on_before_onload=on_before_onload,
        on_before_forward=on_before_forward,
        move_inputs=move_inputs,
        model_id=model_id,
        lock=lock,
    )
    if offload:
        hook.offload()
    else:
        hook.resident = _module_on(module, hook.execution_device)
    hook._attach(methods)
    return hook


def _module_on(module: torch.nn.Module, device: torch.device) -> bool:
    for t in itertools.chain(module.parameters(), module.buffers()):
        return _same_device(t.device, device)
    return True


def attach_offload_chain(
    modules: Sequence[torch.nn.Module],
    execution_device: DeviceLike,
    *,
    offload_device: DeviceLike = "cpu",
    methods: Sequence[str] = ("encode", "decode"),
) -> List[DeviceHook]:
    """Model CPU offload for a fixed sequence (``enable_model_cpu_offload``).

    Each model is hooked; when model ``i`` is about to move to the device, model ``i-1`` (its predecessor in
    ``modules``) is sent back to ``offload_device`` if resident. Returns the hooks in order; call
    ``hook.offload()`` on each to free the device at the end of a run.
    """
    hooks: List[DeviceHook] = []
    lock = threading.RLock()
    for i, module in enumerate(modules):

        def evict_previous(hook: DeviceHook, i: int = i) -> None:
            if i > 0 and hooks[i - 1].resident:
                hooks[i - 1].offload()

        hooks.append(
            attach_device_hook(
                module, execution_device, offload_device=offload_device, on_before_onload=evict_previous,
                methods=methods, lock=lock,
            )
        )
    return hooks


class SequentialOffloadHook:
    """Streams each submodule's own parameters and buffers to the device for the duration of its forward."""

    def __init__(self, module: torch.nn.Module, execution_device: torch.device, offload_device: torch.device):
        self.module = module
        self.execution_device = execution_device
        self.offload_device = offload_device
        self._handles: List[Any] = []
        self._root_hook: Optional[DeviceHook] = None

    @property
    def model(self) -> torch.nn.Module:
        return self.module

    @staticmethod
    def _move_own(mod: torch.nn.Module, device: torch.device) -> None:
        for p in mod._parameters.values():
            if p is not None and p.device != device:
                p.data = p.data.to(device)
        for name, b in mod._buffers.items():
            if b is not None and b.device != device:
                mod._buffers[name] = b.to(device)

    def _attach(self) -> None:
        exec_dev, off_dev = self.execution_device, self.offload_device
        for mod in self.module.modules():
            if not mod._parameters and not mod._buffers:
                continue
            if not any(t is not None for t in itertools.chain(mod._parameters.values(), mod._buffers.values())):
                continue

            def pre(m, args, kwargs):
                self._move_own(m, exec_dev)
                return send_to_device(args, exec_dev), send_to_device(kwargs, exec_dev)

            def post(m, args, output):
                self._move_own(m, off_dev)
                return None

            self._handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(mod.register_forward_hook(post))
        self.module.__dict__[_SEQ_ATTR] = self
        self.module.__dict__[EXECUTION_DEVICE_ATTR] = exec_dev

    def offload(self) -> None:
        self.module.to(self.offload_device)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._root_hook is not None:
            self._root_hook.remove()
            self._root_hook = None
        if self.module.__dict__.get(_SEQ_ATTR) is self:
            del self.module.__dict__[_SEQ_ATTR]
            self.module.__dict__.pop(EXECUTION_DEVICE_ATTR, None)


def attach_sequential_offload(
    module: torch.nn.Module,
    execution_device: DeviceLike,
    *,
    offload_device: DeviceLike = "cpu",
    methods: Sequence[str] = ("encode", "decode"),
) -> SequentialOffloadHook:
    """Sequential CPU offload (``enable_sequential_cpu_offload``): weights stay on ``offload_device`` and each
    submodule's own tensors visit ``execution_device`` only while that submodule runs. Inputs of the root's
    ``forward`` and of ``methods`` (e.g. a VAE's ``encode``/``decode``) are moved to the device."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    remove_hooks(module)
    exec_dev = to_device(execution_device, "execution_device")
    off_dev = to_device(offload_device, "offload_device")
    module.to(off_dev)
    seq = SequentialOffloadHook(module, exec_dev, off_dev)
    # the root wrapper only moves inputs of encode/decode; the model itself is never moved as a whole
    root = DeviceHook(module, exec_dev, off_dev, move_inputs=True)
    root.resident = True  # never move the whole model
    bound_methods = []
    for name in methods:
        if name == "forward" or name in module.__dict__ or not callable(getattr(type(module), name, None)):
            continue
        module.__dict__[name] = root._wrap_method(getattr(module, name))
        bound_methods.append(name)
    root._wrapped_methods = bound_methods
    root._attached = True
    seq._root_hook = root
    seq._attach()
    return seq


def remove_hooks(module: torch.nn.Module, *, offload: bool = False) -> None:
    """Remove every diffblocks device hook from ``module`` (model-level and sequential).

    With ``offload=True`` a model-level-hooked model is first sent back to its offload device.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    hook = get_device_hook(module)
    if hook is not None:
        if offload:
            hook.offload()
        hook.remove()
    seq = module.__dict__.get(_SEQ_ATTR)
    if isinstance(seq, SequentialOffloadHook):
        seq.remove()
    module.__dict__.pop(EXECUTION_DEVICE_ATTR, None)


def has_hooks(module: torch.nn.Module) -> bool:
    """True when ``module`` carries a diffblocks device hook of either kind."""
    return get_device_hook(module) is not None or isinstance(module.__dict__.get(_SEQ_ATTR), SequentialOffloadHook)
