"""Files written by diffusers load here bit-exactly, and files written here load in diffusers."""
import json
import os

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffblocks.configuration import ConfigMixin  # noqa: E402

from ._models import TinyNet, assert_same_state, make_tiny  # noqa: E402
from tests.fixtures.tiny import tiny_unet_config, tiny_vae_config  # noqa: E402


class DiffusersTinyNet(diffusers.ModelMixin, diffusers.ConfigMixin):
    """diffusers twin of TinyNet (same parameter names and shapes)."""

    config_name = "config.json"

    @diffusers.configuration_utils.register_to_config
    def __init__(self, dim: int = 8, depth: int = 3, scale_value: float = 1.0):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)
        self.register_buffer("steps", torch.arange(dim), persistent=True)
        self.register_buffer("freqs", torch.linspace(0, 1, dim), persistent=False)


def _diffusers_twin(seed=0):
    torch.manual_seed(seed)
    return DiffusersTinyNet()


@pytest.mark.parametrize("kw", [{}, {"max_shard_size": 300}, {"variant": "fp16", "max_shard_size": 300},
                                {"safe_serialization": False}])
def test_diffusers_writes_we_read(tmp_path, kw):
    ref = _diffusers_twin()
    if kw.get("variant") == "fp16":
        ref = ref.half()
    ref.save_pretrained(tmp_path, **kw)
    loaded = TinyNet.from_pretrained(tmp_path, variant=kw.get("variant"),
                                     torch_dtype=torch.float16 if kw.get("variant") else None)
    assert_same_state(ref, loaded)


@pytest.mark.parametrize("kw", [{}, {"max_shard_size": 300}, {"variant": "fp16", "max_shard_size": 300},
                                {"safe_serialization": False}])
def test_we_write_diffusers_reads(tmp_path, kw):
    ours = make_tiny()
    if kw.get("variant") == "fp16":
        ours = ours.half()
    ours.save_pretrained(tmp_path / "ours", **kw)
    loaded = DiffusersTinyNet.from_pretrained(tmp_path / "ours", variant=kw.get("variant"),
                                              torch_dtype=torch.float16 if kw.get("variant") else None)
    assert_same_state(ours, loaded)
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(_diffusers_listing(tmp_path / "ref", kw))


def _diffusers_listing(path, kw):
    ref = _diffusers_twin()
    if kw.get("variant") == "fp16":
        ref = ref.half()
    ref.save_pretrained(path, **kw)
    return os.listdir(path)


def test_diffusers_index_json_identical(tmp_path):
    make_tiny().save_pretrained(tmp_path / "ours", max_shard_size=300, variant="fp16")
    _diffusers_twin().save_pretrained(tmp_path / "theirs", max_shard_size=300, variant="fp16")
    name = "diffusion_pytorch_model.safetensors.index.fp16.json"
    ours = json.loads((tmp_path / "ours" / name).read_text())
    theirs = json.loads((tmp_path / "theirs" / name).read_text())
    assert ours["weight_map"] == theirs["weight_map"]
    assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_diffusers_unet_config_reads_the_same(tmp_path, kind):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config(kind))
    unet.save_config(tmp_path)
    ours = ConfigMixin._dict_from_json_file(tmp_path / "config.json")

    class Reader(ConfigMixin):
        config_name = "config.json"

    assert Reader.load_config(tmp_path) == diffusers.UNet2DConditionModel.load_config(tmp_path) == ours


def _diffblocks_class(name):
    import diffblocks

    try:
        return getattr(diffblocks, name)
    except (AttributeError, ImportError):
        pytest.skip(f"diffblocks.{name} is not available yet")


@pytest.mark.parametrize("name,config", [("UNet2DConditionModel", tiny_unet_config("sd")),
                                         ("AutoencoderKL", tiny_vae_config())])
def test_real_model_both_directions(tmp_path, name, config):
    ours_cls = _diffblocks_class(name)
    theirs_cls = getattr(diffusers, name)
    torch.manual_seed(0)
    theirs = theirs_cls(**config)
    theirs.save_pretrained(tmp_path / "theirs")
    ours = ours_cls.from_pretrained(tmp_path / "theirs")
    assert_same_state(theirs, ours)
    assert dict(ours.config)["block_out_channels"] == list(config["block_out_channels"])
    ours.save_pretrained(tmp_path / "ours")
    back = theirs_cls.from_pretrained(tmp_path / "ours")
    assert_same_state(theirs, back)


@pytest.mark.parametrize("name,config", [("UNet2DConditionModel", tiny_unet_config("sdxl")),
                                         ("UNet2DConditionModel", tiny_unet_config("sd2")),
                                         ("AutoencoderKL", tiny_vae_config("sdxl"))])
def test_model_config_json_matches_diffusers(tmp_path, name, config):
    ours_cls = _diffblocks_class(name)
    ours_cls(**config).save_config(tmp_path / "ours")
    getattr(diffusers, name)(**config).save_config(tmp_path / "theirs")
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())
    ours.pop("_diffusers_version"), theirs.pop("_diffusers_version")
    assert ours == theirs
    # and diffusers reads ours back to the same dict
    read = getattr(diffusers, name).load_config(tmp_path / "ours")
    read.pop("_diffusers_version")
    assert read == theirs


SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)


@pytest.mark.slow
def test_full_size_sd15_unet_checkpoint_loads_bit_exact(tmp_path):
    """A diffusers-written SD 1.5-size UNet (random weights, fp16 variant, sharded) loads bit-exactly here."""
    ours_cls = _diffblocks_class("UNet2DConditionModel")
    with torch.device("meta"):
        theirs = diffusers.UNet2DConditionModel(**SD15_UNET)
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=gen, dtype=torch.float32) * 0.02).half()
             for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state, assign=True)
    theirs.save_pretrained(tmp_path / "unet", variant="fp16", max_shard_size="500MB")
    assert len([f for f in os.listdir(tmp_path / "unet") if f.endswith(".safetensors")]) >= 3
    ours = ours_cls.from_pretrained(tmp_path, subfolder="unet", variant="fp16", torch_dtype=torch.float16)
    assert ours.num_parameters() == sum(t.numel() for t in state.values()) > 850_000_000
    assert_same_state(theirs, ours)
