import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffblocks.models import weights as W


def test_variant_and_shard_names():
    assert W.add_variant("diffusion_pytorch_model.safetensors", "fp16") == "diffusion_pytorch_model.fp16.safetensors"
    assert W.add_variant("diffusion_pytorch_model.safetensors", None) == "diffusion_pytorch_model.safetensors"
    assert W.index_file_name(W.SAFETENSORS_WEIGHTS_NAME, "fp16") == "diffusion_pytorch_model.safetensors.index.fp16.json"
    assert W.shard_file_name(W.SAFETENSORS_WEIGHTS_NAME, 1, 2, "fp16") == \
        "diffusion_pytorch_model.fp16-00001-of-00002.safetensors"
    assert W.shard_file_name(W.WEIGHTS_NAME, 3, 12) == "diffusion_pytorch_model-00003-of-00012.bin"


@pytest.mark.parametrize("name,variant,expected", [
    ("diffusion_pytorch_model.fp16.safetensors", "fp16", True),
    ("diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "fp16", True),
    ("unet/model.non_ema.bin", "non_ema", True),
    ("diffusion_pytorch_model.safetensors", "fp16", False),
    ("diffusion_pytorch_model-00001-of-00002.fp16.safetensors", "fp16", False),
])
def test_variant_file_regex(name, variant, expected):
    assert W.is_variant_weight_file(name, variant) is expected


def test_other_regexes():
    assert W.is_non_variant_weight_file("diffusion_pytorch_model-00001-of-00002.safetensors")
    assert not W.is_non_variant_weight_file("diffusion_pytorch_model.fp16.safetensors")
    assert W.is_legacy_variant_weight_file("diffusion_pytorch_model-00001-of-00002.fp16.safetensors", "fp16")
    assert W.is_variant_index_file("diffusion_pytorch_model.safetensors.index.fp16.json", "fp16")
    assert W.is_legacy_variant_index_file("diffusion_pytorch_model.safetensors.fp16.index.json", "fp16")
    assert W.is_non_variant_index_file("model.safetensors.index.json")


@pytest.mark.parametrize("text,expected", [
    ("10GB", 10 * 10**9), ("500MB", 500 * 10**6), ("1KB", 1000), ("2GiB", 2 * 2**30), (123, 123), ("1.5MB", 1_500_000),
])
def test_parse_size(text, expected):
    assert W.parse_size(text) == expected


@pytest.mark.parametrize("bad,exc", [("ten GB", ValueError), (0, ValueError), (-5, ValueError), (1.5, TypeError),
                                     (True, TypeError)])
def test_parse_size_errors(bad, exc):
    with pytest.raises(exc, match="max_shard_size"):
        W.parse_size(bad)


def _sd():
    torch.manual_seed(0)
    return {"a.weight": torch.randn(4, 4), "b.bias": torch.randn(4).half(), "c.idx": torch.arange(3),
            "d.bf": torch.randn(2, 3).bfloat16()}


def test_safetensors_mmap_views_share_one_mapping(tmp_path):
    path = str(tmp_path / "w.safetensors")
    save_file(_sd(), path, metadata={"format": "pt"})
    loaded = W.load_safetensors(path)
    for k, v in _sd().items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    ptrs = {loaded[k].untyped_storage().data_ptr() for k in loaded}
    assert len(ptrs) == 1  # every tensor is a view of the same memory map: no copies were made
    # writes stay private (copy on write), the file is unchanged
    loaded["a.weight"].zero_()
    with safe_open(path, "pt") as f:
        assert torch.equal(f.get_tensor("a.weight"), _sd()["a.weight"])


def test_safetensors_dtype_cast_only_floats(tmp_path):
    path = str(tmp_path / "w.safetensors")
    save_file(_sd(), path)
    loaded = W.load_safetensors(path, dtype=torch.float16)
    assert loaded["a.weight"].dtype == torch.float16
    assert loaded["d.bf"].dtype == torch.float16
    assert loaded["c.idx"].dtype == torch.int64


def test_save_state_dict_shards_and_index(tmp_path):
    sd = {f"layer{i}.weight": torch.full((10, 10), float(i)) for i in range(5)}  # 400 bytes each
    written = W.save_state_dict(sd, str(tmp_path), max_shard_size=900, variant="fp16")
    assert written == [
        "diffusion_pytorch_model.fp16-00001-of-00003.safetensors",
        "diffusion_pytorch_model.fp16-00002-of-00003.safetensors",
        "diffusion_pytorch_model.fp16-00003-of-00003.safetensors",
        "diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    index = json.loads((tmp_path / written[-1]).read_text())
    assert index["metadata"]["total_size"] == 2000
    assert index["weight_map"]["layer4.weight"] == written[2]
    with safe_open(str(tmp_path / written[0]), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    found = W.find_weight_files(str(tmp_path), variant="fp16")
    assert found.sharded and [os.path.basename(f) for f in found.files] == written[:3]
    back = W.load_weight_files(found.files)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # re-saving unsharded removes the stale shards and index of the same variant
    W.save_state_dict(sd, str(tmp_path), variant="fp16")
    assert sorted(os.listdir(tmp_path)) == ["diffusion_pytorch_model.fp16.safetensors"]


def test_shared_tensors_are_saved(tmp_path):
    w = torch.randn(3, 3)
    W.save_state_dict({"a": w, "b": w, "c": w[0]}, str(tmp_path))
    back = W.load_safetensors(str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    assert torch.equal(back["b"], w) and torch.equal(back["c"], w[0])


def test_bin_roundtrip_weights_only(tmp_path):
    sd = _sd()
    W.save_state_dict(sd, str(tmp_path), safe_serialization=False)
    assert os.listdir(tmp_path) == ["diffusion_pytorch_model.bin"]
    back = W.load_state_dict(str(tmp_path / "diffusion_pytorch_model.bin"))
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_bin_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"w": torch.ones(1), "obj": _Evil()}, str(path))
    with pytest.raises(Exception):
        W.load_state_dict(str(path))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_index_with_path_separator_is_refused(tmp_path):
    save_file({"a": torch.ones(1)}, str(tmp_path / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    (tmp_path / W.SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "../diffusion_pytorch_model-00001-of-00001.safetensors"}}))
    with pytest.raises(ValueError, match="without path separators"):
        W.find_weight_files(str(tmp_path))


def test_find_weight_files_errors(tmp_path):
    save_file({"a": torch.ones(1)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"`variant=fp16`, but no such modeling files are available"):
        W.find_weight_files(str(tmp_path), variant="fp16")
    with pytest.raises(EnvironmentError, match="Error no file named diffusion_pytorch_model.bin found in directory"):
        W.find_weight_files(str(tmp_path), use_safetensors=False)
    os.remove(tmp_path / "diffusion_pytorch_model.safetensors")
    torch.save({"a": torch.ones(1)}, str(tmp_path / "diffusion_pytorch_model.bin"))
    with pytest.raises(EnvironmentError,
                       match="Error no file named diffusion_pytorch_model.safetensors found in directory"):
        W.find_weight_files(str(tmp_path), use_safetensors=True)
    assert W.find_weight_files(str(tmp_path)).files[0].endswith(".bin")
    with pytest.raises(TypeError, match="use_safetensors"):
        W.find_weight_files(str(tmp_path), use_safetensors="yes")


def test_legacy_variant_shards_warn_and_load(tmp_path, caplog):
    a, b = {"a": torch.ones(2)}, {"b": torch.zeros(2)}
    save_file(a, str(tmp_path / "diffusion_pytorch_model-00001-of-00002.fp16.safetensors"))
    save_file(b, str(tmp_path / "diffusion_pytorch_model-00002-of-00002.fp16.safetensors"))
    (tmp_path / "diffusion_pytorch_model.safetensors.fp16.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "a": "diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
        "b": "diffusion_pytorch_model-00002-of-00002.fp16.safetensors"}}))
    with caplog.at_level("WARNING"):
        found = W.find_weight_files(str(tmp_path), variant="fp16")
    assert "Warning: The repository contains sharded checkpoints for variant 'fp16' maybe in a deprecated format." \
        in caplog.text
    sd = W.load_weight_files(found.files)
    assert torch.equal(sd["a"], torch.ones(2)) and torch.equal(sd["b"], torch.zeros(2))


def test_truncated_or_corrupt_safetensors_give_clear_errors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-16])  # truncated data
    with pytest.raises(EnvironmentError, match=r"entry for 'a' .* does not fit the file"):
        W.load_safetensors(str(path))
    path.write_bytes(data[:4])
    with pytest.raises(EnvironmentError, match="file is too short"):
        W.load_safetensors(str(path))
    path.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(EnvironmentError, match="corrupt header"):
        W.load_safetensors(str(path))
