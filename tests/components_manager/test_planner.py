"""The offload planner (a pure function) and the diffusers-style AutoOffloadStrategy, on simulated budgets."""
from __future__ import annotations

import itertools
import logging
import random
from types import SimpleNamespace

import pytest
import torch

from diffblocks.modular_pipelines.components_manager import AutoOffloadStrategy, plan_offload

from ._helpers import CM_LOGGER

GB = 10**9


def _fits(resident, evicted, free, request, reserve):
    return request <= free + sum(resident[i][0] for i in evicted) - reserve


def test_no_eviction_when_it_fits():
    resident = {"a": (4 * GB, 1), "b": (2 * GB, 2)}
    assert plan_offload(resident, free_bytes=10 * GB, request_bytes=5 * GB, reserve_bytes=3 * GB) == []
    assert plan_offload(resident, free_bytes=8 * GB, request_bytes=5 * GB, reserve_bytes=3 * GB) == []  # exact
    assert plan_offload({}, free_bytes=0, request_bytes=5 * GB, reserve_bytes=0) == []


def test_one_eviction_smallest_sufficient():
    resident = {"a": (5, 1), "b": (3, 2), "c": (2, 3)}
    # need 6 with 4 free and 1 reserved -> 3 more bytes: b (3) beats a (5) and c (2, too small)
    assert plan_offload(resident, free_bytes=4, request_bytes=6, reserve_bytes=1) == ["b"]


def test_several_evictions():
    resident = {"a": (4, 1), "b": (4, 2), "c": (1, 3)}
    # 8 needed, 3 usable -> 5 to free: {a, c} and {b, c} tie on bytes; a is least recently used
    assert plan_offload(resident, free_bytes=4, request_bytes=8, reserve_bytes=1) == ["a", "c"]
    resident["a"] = (4, 9)  # now b is older than a
    assert plan_offload(resident, free_bytes=4, request_bytes=8, reserve_bytes=1) == ["b", "c"]


def test_all_evictions_exactly_enough_and_impossible():
    resident = {"a": (3, 2), "b": (3, 1)}
    assert plan_offload(resident, free_bytes=0, request_bytes=6, reserve_bytes=0) == ["b", "a"]  # LRU first
    # impossible: documented behaviour is "evict everything" (the caller warns and loads anyway)
    assert plan_offload(resident, free_bytes=0, request_bytes=100, reserve_bytes=0) == ["b", "a"]


def test_lru_among_equal_sizes():
    resident = {"x": (2, 30), "y": (2, 10), "z": (2, 20)}
    assert plan_offload(resident, free_bytes=0, request_bytes=2, reserve_bytes=0) == ["y"]
    assert plan_offload(resident, free_bytes=0, request_bytes=4, reserve_bytes=0) == ["y", "z"]


def test_reserve_changes_the_decision():
    resident = {"a": (3, 1), "b": (2, 2), "c": (1, 3)}
    assert plan_offload(resident, free_bytes=6, request_bytes=4, reserve_bytes=1) == []
    assert plan_offload(resident, free_bytes=6, request_bytes=4, reserve_bytes=3) == ["c"]


@pytest.mark.parametrize("seed", range(40))
def test_random_budgets_never_exceed_and_are_minimal(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    resident = {f"m{i}": (rng.randint(1, 20), rng.randint(0, 5)) for i in range(n)}
    free, request, reserve = rng.randint(0, 20), rng.randint(1, 40), rng.randint(0, 5)
    plan = plan_offload(resident, free, request, reserve)
    assert len(plan) == len(set(plan)) and set(plan) <= set(resident)
    total = sum(s for s, _ in resident.values())
    if not _fits(resident, list(resident), free, request, reserve):
        assert sorted(plan) == sorted(resident)  # impossible -> everything
        return
    assert _fits(resident, plan, free, request, reserve)  # the budget is never exceeded
    best = min(
        (sum(resident[i][0] for i in combo)
         for r in range(0, n + 1) for combo in itertools.combinations(resident, r)
         if _fits(resident, combo, free, request, reserve)),
    )
    assert sum(resident[i][0] for i in plan) == best  # the fewest bytes that make room
    assert total >= best
    # returned least recently used first
    assert [resident[i][1] for i in plan] == sorted(resident[i][1] for i in plan)


def test_many_models_greedy_still_makes_room():
    resident = {f"m{i}": (i + 1, i) for i in range(30)}
    plan = plan_offload(resident, free_bytes=0, request_bytes=50, reserve_bytes=0)
    assert sum(resident[i][0] for i in plan) >= 50
    assert _fits(resident, plan, 0, 50, 0)


# --- the diffusers-style strategy object (spec 4.1 cases, UNIT = 1024 bytes, margin 1 UNIT) --------------------
UNIT = 1024


class _Sized(torch.nn.Module):
    def __init__(self, units):
        super().__init__()
        self.units = units

    def get_memory_footprint(self):
        return self.units * UNIT


def _hooks(**sizes):
    return [SimpleNamespace(model_id=k, model=_Sized(v)) for k, v in sizes.items()]


def _strategy(free_units, margin=UNIT):
    return AutoOffloadStrategy(memory_reserve_margin=margin, free_memory_fn=lambda d: free_units * UNIT)


def test_auto_offload_strategy_cases(caplog):
    dev = torch.device("cuda", 0)  # only a descriptor: free memory comes from the injected function
    assert _strategy(70)(hooks=_hooks(a=5), model_id="m", model=_Sized(4), execution_device=dev) == []
    hooks = _hooks(a=5, b=3, c=2)
    assert [h.model_id for h in _strategy(4)(hooks=hooks, model_id="m", model=_Sized(6), execution_device=dev)] == ["b"]
    hooks = _hooks(a=4, b=4, c=1)
    got = _strategy(4)(hooks=hooks, model_id="m", model=_Sized(8), execution_device=dev)
    assert [h.model_id for h in got] == ["a", "c"]
    caplog.set_level(logging.WARNING, logger=CM_LOGGER)
    hooks = _hooks(a=4, b=4, c=1)
    got = _strategy(1)(hooks=hooks, model_id="m", model=_Sized(11), execution_device=dev)
    assert [h.model_id for h in got] == ["a", "b", "c"]
    assert "no combination of models to offload to cpu is found, offloading all models" in caplog.text
    assert _strategy(1)(hooks=[], model_id="m", model=_Sized(11), execution_device=dev) == []
    # the margin changes the decision
    assert _strategy(5)(hooks=_hooks(a=3), model_id="m", model=_Sized(3), execution_device=dev) == []
    got = _strategy(5, margin=3 * UNIT)(hooks=_hooks(a=3), model_id="m", model=_Sized(3), execution_device=dev)
    assert [h.model_id for h in got] == ["a"]
    got = _strategy(6, margin=3 * UNIT)(hooks=_hooks(a=3, b=2, c=1), model_id="m", model=_Sized(4),
                                        execution_device=dev)
    assert [h.model_id for h in got] == ["c"]
