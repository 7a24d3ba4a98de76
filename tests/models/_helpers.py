"""Shared helpers for the model parity tests: build diffusers' and our model from one config, same weights."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

TOL = 1e-5


def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Add small seeded noise to every parameter (zero-initialised layers such as ControlNet zero convs become
    non-zero, so they take part in the comparison)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


def twin(ours_cls: Any, ref_cls: Any, config: Dict[str, Any], seed: int = 0) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, reference) from ``config``; the reference is seeded and perturbed, ours receives its state dict with
    strict loading after checking identical key sets and shapes."""
    torch.manual_seed(seed)
    ref = perturb(ref_cls(**config), seed=seed).eval()
    ours = ours_cls(**config).eval()
    assert_same_layout(ours, ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def assert_same_layout(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    a, b = ours.state_dict(), ref.state_dict()
    only_ours, only_ref = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    assert not only_ours and not only_ref, f"keys only in ours: {only_ours[:5]}, only in diffusers: {only_ref[:5]}"
    bad = [(k, tuple(a[k].shape), tuple(b[k].shape)) for k in a if a[k].shape != b[k].shape]
    assert not bad, f"shape mismatches: {bad[:5]}"


def max_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    assert x.shape == y.shape, f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}"
    return (x.float() - y.float()).abs().max().item()
