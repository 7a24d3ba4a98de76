"""The modular core with the real ComponentsManager and the model families' registrations (no weights loaded
except tiny test modules)."""
import json
import logging
import os

import pytest
import torch

from diffblocks.modular_pipelines import ModularPipeline, SequentialPipelineBlocks

from .helpers import ModelBlock, TextBlock, write_tiny_model

HELPERS = ModelBlock.__module__


def _index(tmp_path):
    write_tiny_model(str(tmp_path / "ckpt"), "unet", seed=1)
    spec = {"type_hint": [HELPERS, "TinyModel"], "pretrained_model_name_or_path": str(tmp_path / "ckpt"),
            "subfolder": "unet", "variant": None, "revision": None}
    (tmp_path / "modular_model_index.json").write_text(json.dumps({"model": [None, None, spec]}))
    return str(tmp_path)


def test_real_components_manager_reuses_by_load_id(tmp_path, caplog):
    from diffblocks.modular_pipelines import ComponentsManager

    repo = _index(tmp_path)
    cm = ComponentsManager()
    first = ModelBlock().init_pipeline(repo, components_manager=cm, collection="one")
    first.load_components(torch_dtype=torch.float32)
    assert len(cm._lookup_ids(name="model", collection="one")) == 1
    second = ModelBlock().init_pipeline(repo, components_manager=cm, collection="two")
    with caplog.at_level(logging.INFO):
        second.load_components(torch_dtype=torch.float32)
    assert second.model is first.model  # reused, not loaded again
    assert "Reusing model" in caplog.text
    assert len(cm._lookup_ids(name="model", collection="two")) == 1
    # the seed's flow: fill a pipeline from the manager by its null component names
    third = SequentialPipelineBlocks.from_blocks_dict({"m": ModelBlock, "t": TextBlock}).init_pipeline(
        repo, components_manager=cm, collection="three")
    assert third.null_component_names == ["model", "text_model"]
    third.update_components(**cm.get_components_by_names(third.null_component_names))
    assert third.model is first.model and third.null_component_names == ["text_model"]
    # unloading drops only this pipeline's registration: the object is shared with collection "one"
    shared_id = f"model_{id(first.model)}"
    second.unload_components("model")
    assert second.model is None
    assert shared_id in cm.components and shared_id not in cm._lookup_ids(collection="two")
    assert shared_id in cm._lookup_ids(collection="one")
    # once no collection holds it, it leaves the manager
    for pipe in (first, third):
        pipe.unload_components("model")
    assert shared_id not in cm.components


def test_classic_model_index_picks_the_family_pipeline(tmp_path):
    sd = pytest.importorskip("diffblocks.modular_pipelines.stable_diffusion")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    pipe = ModularPipeline.from_pretrained(str(tmp_path))
    assert type(pipe) is sd.StableDiffusionModularPipeline
    assert type(pipe._blocks).__name__ == pipe.default_blocks_name
    unet = pipe.get_component_spec("unet")
    assert (unet.pretrained_model_name_or_path, unet.subfolder) == (str(tmp_path), "unet")
    assert pipe.unet is None  # lazy
    # saved index names the family class and round-trips to it
    pipe.save_pretrained(str(tmp_path / "saved"))
    again = ModularPipeline.from_pretrained(str(tmp_path / "saved"))
    assert type(again) is sd.StableDiffusionModularPipeline
    assert again.get_component_spec("unet").pretrained_model_name_or_path == str(tmp_path)


def test_composite_requirements_are_saved(tmp_path, caplog):
    class A:
        _requirements = {"xyz": ">=0.8.0", "transformers": ">=4.44.0"}

    class B:
        _requirements = {"abc": ">=10.0.0", "diffusers": ">=0.2.0"}

    blocks = SequentialPipelineBlocks.from_blocks_dict({"a": A, "b": B})
    assert blocks._requirements == {"a": A._requirements, "b": B._requirements}
    with caplog.at_level(logging.WARNING, logger="diffblocks.modular_pipelines.modular_pipeline_utils"):
        blocks.save_pretrained(str(tmp_path))
    with open(os.path.join(tmp_path, "modular_config.json")) as f:
        config = json.load(f)
    assert config["requirements"] == {"xyz": ">=0.8.0", "abc": ">=10.0.0", "transformers": ">=4.44.0",
                                      "diffusers": ">=0.2.0"}
    assert "xyz was specified in the requirements but wasn't found in the current environment" in caplog.text
    assert config["auto_map"]["ModularPipelineBlocks"].endswith(".SequentialPipelineBlocks")


def test_spec_load_real_components(tmp_path):
    """AutoModel is the loader when no type_hint is set; transformers models get `dtype`, tokenizers no dtype."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffblocks import AutoencoderKL
    from diffblocks.modular_pipelines import ComponentSpec
    from tests.fixtures.tiny import _build_clip, save_component, tiny_vae_config, write_tiny_tokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config())
    save_component(vae, str(tmp_path / "vae"))
    save_component(_build_clip(0, projection=False), str(tmp_path / "text_encoder"))
    write_tiny_tokenizer(str(tmp_path / "tokenizer"))

    spec = ComponentSpec("vae", pretrained_model_name_or_path=str(tmp_path), subfolder="vae")
    loaded = spec.load(torch_dtype=torch.float16)
    assert type(loaded) is AutoencoderKL and spec.type_hint is AutoencoderKL
    assert loaded.dtype == torch.float16
    assert loaded._diffblocks_load_id == f"{tmp_path}|vae|null|null"

    te = ComponentSpec("text_encoder", CLIPTextModel, pretrained_model_name_or_path=str(tmp_path),
                       subfolder="text_encoder").load(torch_dtype=torch.float16)
    assert te.dtype == torch.float16
    tok = ComponentSpec("tokenizer", CLIPTokenizer, pretrained_model_name_or_path=str(tmp_path),
                        subfolder="tokenizer").load(torch_dtype=torch.float16)
    assert isinstance(tok, CLIPTokenizer) and tok._diffblocks_load_id == f"{tmp_path}|tokenizer|null|null"
    with pytest.raises(ValueError, match="Unable to load vae without `type_hint`"):
        ComponentSpec("vae", pretrained_model_name_or_path=str(tmp_path), subfolder="missing").load()


def _vae_block():
    from diffblocks import AutoencoderKL
    from diffblocks.modular_pipelines import ComponentSpec, InputParam, ModularPipelineBlocks

    class VaeBlock(ModularPipelineBlocks):
        @property
        def expected_components(self):
            return [ComponentSpec("vae", AutoencoderKL), ComponentSpec("vae_fp16", AutoencoderKL)]

        @property
        def inputs(self):
            return [InputParam("x")]

        def __call__(self, components, state):
            return components, state

    return VaeBlock()


def test_hub_repo_index_pointing_at_another_repo_with_variant(tmp_path):
    """A cached Hub repo whose index names components of another cached repo (subfolder, variant, revision)."""
    from diffblocks import AutoencoderKL
    from tests.fixtures.tiny import fill_hf_cache, save_component, tiny_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config())
    ckpt = tmp_path / "ckpt"
    save_component(vae, str(ckpt / "vae"), variant="fp16")
    cache = str(tmp_path / "cache")
    fill_hf_cache(cache, "org/weights", str(ckpt))
    spec = {"type_hint": ["diffusers", "AutoencoderKL"], "pretrained_model_name_or_path": "org/weights",
            "subfolder": "vae", "variant": None, "revision": "main"}
    index = {"_class_name": "ModularPipeline", "_blocks_class_name": "VaeBlock",
             "vae": ["diffusers", "AutoencoderKL", spec],
             "vae_fp16": ["diffusers", "AutoencoderKL", {**spec, "variant": "fp16"}]}
    (tmp_path / "modular").mkdir()
    (tmp_path / "modular" / "modular_model_index.json").write_text(json.dumps(index))
    fill_hf_cache(cache, "org/modular", str(tmp_path / "modular"))

    pipe = ModularPipeline(_vae_block(), "org/modular", cache_dir=cache)
    assert pipe.get_component_spec("vae_fp16").load_id == "org/weights|vae|fp16|main"
    assert pipe.null_component_names == ["vae", "vae_fp16"]
    pipe.load_components(cache_dir=cache)
    assert pipe.null_component_names == []
    # the fp16 variant file was read (values rounded to half precision), then cast to the default dtype
    torch.testing.assert_close(pipe.vae_fp16.decoder.conv_out.weight, vae.decoder.conv_out.weight.half().float())
    torch.testing.assert_close(pipe.vae.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    assert not torch.equal(pipe.vae.decoder.conv_out.weight, pipe.vae_fp16.decoder.conv_out.weight)
