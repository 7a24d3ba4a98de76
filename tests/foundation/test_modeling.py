import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffblocks.models import weights as W
from diffblocks.models.modeling_utils import ModelMixin

from ._models import TinyNet, assert_same_state, make_tiny


def test_save_layout_and_config(tmp_path):
    model = make_tiny()
    model.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["_class_name"] == "TinyNet" and cfg["dim"] == 8 and cfg["depth"] == 3
    assert "freqs" not in load_file(str(tmp_path / "m" / "diffusion_pytorch_model.safetensors"))
    assert os.listdir(tmp_path) == ["m"]  # no temporary folder left behind


@pytest.mark.parametrize("variant,dtype,shard,safe", [
    (None, None, None, True),
    ("fp16", torch.float16, None, True),
    (None, None, 300, True),
    ("fp16", torch.float16, 300, True),
    (None, None, None, False),
    ("non_ema", None, 300, False),
])
def test_roundtrip_bit_exact(tmp_path, variant, dtype, shard, safe):
    model = make_tiny()
    if dtype is not None:
        model = model.to(dtype)
    kw = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(tmp_path, variant=variant, safe_serialization=safe, **kw)
    files = os.listdir(tmp_path)
    if shard is not None:
        assert any("-00001-of-" in f for f in files) and any(f.endswith(".json") and "index" in f for f in files)
    loaded = TinyNet.from_pretrained(tmp_path, variant=variant, torch_dtype=dtype)
    assert_same_state(model, loaded)
    assert loaded.dtype == (dtype or torch.float32)
    assert torch.equal(loaded.freqs, torch.linspace(0, 1, 8, dtype=dtype or torch.float32))  # rebuilt by the hook
    assert not loaded.training
    assert loaded.config._name_or_path == str(tmp_path)


def test_fp16_checkpoint_loads_as_float32_without_dtype(tmp_path):
    make_tiny().half().save_pretrained(tmp_path, variant="fp16")
    loaded = TinyNet.from_pretrained(tmp_path, variant="fp16")
    assert loaded.dtype == torch.float32
    assert_same_state(make_tiny().half(), loaded, dtype=torch.float32)


def test_loaded_weights_are_mmap_views_without_dtype_change(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    loaded = TinyNet.from_pretrained(tmp_path)
    storages = {p.untyped_storage().data_ptr() for p in loaded.parameters()}
    assert len(storages) == 1  # all parameters live in the single memory-mapped file, no copies
    cast = TinyNet.from_pretrained(tmp_path, torch_dtype=torch.float16)
    assert len({p.untyped_storage().data_ptr() for p in cast.parameters()}) == len(list(cast.parameters()))


def test_meta_construction_does_not_initialise(tmp_path, monkeypatch):
    make_tiny().save_pretrained(tmp_path)
    calls = []
    real = torch.nn.Linear.reset_parameters

    def spy(self):
        calls.append(self.weight.device.type)
        return real(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", spy)
    original = torch.nn.init.kaiming_uniform_
    TinyNet.from_pretrained(tmp_path)
    assert calls and set(calls) == {"meta"}
    assert torch.nn.init.kaiming_uniform_ is original  # init functions are restored
    with pytest.raises(TypeError):
        TinyNet.from_pretrained(tmp_path, dim="eight")  # construction fails inside the no-init block
    assert torch.nn.init.kaiming_uniform_ is original


def test_config_overrides_and_loading_info(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    model, info = TinyNet.from_pretrained(tmp_path, scale_value=2.0, output_loading_info=True)
    assert model.config.scale_value == 2.0
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


def test_bin_fallback_and_use_safetensors(tmp_path, caplog):
    model = make_tiny()
    model.save_pretrained(tmp_path, safe_serialization=False)
    with caplog.at_level(logging.WARNING):
        loaded = TinyNet.from_pretrained(tmp_path)
    assert "Defaulting to unsafe serialization" in caplog.text
    assert_same_state(model, loaded)
    with pytest.raises(EnvironmentError, match=r"Error no file named diffusion_pytorch_model.safetensors found in "
                                               r"directory"):
        TinyNet.from_pretrained(tmp_path, use_safetensors=True)
    # use_safetensors=False reads the pickle file even when a safetensors file exists
    make_tiny(seed=1).save_pretrained(tmp_path)
    assert_same_state(model, TinyNet.from_pretrained(tmp_path, use_safetensors=False))
    assert_same_state(make_tiny(seed=1), TinyNet.from_pretrained(tmp_path))


def test_variant_missing_error(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"`variant=fp16`, but no such modeling files are available"):
        TinyNet.from_pretrained(tmp_path, variant="fp16")


def test_no_weights_error(tmp_path):
    make_tiny().save_config(tmp_path)
    with pytest.raises(EnvironmentError, match="Error no file named diffusion_pytorch_model.safetensors or "
                                               "diffusion_pytorch_model.bin found in directory"):
        TinyNet.from_pretrained(tmp_path)


def test_missing_keys_error_lists_keys(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    del sd["layers.2.weight"], sd["norm.bias"]
    save_file(sd, str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"missing keys\): \['layers.2.weight', 'norm.bias'\] \(2 in total\)"):
        TinyNet.from_pretrained(tmp_path)
    # opt-in: random initialisation of what is missing, with a warning
    model = TinyNet.from_pretrained(tmp_path, low_cpu_mem_usage=False)
    assert torch.equal(model.layers[0].weight, make_tiny().layers[0].weight)
    assert not model.layers[2].weight.is_meta


def test_unexpected_keys_error(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    sd["extra.weight"] = torch.ones(2)
    save_file(sd, str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"unexpected keys\): \['extra.weight'\]"):
        TinyNet.from_pretrained(tmp_path)


def test_shape_mismatch_error_and_ignore(tmp_path, caplog):
    make_tiny().save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    sd["layers.1.weight"] = torch.ones(8, 4)
    save_file(sd, str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"because layers.1.weight expected shape torch.Size\(\[8, 8\]\), but got "
                                         r"torch.Size\(\[8, 4\]\)"):
        TinyNet.from_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = TinyNet.from_pretrained(tmp_path, ignore_mismatched_sizes=True)
    assert "layers.1.weight: found shape (8, 4) in the checkpoint and (8, 8) in the model instantiated" in caplog.text
    assert model.layers[1].weight.shape == (8, 8)
    assert torch.equal(model.layers[0].weight, make_tiny().layers[0].weight)


def test_convert_state_dict_keys_hook(tmp_path):
    class Renamed(TinyNet):
        @classmethod
        def _convert_state_dict_keys(cls, state_dict):
            return {k.replace("old_norm", "norm"): v for k, v in state_dict.items()}

    model = make_tiny()
    model.save_pretrained(tmp_path)
    sd = load_file(str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    sd = {k.replace("norm", "old_norm"): v for k, v in sd.items()}
    save_file(sd, str(tmp_path / W.SAFETENSORS_WEIGHTS_NAME))
    assert_same_state(model, Renamed.from_pretrained(tmp_path))


@pytest.mark.parametrize("dtype,exc,msg", [
    (torch.int8, ValueError, "Can't instantiate TinyNet model under dtype=torch.int8"),
    ("float77", ValueError, "torch_dtype='float77' is not a torch dtype"),
])
def test_dtype_validation(tmp_path, dtype, exc, msg):
    make_tiny().save_pretrained(tmp_path)
    with pytest.raises(exc, match=msg):
        TinyNet.from_pretrained(tmp_path, torch_dtype=dtype)


def test_dtype_string_and_non_dtype(tmp_path, caplog):
    make_tiny().save_pretrained(tmp_path)
    assert TinyNet.from_pretrained(tmp_path, torch_dtype="bfloat16").dtype == torch.bfloat16
    with caplog.at_level(logging.WARNING):
        assert TinyNet.from_pretrained(tmp_path, torch_dtype=3.5).dtype == torch.float32
    assert "Defaulting to `torch.float32`" in caplog.text


def test_device_map(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    assert TinyNet.from_pretrained(tmp_path, device_map="cpu").device == torch.device("cpu")
    assert TinyNet.from_pretrained(tmp_path, device_map={"": "cpu"}).device == torch.device("cpu")
    with pytest.raises(ValueError, match="negative int"):
        TinyNet.from_pretrained(tmp_path, device_map=-1)
    with pytest.raises(ValueError, match="several devices"):
        TinyNet.from_pretrained(tmp_path, device_map={"a": "cpu", "b": "cuda"})


def test_bad_arguments(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        TinyNet.from_pretrained(123)
    with pytest.raises(ValueError, match="variant must be a non-empty string"):
        TinyNet.from_pretrained(tmp_path, variant="")
    with pytest.raises(TypeError, match="use_safetensors must be None, True or False"):
        TinyNet.from_pretrained(tmp_path, use_safetensors="yes")
    with pytest.raises(ValueError, match="max_shard_size"):
        make_tiny().save_pretrained(tmp_path / "x", max_shard_size="lots")
    assert not (tmp_path / "x").exists()


def test_atomic_save_failure_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        make_tiny().save_pretrained(tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_atomic_save_failure_keeps_existing_folder(tmp_path, monkeypatch):
    model = make_tiny()
    model.save_pretrained(tmp_path / "out")
    before = {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")}
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        make_tiny(seed=5).save_pretrained(tmp_path / "out")
    assert {f: (tmp_path / "out" / f).read_bytes() for f in os.listdir(tmp_path / "out")} == before
    assert os.listdir(tmp_path) == ["out"]


def test_save_into_existing_folder_keeps_other_files_and_drops_stale_shards(tmp_path):
    model = make_tiny()
    model.save_pretrained(tmp_path, max_shard_size=300)
    assert any("-of-" in f for f in os.listdir(tmp_path))
    (tmp_path / "README.md").write_text("hi")
    model.save_pretrained(tmp_path, variant="fp16")
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "README.md", "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    assert_same_state(model, TinyNet.from_pretrained(tmp_path))


def test_save_to_file_path_is_refused(tmp_path, caplog):
    target = tmp_path / "file"
    target.write_text("x")
    with caplog.at_level(logging.ERROR):
        make_tiny().save_pretrained(target)
    assert "should be a directory, not a file" in caplog.text
    assert target.read_text() == "x"


def test_properties():
    model = make_tiny(dim=4, depth=2)
    assert model.num_parameters() == 2 * (16 + 4) + 8
    model.layers[0].weight.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == 2 * (16 + 4) + 8 - 16
    # params 48 floats + buffers: steps (4 int64) + freqs (4 float32)
    assert model.get_memory_footprint() == 48 * 4 + 4 * 8 + 4 * 4
    assert model.get_memory_footprint(return_buffers=False) == 48 * 4
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    assert model.half().dtype == torch.float16


def test_config_attribute_fallback_warns():
    model = make_tiny()
    with pytest.warns(FutureWarning, match="Accessing config attribute `dim`"):
        assert model.dim == 8
    with pytest.raises(AttributeError):
        model.not_there


def test_keep_in_fp32_modules(tmp_path):
    class Keep(TinyNet):
        _keep_in_fp32_modules = ["norm"]

    make_tiny().save_pretrained(tmp_path)
    for low_mem in (True, False):
        m = Keep.from_pretrained(tmp_path, torch_dtype=torch.float16, low_cpu_mem_usage=low_mem)
        assert m.norm.weight.dtype == torch.float32 and m.layers[0].weight.dtype == torch.float16
        assert torch.equal(m.norm.weight, make_tiny().norm.weight)


def test_buffer_without_hook_left_on_meta_is_an_error(tmp_path):
    from diffblocks.configuration import ConfigMixin, register_to_config

    class NoHook(ModelMixin, ConfigMixin):
        config_name = "config.json"

        @register_to_config
        def __init__(self, dim: int = 4):
            super().__init__()
            self.lin = torch.nn.Linear(dim, dim)
            self.register_buffer("table", torch.ones(dim), persistent=False)

    NoHook().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"still has tensors on the meta device after loading: \['table'\]"):
        NoHook.from_pretrained(tmp_path)
    assert torch.equal(NoHook.from_pretrained(tmp_path, low_cpu_mem_usage=False).table, torch.ones(4))


def test_saved_files_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        make_tiny().save_pretrained(tmp_path / "m", max_shard_size=300)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m").st_mode & 0o777 == 0o755
    assert {os.stat(tmp_path / "m" / f).st_mode & 0o777 for f in os.listdir(tmp_path / "m")} == {0o644}


def test_modules_with_load_hooks_go_through_load_state_dict(tmp_path):
    seen = []

    class Hooked(TinyNet):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.norm._register_load_state_dict_pre_hook(lambda sd, prefix, *rest: seen.append(prefix))

    make_tiny().save_pretrained(tmp_path)
    model = Hooked.from_pretrained(tmp_path)
    assert seen == ["norm."]
    assert_same_state(make_tiny(), model)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in model.parameters())


def test_resave_into_the_folder_the_weights_are_mapped_from(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    loaded = TinyNet.from_pretrained(tmp_path)  # parameters are views of the mapped file
    with torch.no_grad():
        loaded.layers[0].weight.add_(1.0)  # private mapping: the file does not change
    assert_same_state(make_tiny(), TinyNet.from_pretrained(tmp_path))
    loaded.save_pretrained(tmp_path)  # new file replaces the mapped one; the mapping stays valid
    again = TinyNet.from_pretrained(tmp_path)
    assert torch.equal(again.layers[0].weight, make_tiny().layers[0].weight + 1.0)
    assert torch.equal(loaded.layers[1].weight, make_tiny().layers[1].weight)


def test_buffers_built_in_requested_dtype_and_default_restored(tmp_path):
    make_tiny().save_pretrained(tmp_path)
    m = TinyNet.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert m.freqs.dtype == torch.bfloat16 and m.steps.dtype == torch.int64
    assert torch.get_default_dtype() == torch.float32
    m = TinyNet.from_pretrained(tmp_path, torch_dtype=torch.float16, low_cpu_mem_usage=False)
    assert m.freqs.dtype == torch.float16 and m.layers[0].weight.dtype == torch.float16
    assert torch.get_default_dtype() == torch.float32


def test_xformers_switches_are_harmless_noops():
    model = make_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="diffblocks does not use xformers"):
        model.enable_xformers_memory_efficient_attention()
    model.disable_xformers_memory_efficient_attention()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="valid must be a bool"):
        model.set_use_memory_efficient_attention_xformers("yes")
