import json
import os

import pytest
import torch

import diffblocks.models
from diffblocks.models import AutoModel
from diffblocks.models.auto_model import make_load_id
from tests.fixtures.tiny import _build_clip, fill_hf_cache, save_component, write_json

from ._models import TinyNet, assert_same_state, make_tiny


@pytest.fixture(scope="module")
def te_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto") / "pipe"
    save_component(_build_clip(2, projection=False), str(root / "text_encoder"), variant="fp16")
    save_component(_build_clip(3, projection=True), str(root / "text_encoder_2"))
    write_json(str(root / "model_index.json"), {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "unet": ["diffusers", "TinyNet"], "safety_checker": [None, None],
    })
    make_tiny().save_pretrained(root / "unet")
    return str(root)


@pytest.fixture
def tinynet_registered(monkeypatch):
    monkeypatch.setattr(diffblocks.models, "TinyNet", TinyNet, raising=False)


def test_transformers_text_encoder_under_subfolder(te_folder):
    # folders naming transformers' CLIP text encoders load diffblocks' own classes (same weights, same outputs)
    from diffblocks.models.clip_text import CLIPTextModel, CLIPTextModelWithProjection

    te = AutoModel.from_pretrained(te_folder, subfolder="text_encoder")
    assert type(te) is CLIPTextModel
    ref = _build_clip(2, projection=False)
    assert_same_state(ref, te)
    assert te._diffblocks_load_id == f"{te_folder}|text_encoder|null|null"
    te2 = AutoModel.from_pretrained(te_folder, subfolder="text_encoder_2")
    assert type(te2) is CLIPTextModelWithProjection
    ids = torch.tensor([[638, 320, 639]])
    with torch.no_grad():
        assert torch.equal(te(ids).last_hidden_state, ref(ids).last_hidden_state)


def test_transformers_dtype_and_variant(te_folder):
    te = AutoModel.from_pretrained(te_folder, subfolder="text_encoder", variant="fp16", torch_dtype=torch.float16)
    assert te.dtype == torch.float16
    assert_same_state(_build_clip(2, projection=False).half(), te)
    assert te._diffblocks_load_id.endswith("|text_encoder|fp16|null")


def test_transformers_without_index_uses_architectures(te_folder, tmp_path):
    import shutil

    shutil.copytree(os.path.join(te_folder, "text_encoder"), tmp_path / "te")
    te = AutoModel.from_pretrained(str(tmp_path / "te"))
    assert type(te).__name__ == "CLIPTextModel"


def test_diffblocks_class_from_model_index_and_config(te_folder, tinynet_registered, tmp_path):
    model = AutoModel.from_pretrained(te_folder, subfolder="unet")
    assert type(model) is TinyNet
    assert_same_state(make_tiny(), model)
    # without model_index.json: _class_name of config.json
    make_tiny(seed=3).save_pretrained(tmp_path / "alone")
    alone = AutoModel.from_pretrained(str(tmp_path / "alone"))
    assert_same_state(make_tiny(seed=3), alone)
    assert alone._diffblocks_load_id == make_load_id(str(tmp_path / "alone"), None, None, None)


def test_unknown_class_is_named(tmp_path):
    make_tiny().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"names the class 'TinyNet' \(library 'diffusers'\), which diffblocks does "
                                         r"not provide"):
        AutoModel.from_pretrained(str(tmp_path / "m"))
    cfg = tmp_path / "t" / "config.json"
    os.makedirs(cfg.parent)
    cfg.write_text(json.dumps({"architectures": ["NoSuchTransformersModel"], "model_type": "clip"}))
    with pytest.raises(ValueError, match="names the transformers class 'NoSuchTransformersModel'"):
        AutoModel.from_pretrained(str(tmp_path / "t"))


def test_config_without_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="Couldn't find model associated with the config file at"):
        AutoModel.from_pretrained(str(tmp_path))


def test_autmodel_cannot_be_instantiated():
    with pytest.raises(EnvironmentError, match=r"AutoModel is designed to be instantiated using the "
                                               r"`AutoModel.from_pretrained\(pretrained_model_name_or_path\)`"):
        AutoModel()


def test_from_config_builds_random_model(te_folder, tinynet_registered):
    m = AutoModel.from_config({**make_tiny(dim=4).config, "_class_name": "TinyNet"})
    assert type(m) is TinyNet and m.config.dim == 4
    te = AutoModel.from_config(te_folder, subfolder="text_encoder")
    assert type(te).__name__ == "CLIPTextModel" and te.config.hidden_size == 32


def test_repo_id_offline_transformers_and_diffblocks(te_folder, tinynet_registered, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = str(tmp_path / "cache")
    fill_hf_cache(cache, "org/pipe", te_folder)
    te = AutoModel.from_pretrained("org/pipe", subfolder="text_encoder", cache_dir=cache)
    assert_same_state(_build_clip(2, projection=False), te)
    assert te._diffblocks_load_id == "org/pipe|text_encoder|null|null"
    unet = AutoModel.from_pretrained("org/pipe", subfolder="unet", cache_dir=cache)
    assert_same_state(make_tiny(), unet)


def test_repo_id_online_cached_is_one_metadata_call(te_folder, tinynet_registered, tmp_path, monkeypatch):
    import types

    import huggingface_hub
    from huggingface_hub import constants

    from diffblocks import hub

    cache = str(tmp_path / "cache")
    snapshot = fill_hf_cache(cache, "org/pipe", te_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def model_info(self, repo_id, revision=None, token=None, **kw):
        calls.append(repo_id)
        return types.SimpleNamespace(sha=os.path.basename(snapshot), siblings=[
            types.SimpleNamespace(rfilename=f) for f in hub.list_folder_files(snapshot)])

    def refuse(*a, **k):
        raise AssertionError("no download or per-file request expected when everything is cached")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    te = AutoModel.from_pretrained("org/pipe", subfolder="text_encoder", cache_dir=cache)
    assert calls == ["org/pipe"] and te.name_or_path == "org/pipe"
    assert_same_state(_build_clip(2, projection=False), te)
    unet = AutoModel.from_pretrained("org/pipe", subfolder="unet", cache_dir=cache)
    assert calls == ["org/pipe", "org/pipe"] and unet.config._name_or_path == "org/pipe"
    assert unet._diffblocks_load_id == "org/pipe|unet|null|null"


def test_repo_id_offline_errors_come_from_the_local_folder(te_folder, tinynet_registered, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache = str(tmp_path / "cache")
    fill_hf_cache(cache, "org/pipe", te_folder)
    with pytest.raises(ValueError, match=r"`variant=bf16`, but no such modeling files are available"):
        AutoModel.from_pretrained("org/pipe", subfolder="unet", cache_dir=cache, variant="bf16")
