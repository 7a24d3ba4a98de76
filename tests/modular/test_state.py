"""PipelineState / BlockState: layers, shadowing, repr as in the seed, newer single-dict API."""
import copy
import pickle

import pytest
import torch

from diffblocks.modular_pipelines import BlockState, PipelineState

SEED_REPR = """
PipelineState(
inputs={
'prompt': 'a cat'
'guidance_scale': 7.0
'num_inference_steps': 25
},
intermediates={
'prompt_embeds': Tensor(dtype=torch.float32, shape=torch.Size([1, 1, 1, 1]))
'negative_prompt_embeds': None
},
)
"""


def _seed_state():
    state = PipelineState()
    state.set_input("prompt", "a cat")
    state.set_input("guidance_scale", 7.0)
    state.set_input("num_inference_steps", 25)
    state.set_intermediate("prompt_embeds", torch.zeros(1, 1, 1, 1))
    state.set_intermediate("negative_prompt_embeds", None)
    return state


def test_repr_matches_seed_document():
    text = repr(_seed_state())
    # the seed page lost its indentation; compare line by line without leading/trailing spaces
    assert [line.strip() for line in text.splitlines()] == SEED_REPR.strip().splitlines()
    assert text.splitlines()[1] == "  inputs={"
    assert text.splitlines()[2] == "    'prompt': 'a cat'"


def test_inputs_are_read_only_and_intermediates_shadow():
    state = _seed_state()
    with pytest.raises(TypeError):
        state.inputs["prompt"] = "a dog"
    state.set_intermediate("prompt", "a dog")
    assert state.get("prompt") == "a dog"
    assert state.inputs["prompt"] == "a cat"
    assert state.get_input("prompt") == "a cat"
    assert state.get_intermediate("prompt") == "a dog"
    # a new user input replaces a stale intermediate of the same name
    state.set_input("prompt", "a bird")
    assert state.get("prompt") == "a bird"
    assert "prompt" not in state.intermediates


def test_new_single_dict_api():
    state = PipelineState()
    state.set("a", 1, kwargs_type="group")
    state.set("b", 2)
    state.set_input("c", 3, kwargs_type="group")
    assert state.get("a") == 1
    assert state.get(["a", "b", "zz"], default=0) == {"a": 1, "b": 2, "zz": 0}
    assert state.get_by_kwargs("group") == {"a": 1, "c": 3}
    assert state.get_by_kwargs("unknown") == {}
    assert dict(state.values) == {"a": 1, "b": 2, "c": 3}
    assert state.kwargs_mapping == {"group": ["a", "c"]}
    assert state.a == 1 and state.c == 3
    with pytest.raises(AttributeError, match="no value named 'nope'"):
        state.nope
    # writing through `values` writes an intermediate, never an input
    state.values["c"] = 30
    assert state.inputs["c"] == 3 and state.get("c") == 30
    assert state.get_inputs_kwargs("group") == {"c": 3}
    assert state.get_intermediate_kwargs("group") == {"a": 1, "c": 30}
    assert state.to_dict()["values"] == {"a": 1, "b": 2, "c": 30}


def test_state_copy_and_pickle():
    state = _seed_state()
    state.set_intermediate("latents", torch.arange(6.0).reshape(2, 3))
    clone = copy.deepcopy(state)
    assert clone == state and clone is not state
    clone.intermediates["latents"][0, 0] = 100.0
    assert clone != state
    clone.set_intermediate("x", 1)
    assert "x" not in state
    restored = pickle.loads(pickle.dumps(state))
    assert restored.get("prompt") == "a cat"
    assert restored.get("prompt_embeds").shape == (1, 1, 1, 1)


def test_block_state_attributes_and_repr():
    bs = BlockState(image="img", latents=torch.ones(2, 3), embeds=[torch.ones(1), torch.ones(2)],
                    kw={"a": torch.zeros(4)})
    assert bs.image == "img" and bs["image"] == "img" and bs["missing"] is None
    bs["extra"] = 5
    assert bs.extra == 5 and "extra" in bs
    assert set(bs.as_dict()) == {"image", "latents", "embeds", "kw", "extra"}
    text = repr(bs)
    assert text.startswith("BlockState(\n")
    assert "    image: 'img'\n" in text
    assert "    latents: Tensor(dtype=torch.float32, shape=torch.Size([2, 3]))" in text
    assert "    embeds: list[2] of Tensors with shapes [(1,), (2,)]" in text
    assert "'a': Tensor(dtype=torch.float32, shape=torch.Size([4]))" in text
    assert BlockState(a=1) == BlockState(a=1)
    assert BlockState(a=1) != BlockState(a=2)  # unlike upstream, different states differ
    assert BlockState(t=torch.ones(3)) == BlockState(t=torch.ones(3))
    assert BlockState(t=torch.ones(3)) != BlockState(t=torch.zeros(3))
