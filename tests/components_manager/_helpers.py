"""Small objects and text helpers for the ComponentsManager tests."""
from __future__ import annotations

import logging
import re
from typing import Dict, List

import torch

CM_LOGGER = "diffblocks.modular_pipelines.components_manager"


def tiny_clip_text_model(seed: int = 0, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
        bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=32,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def named_module(class_name: str, size: int = 4, seed: int = 0) -> torch.nn.Module:
    """An ``nn.Module`` whose class is called ``class_name`` (the manager's tables show class names)."""
    cls = _CLASSES.get(class_name)
    if cls is None:
        cls = type(class_name, (_Tiny,), {})
        _CLASSES[class_name] = cls
    torch.manual_seed(seed)
    return cls(size)


class _Tiny(torch.nn.Module):
    def __init__(self, size: int = 4):
        super().__init__()
        self.proj = torch.nn.Linear(size, size)

    def forward(self, x):
        return self.proj(x)


_CLASSES: Dict[str, type] = {}


def named_object(class_name: str):
    """A plain (non-module) object of a class called ``class_name`` (tokenizers, schedulers)."""
    cls = _CLASSES.get("obj:" + class_name)
    if cls is None:
        cls = type(class_name, (), {})
        _CLASSES["obj:" + class_name] = cls
    return cls()


def cm_warnings(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == CM_LOGGER and r.levelno == logging.WARNING]


_SIZE = re.compile(r"\| \d+\.\d\d \|")


def normalize_table(text: str) -> List[str]:
    """The seed shows tables with runs of spaces collapsed and blank lines dropped: do the same to ours.

    Sizes are replaced by SIZE (tiny models are not 0.46 GB) and rule lines by their character.
    """
    out = []
    for line in text.splitlines():
        line = re.sub(r" +", " ", line).strip()
        if not line:
            continue
        if set(line) in ({"="}, {"-"}):
            line = line[0] * 3
        out.append(_SIZE.sub("| SIZE |", line))
    return out


def rule_lengths(text: str) -> List[int]:
    return [len(line) for line in text.splitlines() if line and set(line) in ({"="}, {"-"})]


def substitute_ids(text: str, mapping: Dict[str, str]) -> str:
    for ours, theirs in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(ours, theirs)
    return text
