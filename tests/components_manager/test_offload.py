"""Auto CPU offload end to end with device="cpu" and a simulated device budget, plus the hooks module API."""
from __future__ import annotations

import logging

import pytest
import torch

from diffblocks.hooks import (
    attach_device_hook,
    attach_offload_chain,
    attach_sequential_offload,
    get_device_hook,
    has_hooks,
    remove_hooks,
)
from diffblocks.modular_pipelines import ComponentsManager
from diffblocks.modular_pipelines.components_manager import AutoOffloadStrategy, plan_offload

from ._helpers import CM_LOGGER


class Recorder(torch.nn.Module):
    """A model of ``units`` float32 parameters that records where it is moved."""

    def __init__(self, units: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(units, generator=g))
        self.moves = []
        self.inner = None  # another model called from inside forward

    def to(self, *args, **kwargs):
        device = args[0] if args else kwargs.get("device")
        self.moves.append(str(device))
        return super().to(*args, **kwargs)

    def forward(self, x):
        out = x * self.weight[: x.shape[-1]].sum()
        if self.inner is not None:
            out = out + self.inner(x)
        return out


class TinyVAE(Recorder):
    def encode(self, x):
        return x * 2 + self.weight[0]

    def decode(self, z):
        return z / 2 - self.weight[0]


def size(m):
    return m.weight.numel() * 4


class Budget:
    """free bytes on the simulated device = capacity - bytes of the models the manager keeps resident."""

    def __init__(self, cm, capacity):
        self.cm, self.capacity, self.calls = cm, capacity, []

    def __call__(self, device):
        self.calls.append(device)
        used = sum(size(h.module) for h in self.cm.model_hooks if h.resident)
        return self.capacity - used


def resident(cm):
    return sorted(cm._id_to_name(h.model_id) for h in cm.model_hooks if h.resident)


@pytest.fixture
def setup():
    cm = ComponentsManager()
    models = {"text_encoder": Recorder(100, 1), "unet": Recorder(400, 2), "vae": TinyVAE(50, 3)}
    x = torch.ones(2, 4)
    expected = {"text_encoder": models["text_encoder"](x), "unet": models["unet"](x),
                "vae": models["vae"].decode(models["vae"].encode(x))}
    for name, m in models.items():
        cm.add(name, m, collection="t2i")
    return cm, models, x, expected


def test_models_start_on_cpu_and_move_before_use(setup):
    cm, models, x, expected = setup
    budget = Budget(cm, capacity=10_000)
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, free_memory_fn=budget)
    assert all(m.moves[-1] == "cpu" for m in models.values())
    assert len(cm.model_hooks) == 3 and resident(cm) == []
    for m in models.values():
        assert m._diffblocks_execution_device == torch.device("cpu")
    torch.testing.assert_close(models["text_encoder"](x), expected["text_encoder"])
    assert resident(cm) == ["text_encoder"]
    torch.testing.assert_close(models["unet"](x), expected["unet"])
    assert resident(cm) == ["text_encoder", "unet"]  # ample memory: both stay
    # the VAE moves before encode/decode, not only forward
    vae = models["vae"]
    torch.testing.assert_close(vae.decode(vae.encode(x)), expected["vae"])
    assert resident(cm) == ["text_encoder", "unet", "vae"]
    info = cm.get_model_info(f"unet_{id(models['unet'])}")
    assert info["has_hook"] is True and info["execution_device"] == torch.device("cpu")
    assert "| cpu(cpu)" in repr(cm)


def test_evicts_under_pressure_least_bytes_then_lru(setup, caplog):
    cm, models, x, expected = setup
    caplog.set_level(logging.INFO, logger=CM_LOGGER)
    # capacity 2200 bytes, reserve 200: text_encoder (400 B) + vae (200 B) fit; unet (1600 B) needs room
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=200, free_memory_fn=Budget(cm, 2200))
    models["text_encoder"](x)
    models["vae"].encode(x)
    assert resident(cm) == ["text_encoder", "vae"]
    # free = 2200 - 600 = 1600; need 1600 + 200 reserve -> 200 bytes: evicting the vae (200 B) is enough
    torch.testing.assert_close(models["unet"](x), expected["unet"])
    assert resident(cm) == ["text_encoder", "unet"]
    assert f"moving unet_{id(models['unet'])} to cpu, offloading vae_{id(models['vae'])} to cpu" in caplog.text
    # the vae needs 200 + 200 with 2200 - 2000 = 200 free -> evict 200 B: text_encoder (400 B) is the smallest
    models["vae"].decode(x)
    assert resident(cm) == ["unet", "vae"]


def test_all_evicted_and_impossible_request_warns(setup, caplog):
    cm, models, x, _ = setup
    cm.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, free_memory_fn=Budget(cm, 1000))
    models["text_encoder"](x)
    models["vae"].encode(x)
    caplog.clear()
    models["unet"](x)  # 1600 B can never fit in 1000 B: everything goes, the unet runs anyway
    assert resident(cm) == ["unet"]
    assert any("not enough memory on cpu for unet_" in m and "moving it anyway" in m for m in caplog.messages)


def test_user_planner_is_honoured(setup):
    cm, models, x, _ = setup
    calls = []

    def keep_unet(resident_models, free_bytes, request_bytes, reserve_bytes):
        calls.append((dict(resident_models), free_bytes, request_bytes, reserve_bytes))
        return [i for i in resident_models if not i.startswith("unet")]  # evict everything but the unet

    cm.enable_auto_cpu_offload(device="cpu", memory_reserve=64, strategy=keep_unet,
                               free_memory_fn=lambda d: 123456)
    models["unet"](x)
    assert calls == []  # nothing resident yet: no decision to make
    models["text_encoder"](x)
    uid = f"unet_{id(models['unet'])}"
    assert len(calls) == 1
    (res, free, request, reserve), = calls
    assert list(res) == [uid] and res[uid][0] == 1600 and free == 123456 and request == 400 and reserve == 64
    models["vae"].decode(x)
    assert resident(cm) == ["unet", "vae"]

    def bad(resident_models, free_bytes, request_bytes, reserve_bytes):
        return ["not_there"]

    cm.set_offload_strategy(bad)
    with pytest.raises(ValueError, match=r"offload strategy returned ids that are not resident on cpu: \['not_there'\]"):
        models["text_encoder"](x)


def test_diffusers_style_strategy_is_honoured(setup):
    cm, models, x, _ = setup
    seen = []

    class OffloadLargest:
        def __call__(self, hooks, model_id, model, execution_device):
            seen.append((sorted(h.model_id for h in hooks), model_id, model, execution_device))
            return [max(hooks, key=lambda h: h.model.weight.numel())]

    cm.enable_auto_cpu_offload("cpu", offload_strategy=OffloadLargest())
    models["unet"](x)
    models["text_encoder"](x)
    assert seen[-1][1] == f"text_encoder_{id(models['text_encoder'])}" and seen[-1][2] is models["text_encoder"]
    assert seen[-1][3] == torch.device("cpu")
    assert resident(cm) == ["text_encoder"]
    # AutoOffloadStrategy plugs in the same way
    cm.set_offload_strategy(AutoOffloadStrategy(memory_reserve_margin=0, free_memory_fn=lambda d: 10**9))
    models["unet"](x)
    assert resident(cm) == ["text_encoder", "unet"]


def test_components_added_and_removed_while_enabled_and_across_pipelines(setup):
    cm, models, x, _ = setup
    cm.enable_auto_cpu_offload("cpu", memory_reserve_margin=0, free_memory_fn=Budget(cm, 2000))
    refiner_unet = Recorder(300, 9)
    rid = cm.add("unet", refiner_unet, collection="refiner")  # a second pipeline's model
    cm.add("vae", models["vae"], collection="refiner")  # shared: no second hook
    assert refiner_unet.moves == ["cpu"] and len(cm.model_hooks) == 4
    models["unet"](x)
    refiner_unet(x)  # 1600 + 1200 > 2000: the t2i unet goes
    assert resident(cm) == ["unet"] and get_device_hook(refiner_unet).resident
    cm.remove(rid)
    assert get_device_hook(refiner_unet) is None and not hasattr(refiner_unet, "_diffblocks_execution_device")
    assert refiner_unet.moves[-1] == "cpu" and len(cm.model_hooks) == 3
    models["unet"](x)
    assert resident(cm) == ["unet"]
    # the same object under two ids keeps one hook until its last id goes
    clip_id = cm.add("clip", models["text_encoder"])
    assert len(cm.model_hooks) == 3
    cm.remove(f"text_encoder_{id(models['text_encoder'])}")
    hook = get_device_hook(models["text_encoder"])
    assert hook is not None and hook.model_id == clip_id
    cm.remove(clip_id)
    assert get_device_hook(models["text_encoder"]) is None


def test_running_model_is_never_evicted(setup):
    cm, models, x, expected = setup
    # the unet calls the text encoder from inside its forward; with room for only one model the strategy
    # must not be offered the unet while it runs
    models["unet"].inner = models["text_encoder"]
    cm.enable_auto_cpu_offload("cpu", memory_reserve_margin=0, free_memory_fn=Budget(cm, 1700))
    out = models["unet"](x)
    torch.testing.assert_close(out, expected["unet"] + expected["text_encoder"])
    assert resident(cm) == ["text_encoder", "unet"]
    assert all(h.in_use == 0 for h in cm.model_hooks)


def test_disable_and_errors(setup):
    cm, models, x, _ = setup
    with pytest.raises(ValueError, match="Auto CPU offloading is not enabled. Call `enable_auto_cpu_offload` first."):
        cm.set_offload_strategy(plan_offload)
    assert cm.model_hooks is None
    cm.enable_auto_cpu_offload("cpu")
    models["unet"](x)
    cm.disable_auto_cpu_offload()
    assert cm.model_hooks is None
    assert not any(has_hooks(m) for m in models.values())
    assert "encode" not in models["vae"].__dict__ and models["unet"].moves[-1] == "cpu"
    with pytest.raises(TypeError, match="`device` must be a str, int or torch.device, got list"):
        cm.enable_auto_cpu_offload(device=["cuda"])
    with pytest.raises(ValueError, match="`device`='nonsense' is not a valid device"):
        cm.enable_auto_cpu_offload(device="nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="`device`='cuda' is not available on this machine"):
            cm.enable_auto_cpu_offload(device="cuda")
    with pytest.raises(ValueError, match="`memory_reserve_margin`='lots' is not a memory size"):
        cm.enable_auto_cpu_offload("cpu", memory_reserve_margin="lots")
    with pytest.raises(ValueError, match="Pass either `offload_strategy` or its alias `strategy`, not both"):
        cm.enable_auto_cpu_offload("cpu", offload_strategy=plan_offload, strategy=plan_offload)
    with pytest.raises(TypeError, match="`offload_strategy` must be callable, got str"):
        cm.enable_auto_cpu_offload("cpu", offload_strategy="lru")
    assert cm.model_hooks is None  # failed calls change nothing


# --- diffblocks.hooks API (used by the classic pipelines' offload methods too) ------------------------------------
def test_attach_device_hook_callbacks_and_remove():
    m = TinyVAE(8)
    x = torch.ones(1, 4)
    ref = x * m.weight[:4].sum()
    events = []
    hook = attach_device_hook(m, "cpu", on_before_onload=lambda h: events.append("onload"),
                              on_before_forward=lambda h: events.append("forward"), model_id="vae")
    assert m.moves == ["cpu"] and hook.resident is False and m._diffblocks_hook is hook
    torch.testing.assert_close(m(x), ref)
    m.encode(x)
    assert events == ["forward", "onload", "forward"] and hook.resident and hook.in_use == 0
    first = hook.last_used
    m.decode(x)
    assert hook.last_used > first
    def boom(_):
        raise RuntimeError("boom")

    m.inner = boom
    with pytest.raises(RuntimeError, match="boom"):
        m(x)  # an error inside forward still releases the hook
    assert hook.in_use == 0
    m.inner = None
    remove_hooks(m)
    assert get_device_hook(m) is None and "encode" not in m.__dict__ and not hasattr(m, "_diffblocks_execution_device")
    events.clear()
    m(x)
    assert events == []
    with pytest.raises(TypeError, match="`module` must be a torch.nn.Module, got int"):
        attach_device_hook(3, "cpu")
    with pytest.raises(TypeError, match="`methods` must be a sequence of method names"):
        attach_device_hook(m, "cpu", methods="encode")


def test_offload_chain_sends_predecessor_back():
    a, b, c = Recorder(4, 1), Recorder(4, 2), TinyVAE(4, 3)
    x = torch.ones(1, 4)
    hooks = attach_offload_chain([a, b, c], "cpu")
    a(x)
    b(x)
    assert [h.resident for h in hooks] == [False, True, False]
    c.decode(x)
    assert [h.resident for h in hooks] == [False, False, True]
    a(x)  # the first model has no predecessor: c stays until the end-of-run cleanup
    assert [h.resident for h in hooks] == [True, False, True]
    for h in hooks:
        h.offload()
    assert not any(h.resident for h in hooks)
    for m in (a, b, c):
        remove_hooks(m)
        assert not has_hooks(m)


def test_sequential_offload_streams_submodules():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    ref = model(x)
    moved = []
    seq = attach_sequential_offload(model, "cpu")
    for sub in (model[0], model[2]):
        sub.register_forward_pre_hook(lambda m, a: moved.append(m.weight.device.type))
    torch.testing.assert_close(model(x), ref)
    assert moved == ["cpu", "cpu"] and model._diffblocks_execution_device == torch.device("cpu")
    assert len(seq._handles) == 4  # pre + post on each Linear; ReLU owns no tensors
    remove_hooks(model)
    assert not has_hooks(model) and seq._handles == []
    torch.testing.assert_close(model(x), ref)


def test_concurrent_forwards_under_pressure_do_not_deadlock(setup):
    import threading

    cm, models, x, expected = setup
    cm.enable_auto_cpu_offload("cpu", memory_reserve_margin=0, free_memory_fn=Budget(cm, 1700))
    errors, results = [], {}

    def run(name):
        try:
            m = models[name]
            for _ in range(20):
                out = m.decode(m.encode(x)) if name == "vae" else m(x)
            results[name] = out
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and errors == []
    for name in models:
        torch.testing.assert_close(results[name], expected[name])
    assert all(h.in_use == 0 for h in cm.model_hooks)
