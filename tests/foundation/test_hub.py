import os
import shutil
import types

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from diffblocks import hub
from tests.fixtures.tiny import fill_hf_cache

from ._models import TinyNet, assert_same_state, make_tiny

REPO = "tiny-org/tiny-net"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*a, **k):
        raise AssertionError("network used in offline mode")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)


@pytest.fixture
def online(monkeypatch):
    """Pretend to be online: model_info answers from a fake listing, snapshot_download is recorded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    state = types.SimpleNamespace(info_calls=0, downloads=[], sha=None, files=[])

    def model_info(self, repo_id, revision=None, token=None, **kw):
        state.info_calls += 1
        return types.SimpleNamespace(sha=state.sha,
                                     siblings=[types.SimpleNamespace(rfilename=f) for f in state.files])

    def snapshot_download(repo_id, **kw):
        state.downloads.append(kw)
        return "downloaded"

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state


def _repo(tmp_path):
    src = tmp_path / "src"
    model = make_tiny()
    model.save_pretrained(src / "unet")
    model.half().save_pretrained(src / "unet", variant="fp16")
    model.save_pretrained(src / "unet", safe_serialization=False)
    (src / "README.md").write_text("readme")
    (src / "big_array.npy").write_bytes(b"0" * 10)
    cache = tmp_path / "cache"
    snapshot = fill_hf_cache(str(cache), REPO, str(src))
    return make_tiny(), str(cache), snapshot


def test_fill_hf_cache_layout(tmp_path):
    _, cache, snapshot = _repo(tmp_path)
    repo_folder = os.path.join(cache, "models--tiny-org--tiny-net")
    sha = open(os.path.join(repo_folder, "refs", "main")).read()
    assert len(sha) == 40 and snapshot == os.path.join(repo_folder, "snapshots", sha)
    assert os.path.islink(os.path.join(snapshot, "unet", "config.json"))
    assert huggingface_hub.try_to_load_from_cache(REPO, "unet/config.json", cache_dir=cache) == \
        os.path.join(snapshot, "unet", "config.json")


def test_repo_id_loading_offline_from_cache(tmp_path, offline):
    model, cache, _ = _repo(tmp_path)
    loaded = TinyNet.from_pretrained(REPO, subfolder="unet", cache_dir=cache)
    assert_same_state(model, loaded)
    assert loaded.config._name_or_path == REPO
    half = TinyNet.from_pretrained(REPO, subfolder="unet", cache_dir=cache, variant="fp16", torch_dtype=torch.float16)
    assert_same_state(model.half(), half)


def test_hf_hub_offline_env_read_at_call_time(tmp_path, monkeypatch):
    model, cache, _ = _repo(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if huggingface_hub was imported while online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("network used")))
    assert hub.is_offline()
    assert_same_state(model, TinyNet.from_pretrained(REPO, subfolder="unet", cache_dir=cache))


def test_offline_not_cached_errors(tmp_path, offline):
    with pytest.raises(EnvironmentError, match="Cannot load model tiny-org/absent: the model is not cached locally"):
        TinyNet.from_pretrained("tiny-org/absent", subfolder="unet", cache_dir=str(tmp_path))


def test_offline_incomplete_snapshot_errors(tmp_path, offline):
    _, cache, snapshot = _repo(tmp_path)
    os.remove(os.path.join(snapshot, "unet", "diffusion_pytorch_model.fp16.safetensors"))
    # the file list comes from the snapshot, so a removed variant is simply absent -> variant error
    with pytest.raises(ValueError, match="no such modeling files are available"):
        TinyNet.from_pretrained(REPO, subfolder="unet", cache_dir=cache, variant="fp16")


def test_online_fully_cached_is_one_metadata_call(tmp_path, online):
    model, cache, snapshot = _repo(tmp_path)
    online.sha = os.path.basename(snapshot)
    online.files = hub.list_folder_files(snapshot)
    loaded = TinyNet.from_pretrained(REPO, subfolder="unet", cache_dir=cache)
    assert_same_state(model, loaded)
    assert online.info_calls == 1 and online.downloads == []


def test_online_missing_files_downloads_only_allow_list(tmp_path, online):
    _, cache, snapshot = _repo(tmp_path)
    online.sha = os.path.basename(snapshot)
    online.files = hub.list_folder_files(snapshot) + ["unet/diffusion_pytorch_model.non_ema.safetensors"]
    root = hub.resolve_model_folder(REPO, subfolder="unet", variant="non_ema", cache_dir=cache)
    assert root == os.path.join("downloaded", "unet")
    assert online.info_calls == 1 and len(online.downloads) == 1
    call = online.downloads[0]
    assert call["allow_patterns"] == ["unet/config.json", "unet/diffusion_pytorch_model.non_ema.safetensors"]
    assert call["revision"] == online.sha


def test_online_repo_not_found_message(tmp_path, monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def raise_nf(self, repo_id, **kw):
        raise RepositoryNotFoundError("nope", response=types.SimpleNamespace(headers={}, status_code=404, request=None))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", raise_nf)
    with pytest.raises(EnvironmentError, match="tiny-org/nothing is not a local folder and is not a valid model "
                                               "identifier listed on 'https://huggingface.co/models'"):
        hub.resolve_folder("tiny-org/nothing", allow_patterns=["*"], cache_dir=str(tmp_path))


def test_invalid_repo_id():
    with pytest.raises(ValueError, match='The provided pretrained_model_name_or_path "a/b/c" is neither a valid local '
                                         'path nor a valid repo id'):
        TinyNet.from_pretrained("a/b/c")


def test_deprecated_revision_warns(tmp_path, offline):
    _, cache, snapshot = _repo(tmp_path)
    shutil.copy(os.path.join(cache, "models--tiny-org--tiny-net", "refs", "main"),
                os.path.join(cache, "models--tiny-org--tiny-net", "refs", "fp16"))
    with pytest.warns(FutureWarning, match="variant='fp16'"):
        hub.resolve_folder(REPO, revision="fp16", allow_patterns=["unet/*"], cache_dir=cache)


def test_resolve_file_local_and_cache(tmp_path, offline):
    _, cache, snapshot = _repo(tmp_path)
    assert hub.resolve_file(REPO, "config.json", subfolder="unet", cache_dir=cache) == \
        os.path.join(snapshot, "unet", "config.json")
    local = os.path.join(snapshot, "unet")
    assert hub.resolve_file(local, "config.json") == os.path.join(local, "config.json")
    with pytest.raises(EnvironmentError, match="Error no file named model_index.json found in directory"):
        hub.resolve_file(local, "model_index.json")


FILES = [
    "model_index.json", "README.md", "big_array.npy",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.bin",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "big/config.json", "big/diffusion_pytorch_model.safetensors.index.json",
    "big/diffusion_pytorch_model-00001-of-00002.safetensors", "big/diffusion_pytorch_model-00002-of-00002.safetensors",
    "big/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
    "big/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
    "big/diffusion_pytorch_model.safetensors.index.fp16.json",
]


@pytest.mark.parametrize("kw,expected", [
    (dict(subfolder="unet"), ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]),
    (dict(subfolder="unet", variant="fp16"), ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]),
    (dict(subfolder="unet", use_safetensors=False), ["unet/config.json", "unet/diffusion_pytorch_model.bin"]),
    (dict(subfolder="unet", variant="non_ema"), ["unet/config.json", "unet/diffusion_pytorch_model.non_ema.bin"]),
    (dict(subfolder="vae"), ["vae/config.json", "vae/diffusion_pytorch_model.bin"]),
    (dict(subfolder="big"), ["big/config.json", "big/diffusion_pytorch_model.safetensors.index.json",
                             "big/diffusion_pytorch_model-00001-of-00002.safetensors",
                             "big/diffusion_pytorch_model-00002-of-00002.safetensors"]),
    (dict(subfolder="big", variant="fp16"), ["big/config.json", "big/diffusion_pytorch_model.safetensors.index.fp16.json",
                                             "big/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                                             "big/diffusion_pytorch_model.fp16-00002-of-00002.safetensors"]),
])
def test_model_allow_patterns(kw, expected):
    assert hub.model_allow_patterns(FILES, **kw) == expected


def test_model_allow_patterns_errors():
    with pytest.raises(EnvironmentError, match=r"Could not find the necessary `safetensors` weights in .* "
                                               r"\(variant=None\)"):
        hub.model_allow_patterns(FILES, subfolder="vae", use_safetensors=True)
    with pytest.raises(ValueError, match=r"`variant=bf16`, but no such modeling files are available"):
        hub.model_allow_patterns(FILES, subfolder="unet", variant="bf16")
    with pytest.raises(EnvironmentError, match="Error no file named"):
        hub.model_allow_patterns(FILES, subfolder="text_encoder")


def test_variant_compatible_siblings(caplog):
    usable, variant_files = hub.variant_compatible_siblings(FILES, variant="fp16", ignore_patterns=["*.bin"])
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in usable
    assert "unet/diffusion_pytorch_model.safetensors" not in usable
    assert "text_encoder/model.fp16.safetensors" in usable and "text_encoder/model.safetensors" not in usable
    assert "big/diffusion_pytorch_model.safetensors.index.fp16.json" in usable
    assert not any(f.endswith(".bin") for f in usable)
    assert variant_files <= usable
    with pytest.raises(ValueError, match="You are trying to load model files of the `variant=bf16`, but no such "
                                         "modeling files are available."):
        hub.variant_compatible_siblings(FILES, variant="bf16")
    with caplog.at_level("WARNING"):
        usable, _ = hub.variant_compatible_siblings(FILES, variant="non_ema")
    assert "A mixture of non_ema and non-non_ema filenames will be loaded." in caplog.text
    assert "unet/diffusion_pytorch_model.non_ema.bin" in usable and "vae/diffusion_pytorch_model.bin" in usable


def test_resolve_file_offline_not_cached(tmp_path, offline):
    with pytest.raises(EnvironmentError, match="We couldn't connect to 'https://huggingface.co' to load the file "
                                               "unet/config.json"):
        hub.resolve_file("tiny-org/absent", "config.json", subfolder="unet", cache_dir=str(tmp_path))


def test_unreachable_hub_falls_back_to_cache(tmp_path, monkeypatch):
    model, cache, _ = _repo(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(self, *a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.warns(UserWarning, match="Couldn't connect to the Hub: no route to host"):
        loaded = TinyNet.from_pretrained(REPO, subfolder="unet", cache_dir=cache)
    assert_same_state(model, loaded)
