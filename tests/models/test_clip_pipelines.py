"""Pipelines load diffblocks' CLIP text encoders/tokenizers from folders naming transformers' classes; transformers'
objects still work as overrides; what we save, diffusers loads; no transformers import on the text-to-image path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from diffblocks.models.clip_text import CLIPTextModel, CLIPTextModelWithProjection
from diffblocks.models.clip_tokenizer import CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _image(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=2, height=32, width=32,
               generator=torch.Generator().manual_seed(0), output_type="np", **kw)
    return out.images


def test_sd_folder_loads_our_classes_and_records_transformers_names(tiny_sd_folder, tmp_path):
    import diffblocks

    pipe = diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.tokenizer) is CLIPTokenizer
    assert pipe.config["text_encoder"] == ("transformers", "CLIPTextModel") or \
        list(pipe.config["text_encoder"]) == ["transformers", "CLIPTextModel"]
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert sorted(os.listdir(tmp_path / "saved" / "text_encoder")) == ["config.json", "model.safetensors"]


def test_sdxl_folder_loads_our_classes(tiny_sdxl_folder):
    import diffblocks

    pipe = diffblocks.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert type(pipe.tokenizer) is CLIPTokenizer and type(pipe.tokenizer_2) is CLIPTokenizer


def test_auto_model_loads_our_class(tiny_sd_folder):
    from diffblocks import AutoModel

    model = AutoModel.from_pretrained(tiny_sd_folder, subfolder="text_encoder")
    assert type(model) is CLIPTextModel and not model.training
    assert model._diffblocks_load_id.startswith(tiny_sd_folder)
    built = AutoModel.from_config(tiny_sd_folder, subfolder="text_encoder")
    assert type(built) is CLIPTextModel and built.config.hidden_size == model.config.hidden_size


def test_transformers_objects_as_overrides_give_the_same_image(tiny_sd_folder):
    transformers = pytest.importorskip("transformers")
    import diffblocks

    ours = diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    te = transformers.CLIPTextModel.from_pretrained(os.path.join(tiny_sd_folder, "text_encoder")).eval()
    tok = transformers.CLIPTokenizer.from_pretrained(os.path.join(tiny_sd_folder, "tokenizer"))
    theirs = diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, text_encoder=te, tokenizer=tok)
    assert theirs.text_encoder is te and theirs.tokenizer is tok
    a, b = _image(ours), _image(theirs, clip_skip=None)
    assert np.abs(a - b).max() <= 1e-5
    assert np.abs(_image(ours, clip_skip=1) - _image(theirs, clip_skip=1)).max() <= 1e-5
    # the wrong kind of object is still refused
    with pytest.raises(ValueError, match="`text_encoder`.*should be"):
        diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, text_encoder=torch.nn.Linear(2, 2))
    # a transformers object of the wrong kind too (a tokenizer where the text encoder goes, and the reverse)
    with pytest.raises(ValueError, match=r"(?s)`text_encoder`.*transformers' PreTrainedModel"):
        diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, text_encoder=tok)
    with pytest.raises(ValueError, match=r"(?s)`tokenizer`.*transformers' PreTrainedTokenizerBase"):
        diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder, tokenizer=te)


def test_our_saved_folder_loads_in_diffusers_same_image(tiny_sd_folder, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    import diffblocks

    ours = diffblocks.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    ours.save_pretrained(tmp_path / "saved")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(theirs.text_encoder).__module__.startswith("transformers")
    assert np.abs(_image(ours) - _image(theirs)).max() <= 1e-4


def test_text_to_image_does_not_import_transformers_or_heavy_modules(tiny_sd_folder):
    code = textwrap.dedent(f"""
        import sys
        import torch
        torch.set_num_threads(1)
        import diffblocks
        for path in ({tiny_sd_folder!r}, "diffblocks/tiny-digits"):
            pipe = diffblocks.StableDiffusionPipeline.from_pretrained(path)
            pipe.set_progress_bar_config(disable=True)
            image = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32).images[0]
            assert image.size == (32, 32), image.size
            assert type(pipe.text_encoder).__module__ == "diffblocks.models.clip_text"
        # transformers (and what it drags in), plus the lazy imports it used to hide: torch._dynamo through
        # `torch._dynamo` attribute reads, sympy through tensor factories on the meta device
        heavy = ("transformers", "accelerate", "tokenizers", "sympy")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("torch._dynamo"))
        print("LEAKED", leaked)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.path.join(ROOT, "src"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LEAKED []" in result.stdout, result.stdout


def test_our_saved_sdxl_folder_loads_in_diffusers_same_image(tiny_sdxl_folder, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    import diffblocks

    ours = diffblocks.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    ours.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "text_encoder_2" / "config.json").read_text())
    assert config["architectures"] == ["CLIPTextModelWithProjection"]
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(tmp_path / "saved")
    assert type(theirs.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(theirs.text_encoder_2).__module__.startswith("transformers")
    a, b = _image(ours, clip_skip=1), _image(theirs, clip_skip=1)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4


def test_modular_pipeline_loads_our_classes_and_writes_transformers_names(tiny_sd_folder, tmp_path):
    from diffblocks.modular_pipelines import ModularPipeline

    pipe = ModularPipeline.from_pretrained(tiny_sd_folder)
    pipe.load_components()
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.tokenizer) is CLIPTokenizer
    pipe.save_pretrained(str(tmp_path / "saved"))
    index = json.loads((tmp_path / "saved" / "modular_model_index.json").read_text())
    assert index["text_encoder"][:2] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder"][2]["type_hint"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"][:2] == ["transformers", "CLIPTokenizer"]
