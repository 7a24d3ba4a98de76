"""The tiny checkpoint builders: layout, determinism, and that diffusers/transformers read what they write."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.tiny import (build_tiny_sd_folder, tiny_clip_text_config, tiny_scheduler_config,
                                 tiny_unet_config, write_tiny_tokenizer)


def test_unet_configs():
    assert tiny_unet_config("sd")["block_out_channels"] == [32, 64]
    assert tiny_unet_config("inpaint")["in_channels"] == 9
    sd2 = tiny_unet_config("sd2")
    assert sd2["use_linear_projection"] is True and sd2["attention_head_dim"] == [2, 4]
    xl = tiny_unet_config("sdxl")
    assert xl["projection_class_embeddings_input_dim"] == 32 + 6 * xl["addition_time_embed_dim"] == 80
    assert xl["cross_attention_dim"] == 2 * tiny_clip_text_config()["hidden_size"]
    assert tiny_unet_config("sdxl_refiner")["projection_class_embeddings_input_dim"] == 72
    with pytest.raises(ValueError, match="kind must be one of"):
        tiny_unet_config("sd3")
    assert tiny_scheduler_config("sd2")["prediction_type"] == "v_prediction"
    assert tiny_scheduler_config("sdxl")["timestep_spacing"] == "leading"


def test_tokenizer_loads_in_transformers(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(str(tmp_path / "tok")))
    assert tok.model_max_length == 77
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert tok.bos_token_id == vocab["<|startoftext|>"] == len(vocab) - 2
    assert tok.eos_token_id == vocab["<|endoftext|>"] == len(vocab) - 1  # highest id, like CLIP
    assert len(vocab) <= tiny_clip_text_config()["vocab_size"]
    ids = tok("A photo of a cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    padded = tok("zebra", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == tok.pad_token_id


def test_sd_folder_layout_and_diffusers_reads_it(tiny_sd_folder):
    import diffusers

    index = json.loads(open(os.path.join(tiny_sd_folder, "model_index.json")).read())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert sorted(os.listdir(os.path.join(tiny_sd_folder, "unet"))) == \
        ["config.json", "diffusion_pytorch_model.safetensors"]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    assert pipe.unet.config.cross_attention_dim == 32 and pipe.scheduler.config.skip_prk_steps is True
    assert pipe.text_encoder.config.hidden_size == 32 and pipe.tokenizer.model_max_length == 77


def test_variants_shards_bin_and_determinism(tmp_path):
    a = build_tiny_sd_folder(str(tmp_path / "a"), variant="fp16", max_shard_size=200_000)
    unet = sorted(os.listdir(os.path.join(a, "unet")))
    assert "diffusion_pytorch_model.safetensors.index.json" in unet
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in unet
    assert any(f.startswith("diffusion_pytorch_model.fp16-00001-of-") for f in unet)
    assert "model.fp16.safetensors" in os.listdir(os.path.join(a, "text_encoder"))
    te16 = load_file(os.path.join(a, "text_encoder", "model.fp16.safetensors"))
    assert {t.dtype for t in te16.values() if t.is_floating_point()} == {torch.float16}
    assert json.loads(open(os.path.join(a, "text_encoder", "config.json")).read()).get("dtype") in (None, "float32")

    b = build_tiny_sd_folder(str(tmp_path / "b"), variant="non_ema", variant_components=["unet"],
                             safe_serialization=False)
    assert sorted(os.listdir(os.path.join(b, "unet"))) == [
        "config.json", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.non_ema.bin"]
    assert sorted(os.listdir(os.path.join(b, "vae"))) == ["config.json", "diffusion_pytorch_model.bin"]
    assert "pytorch_model.bin" in os.listdir(os.path.join(b, "text_encoder"))
    # same seed, same weights regardless of format
    vae_a = load_file(os.path.join(a, "vae", "diffusion_pytorch_model.safetensors"))
    vae_b = torch.load(os.path.join(b, "vae", "diffusion_pytorch_model.bin"), weights_only=True)
    assert vae_a.keys() == vae_b.keys() and all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)
