"""BaseOutput: attribute, key and index access over the fields that are set, like diffusers' outputs."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from diffblocks.models.outputs import BaseOutput


@dataclass
class _Out(BaseOutput):
    images: Optional[torch.Tensor] = None
    nsfw: Optional[list] = None
    extra: Optional[int] = None


def test_access_by_attribute_key_and_index():
    t = torch.ones(2)
    out = _Out(images=t, extra=3)
    assert out.images is t and out["images"] is t and out[0] is t
    assert out[1] == 3 and out["extra"] == 3  # None fields are skipped in index access
    assert out.to_tuple() == (t, 3)
    assert list(out.keys()) == ["images", "extra"]
    assert out.nsfw is None
    with pytest.raises(KeyError):
        out["nsfw"]


def test_setting_fields_updates_both_views():
    out = _Out(images=torch.zeros(1), extra=1)
    out.extra = 5
    assert out["extra"] == 5 and out[1] == 5
    out["nsfw"] = [False]
    assert out.nsfw == [False] and out["nsfw"] == [False]


def test_read_only_mapping_methods_refuse():
    out = _Out(images=torch.zeros(1))
    with pytest.raises(TypeError, match="read-only"):
        out.pop("images")
    with pytest.raises(TypeError, match="read-only"):
        del out["images"]
    with pytest.raises(TypeError, match="read-only"):
        out.update(images=1)


def test_pickle_round_trip_and_tuple_unpacking():
    out = _Out(images=torch.arange(3), nsfw=[True])
    back = pickle.loads(pickle.dumps(out))
    assert torch.equal(back.images, out.images) and back.nsfw == [True]
    images, nsfw = out.to_tuple()
    assert nsfw == [True]
