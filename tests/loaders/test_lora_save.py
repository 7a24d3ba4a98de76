"""save_lora_weights (SD and SDXL) and get_lora_state_dict: diffusers loads what we save and gives the same image,
we load what diffusers saves, peft's get_peft_model_state_dict round-trips, metadata, errors, atomic writes."""
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.fixtures.tiny import build_tiny_sdxl_folder
from tests.loaders.test_lora import assert_close, make_lora, run
from tests.loaders.test_lora_sdxl import make_sdxl_lora


@pytest.fixture(autouse=True)
def _clean(our_pipe, ref_pipe):
    yield
    our_pipe.unload_lora_weights()
    ref_pipe.unload_lora_weights()


def _file_keys(path):
    with safe_open(path, framework="pt") as f:
        return sorted(f.keys()), f.metadata()


def test_save_then_diffusers_and_we_load_it(our_pipe, ref_pipe, tmp_path):
    from diffblocks import StableDiffusionPipeline
    from diffblocks.loaders.lora import get_lora_adapter_metadata, get_lora_state_dict

    # kohya file with alpha 2 over rank 4: the scale alpha/r travels in the adapter metadata
    our_pipe.load_lora_weights(make_lora(our_pipe, "kohya", seed=31, alpha=2.0), adapter_name="mine")
    with_lora = run(our_pipe)
    unet_layers = get_lora_state_dict(our_pipe.unet)
    te_layers = get_lora_state_dict(our_pipe.text_encoder, "mine")
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in unet_layers)
    assert "text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in te_layers
    path = StableDiffusionPipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
        unet_lora_adapter_metadata=get_lora_adapter_metadata(our_pipe.unet),
        text_encoder_lora_adapter_metadata=get_lora_adapter_metadata(our_pipe.text_encoder, "mine"))
    assert path == str(tmp_path / "pytorch_lora_weights.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["pytorch_lora_weights.safetensors"]  # no temporary left behind
    keys, meta = _file_keys(path)
    assert meta["format"] == "pt"
    assert '"unet.lora_alpha": 2.0' in meta["lora_adapter_metadata"]
    assert '"text_encoder.lora_alpha": 2.0' in meta["lora_adapter_metadata"]
    assert len(keys) == len(unet_layers) + len(te_layers)
    assert {k.split(".", 1)[0] for k in keys} == {"unet", "text_encoder"}
    assert f"unet.{next(iter(unet_layers))}" in keys

    ref_pipe.load_lora_weights(str(tmp_path), adapter_name="theirs")  # default file name found
    assert_close(run(ref_pipe), with_lora)
    our_pipe.unload_lora_weights()
    our_pipe.load_lora_weights(str(tmp_path), adapter_name="again")
    assert np.array_equal(run(our_pipe), with_lora)

def test_peft_get_peft_model_state_dict_round_trip(our_pipe, tmp_path):
    from peft import get_peft_model_state_dict

    from diffblocks import StableDiffusionPipeline
    from diffblocks.loaders.lora import get_lora_state_dict

    our_pipe.load_lora_weights(make_lora(our_pipe, "peft", seed=32), adapter_name="p")
    with_lora = run(our_pipe)
    theirs_unet = get_peft_model_state_dict(our_pipe.unet, adapter_name="p")
    mine_unet = get_lora_state_dict(our_pipe.unet, "p")
    assert sorted(theirs_unet) == sorted(mine_unet)
    assert all(torch.equal(theirs_unet[k], mine_unet[k]) for k in mine_unet)
    theirs_te = get_peft_model_state_dict(our_pipe.text_encoder, adapter_name="p")
    assert sorted(theirs_te) == sorted(get_lora_state_dict(our_pipe.text_encoder, "p"))
    StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=theirs_unet,
                                              text_encoder_lora_layers=theirs_te, weight_name="peft.safetensors")
    our_pipe.unload_lora_weights()
    our_pipe.load_lora_weights(str(tmp_path), weight_name="peft.safetensors")
    assert np.array_equal(run(our_pipe), with_lora)


def test_we_load_what_diffusers_saves(our_pipe, ref_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline as RefPipe
    from peft import get_peft_model_state_dict

    sd = make_lora(our_pipe, "old", seed=33)
    ref_pipe.load_lora_weights(sd, adapter_name="d")
    RefPipe.save_lora_weights(str(tmp_path), unet_lora_layers=get_peft_model_state_dict(ref_pipe.unet, adapter_name="d"),
                              text_encoder_lora_layers=get_peft_model_state_dict(ref_pipe.text_encoder, adapter_name="d"),
                              weight_name="from_diffusers.safetensors")
    our_pipe.load_lora_weights(str(tmp_path), weight_name="from_diffusers.safetensors", adapter_name="d")
    assert our_pipe.get_list_adapters() == {"unet": ["d"], "text_encoder": ["d"]}
    assert_close(run(our_pipe), run(ref_pipe))


def test_metadata_round_trip_with_rank_pattern(our_pipe, ref_pipe, tmp_path):
    from diffblocks import StableDiffusionPipeline
    from diffblocks.loaders.lora import get_lora_adapter_metadata, get_lora_state_dict

    sd = make_lora(our_pipe, "peft", seed=34, with_te=False)
    # one module with a different rank and a non-default alpha: the config needs rank/alpha patterns
    key = next(k for k in sd if k.endswith("lora_A.weight"))
    name = key[: -len(".lora_A.weight")]
    sd[f"{name}.lora_A.weight"] = sd[f"{name}.lora_A.weight"][:2]
    sd[f"{name}.lora_B.weight"] = sd[f"{name}.lora_B.weight"][:, :2]
    our_pipe.load_lora_weights(sd, adapter_name="m")
    with_lora = run(our_pipe)
    meta = get_lora_adapter_metadata(our_pipe.unet, "m")
    assert meta["r"] == 4 and meta["rank_pattern"] == {name[len("unet."):]: 2}
    path = StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=get_lora_state_dict(our_pipe.unet),
                                                     unet_lora_adapter_metadata=meta)
    _, file_meta = _file_keys(path)
    assert file_meta["format"] == "pt" and '"unet.r": 4' in file_meta["lora_adapter_metadata"]
    ref_pipe.load_lora_weights(str(tmp_path), adapter_name="m")
    assert_close(run(ref_pipe), with_lora)
    our_pipe.unload_lora_weights()
    our_pipe.load_lora_weights(path, adapter_name="m2")
    assert np.array_equal(run(our_pipe), with_lora)


def test_bin_and_errors_and_atomicity(our_pipe, tmp_path):
    from diffblocks import StableDiffusionPipeline
    from diffblocks.loaders.lora import get_lora_state_dict

    our_pipe.load_lora_weights(make_lora(our_pipe, "peft", seed=35, with_te=False), adapter_name="b")
    layers = get_lora_state_dict(our_pipe.unet)
    path = StableDiffusionPipeline.save_lora_weights(str(tmp_path / "bin"), unet_lora_layers=layers,
                                                     safe_serialization=False)
    assert path.endswith("pytorch_lora_weights.bin")
    loaded = torch.load(path, weights_only=True)
    assert sorted(loaded) == sorted(f"unet.{k}" for k in layers)

    with pytest.raises(ValueError, match="at least one of `unet_lora_layers` or `text_encoder_lora_layers`"):
        StableDiffusionPipeline.save_lora_weights(str(tmp_path))
    with pytest.raises(ValueError, match="cannot be specified when not using `safe_serialization`"):
        StableDiffusionPipeline.save_lora_weights(str(tmp_path / "x"), unet_lora_layers=layers,
                                                  safe_serialization=False, unet_lora_adapter_metadata={"r": 4})
    with pytest.raises(TypeError, match="`unet_lora_layers` must map names to tensors"):
        StableDiffusionPipeline.save_lora_weights(str(tmp_path / "x"), unet_lora_layers={"a": 1})
    with pytest.raises(ValueError, match="`adapter_name` is required"):
        our_pipe.load_lora_weights(make_lora(our_pipe, "peft", seed=36, with_te=False), adapter_name="c")
        get_lora_state_dict(our_pipe.unet)

    target = tmp_path / "atomic"
    target.mkdir()
    (target / "pytorch_lora_weights.safetensors").write_bytes(b"old")

    def failing(state_dict, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        StableDiffusionPipeline.save_lora_weights(str(target), unet_lora_layers=layers, save_function=failing)
    assert sorted(os.listdir(target)) == ["pytorch_lora_weights.safetensors"]
    assert (target / "pytorch_lora_weights.safetensors").read_bytes() == b"old"
    assert StableDiffusionPipeline.save_lora_weights(str(target / "n"), unet_lora_layers=layers,
                                                     is_main_process=False) is None
    assert not (target / "n").exists()


def test_sdxl_save_text_encoder_2_and_diffusers_parity(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from diffblocks import StableDiffusionXLPipeline
    from diffblocks.loaders.lora import get_lora_adapter_metadata, get_lora_state_dict

    folder = build_tiny_sdxl_folder(str(tmp_path / "sdxl"))
    our_pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    ref_pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    for pipe in (our_pipe, ref_pipe):
        pipe.set_progress_bar_config(disable=True)
    our_pipe.load_lora_weights(make_sdxl_lora(our_pipe, "sgm", seed=37, alpha=3.0), adapter_name="x")

    def image(pipe):
        return np.asarray(pipe("a tiny photo", num_inference_steps=2, height=32, width=32, output_type="np",
                               generator=torch.Generator().manual_seed(0)).images)

    with_lora = image(our_pipe)
    path = StableDiffusionXLPipeline.save_lora_weights(
        str(tmp_path / "out"), unet_lora_layers=get_lora_state_dict(our_pipe.unet),
        text_encoder_lora_layers=get_lora_state_dict(our_pipe.text_encoder),
        text_encoder_2_lora_layers=get_lora_state_dict(our_pipe.text_encoder_2), weight_name="sdxl_lora.safetensors",
        unet_lora_adapter_metadata=get_lora_adapter_metadata(our_pipe.unet),
        text_encoder_lora_adapter_metadata=get_lora_adapter_metadata(our_pipe.text_encoder),
        text_encoder_2_lora_adapter_metadata=get_lora_adapter_metadata(our_pipe.text_encoder_2))
    keys, _ = _file_keys(path)
    assert {k.split(".", 1)[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    ref_pipe.load_lora_weights(str(tmp_path / "out"), weight_name="sdxl_lora.safetensors", adapter_name="x")
    assert float(np.abs(image(ref_pipe) - with_lora).max()) <= 1e-4
    with pytest.raises(ValueError, match="`text_encoder_2_lora_layers`"):
        StableDiffusionXLPipeline.save_lora_weights(str(tmp_path / "none"))
