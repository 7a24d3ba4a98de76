"""The CLIP text-encoder fast loader returns the same transformers object as ``from_pretrained``."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffblocks.models.clip import load_clip_text_model, supports_fast_load
from tests.fixtures.tiny import tiny_clip_text_config

transformers = pytest.importorskip("transformers")
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

IDS = torch.tensor([[0, 5, 17, 250, 999, 2, 1, 1]])


def _write(folder, cls, seed=0, dtype=torch.float32, variant=None):
    torch.manual_seed(seed)
    model = cls(CLIPTextConfig(**tiny_clip_text_config(projection=cls is CLIPTextModelWithProjection))).to(dtype)
    model.save_pretrained(str(folder), variant=variant)
    return str(folder)


def _assert_same(ref, mine):
    assert type(mine) is type(ref)
    assert mine.config.to_dict() == ref.config.to_dict()
    assert mine.config._attn_implementation == ref.config._attn_implementation
    assert mine.training is False and ref.training is False
    assert mine.dtype == ref.dtype
    ref_sd, my_sd = ref.state_dict(), mine.state_dict()
    assert list(my_sd) == list(ref_sd)
    for key in ref_sd:
        assert torch.equal(my_sd[key], ref_sd[key]) and my_sd[key].dtype == ref_sd[key].dtype, key
    for (name, a), (_, b) in zip(ref.named_buffers(), mine.named_buffers()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in mine.parameters())
    assert all(getattr(m, "_is_hf_initialized", False) for m in mine.modules())
    with torch.no_grad():
        out_ref, out_mine = ref(IDS), mine(IDS)
    assert torch.equal(out_mine.last_hidden_state, out_ref.last_hidden_state)
    assert out_mine.last_hidden_state.shape == (1, IDS.shape[1], 32)


@pytest.mark.parametrize("cls", [CLIPTextModel, CLIPTextModelWithProjection])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_same_model_as_from_pretrained(tmp_path, cls, dtype):
    path = _write(tmp_path / "te", cls)
    mine = load_clip_text_model(cls, path, dtype=dtype)
    assert mine is not None
    _assert_same(cls.from_pretrained(path, dtype=dtype), mine)


def test_half_checkpoint_upcast_and_variant(tmp_path):
    path = _write(tmp_path / "te", CLIPTextModel, dtype=torch.float16, variant="fp16")
    assert load_clip_text_model(CLIPTextModel, path, dtype=torch.float32) is None  # no plain file: not our case
    mine = load_clip_text_model(CLIPTextModel, path, dtype=torch.float32, variant="fp16")
    assert mine is not None and mine.dtype == torch.float32
    _assert_same(CLIPTextModel.from_pretrained(path, dtype=torch.float32, variant="fp16"), mine)


def test_old_text_model_prefix_and_persisted_position_ids(tmp_path):
    path = _write(tmp_path / "te", CLIPTextModel)
    weights = os.path.join(path, "model.safetensors")
    state = load_file(weights)
    old = {"text_model." + k: v for k, v in state.items()}
    old["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    save_file(old, weights, metadata={"format": "pt"})
    mine = load_clip_text_model(CLIPTextModel, path, dtype=torch.float32)
    assert mine is not None
    _assert_same(CLIPTextModel.from_pretrained(path, dtype=torch.float32), mine)


def test_unhandled_folders_fall_back(tmp_path):
    path = _write(tmp_path / "te", CLIPTextModel)
    assert load_clip_text_model(CLIPTextModel, path, dtype=torch.float32, device_map="cpu") is None
    assert load_clip_text_model(CLIPTextModel, path, dtype=torch.float32, use_safetensors=False) is None
    assert load_clip_text_model(CLIPTextModel, str(tmp_path / "missing"), dtype=torch.float32) is None
    assert not supports_fast_load(torch.nn.Linear) and supports_fast_load(CLIPTextModel)
    # an unknown key: transformers decides what to do with it
    weights = os.path.join(path, "model.safetensors")
    state = load_file(weights)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, weights, metadata={"format": "pt"})
    assert load_clip_text_model(CLIPTextModel, path, dtype=torch.float32) is None
    # a missing key too
    state.pop("extra.weight")
    state.pop("final_layer_norm.bias")
    save_file(state, weights, metadata={"format": "pt"})
    assert load_clip_text_model(CLIPTextModel, path, dtype=torch.float32) is None
    # a quantised config
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as handle:
        cfg = json.load(handle)
    cfg["quantization_config"] = {"quant_method": "bitsandbytes"}
    with open(cfg_path, "w") as handle:
        json.dump(cfg, handle)
    assert load_clip_text_model(CLIPTextModel, path, dtype=torch.float32) is None


def _assert_same_weights(ref, mine):
    """diffblocks' CLIP class (what folders load as since issue 11) holds transformers' weights and outputs."""
    from diffblocks.models.clip_text import CLIPTextModel as OwnCLIPTextModel

    assert type(mine) is OwnCLIPTextModel and mine.training is False and mine.dtype == ref.dtype
    ref_sd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in ref.state_dict().items()}
    assert set(mine.state_dict()) == set(ref_sd)
    for key, value in mine.state_dict().items():
        assert torch.equal(value, ref_sd[key]), key
    with torch.no_grad():
        assert torch.equal(mine(IDS).last_hidden_state, ref(IDS).last_hidden_state)


def test_pipeline_loads_text_encoder_without_transformers_loader(tmp_path, monkeypatch):
    from diffblocks import StableDiffusionPipeline
    from tests.fixtures.tiny import build_tiny_sd_folder

    folder = build_tiny_sd_folder(str(tmp_path / "sd"))

    def refuse(*args, **kwargs):
        raise AssertionError("transformers' from_pretrained should not run for the CLIP text encoder")

    monkeypatch.setattr(CLIPTextModel, "from_pretrained", classmethod(refuse))
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    monkeypatch.undo()
    _assert_same_weights(CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), dtype=torch.float32),
                         pipe.text_encoder)


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_auto_model_loads_text_encoder_without_transformers_loader(tmp_path, monkeypatch, dtype):
    from diffblocks import AutoModel

    root = tmp_path / "repo"
    _write(root / "text_encoder", CLIPTextModel, seed=3)
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    ref = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", **({} if dtype is None else {"dtype": dtype}))
    original = CLIPTextModel.from_pretrained

    def refuse(*args, **kw):
        raise AssertionError("transformers' from_pretrained should not run")

    monkeypatch.setattr(CLIPTextModel, "from_pretrained", classmethod(refuse))
    mine = AutoModel.from_pretrained(str(root), subfolder="text_encoder", **kwargs)
    monkeypatch.setattr(CLIPTextModel, "from_pretrained", original)
    _assert_same_weights(ref, mine)
    assert mine.config._name_or_path == str(root)


def test_keep_checkpoint_dtype_needs_a_recorded_matching_dtype(tmp_path):
    path = _write(tmp_path / "te", CLIPTextModel, dtype=torch.float16)
    mine = load_clip_text_model(CLIPTextModel, path, dtype=None)
    assert mine is not None and mine.dtype == torch.float16
    _assert_same(CLIPTextModel.from_pretrained(path), mine)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as handle:
        cfg = json.load(handle)
    cfg.pop("dtype", None)
    cfg.pop("torch_dtype", None)
    with open(cfg_path, "w") as handle:
        json.dump(cfg, handle)
    assert load_clip_text_model(CLIPTextModel, path, dtype=None) is None


def test_saving_back_into_the_loaded_folder_keeps_the_weights(tmp_path):
    path = _write(tmp_path / "te", CLIPTextModel, seed=5)
    mine = load_clip_text_model(CLIPTextModel, path, dtype=torch.float32)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    mine.save_pretrained(path)  # rewrites model.safetensors in place
    for key, value in mine.state_dict().items():
        assert torch.equal(value, before[key]), key
    again = load_clip_text_model(CLIPTextModel, path, dtype=torch.float32)
    _assert_same(mine, again)
