"""Quality gate of the shipped default model ``diffblocks/tiny-digits``.

For each digit 0-9 and 5 seeds an image is generated with the default scheduler and 20 steps, then classified by
a logistic regression fit on scikit-learn's digits (the training data). Prompt adherence must be >= 90%. The
same images must come out of the modular SD blocks and of diffusers' StableDiffusionPipeline.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.quality.digits_eval import classify, digit_requests, fit_digit_classifier, generators, to_8x8

SEEDS = [0, 1, 2, 3, 4]
STEPS = 20


@pytest.fixture(scope="module")
def model_path() -> str:
    from diffblocks.default_models import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def classifier():
    return fit_digit_classifier()


@pytest.fixture(scope="module")
def classic_images(model_path):
    from diffblocks import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_path)
    pipe.set_progress_bar_config(disable=True)
    prompts, targets, seeds = digit_requests(SEEDS)
    with torch.inference_mode():
        images = pipe(prompts, num_inference_steps=STEPS, generator=generators(seeds), output_type="np").images
    return images, np.array(targets), prompts, seeds


def test_shipped_folder_is_a_standard_sd_pipeline(model_path):
    with open(os.path.join(model_path, "model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    for name in ("unet", "vae"):
        assert os.path.isfile(os.path.join(model_path, name, "diffusion_pytorch_model.safetensors"))
    assert os.path.isfile(os.path.join(model_path, "text_encoder", "model.safetensors"))
    assert os.path.isfile(os.path.join(model_path, "README.md"))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(model_path) for f in fs)
    assert total < 10_000_000, f"the shipped model should stay small, it is {total} bytes"


def test_builtin_name_resolves(model_path, tmp_path, monkeypatch):
    from diffblocks.default_models import DEFAULT_MODEL_NAME, resolve_builtin

    assert DEFAULT_MODEL_NAME == "diffblocks/tiny-digits"
    assert resolve_builtin("diffblocks/tiny-digits") == model_path
    assert resolve_builtin("Diffblocks/Tiny-Digits") == model_path
    assert resolve_builtin("runwayml/stable-diffusion-v1-5") is None
    # a local folder of the same name wins
    (tmp_path / "diffblocks" / "tiny-digits").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_builtin("diffblocks/tiny-digits") is None
    with pytest.raises(TypeError, match="name_or_path"):
        resolve_builtin(3)


def test_tokenizer_covers_the_prompts(model_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(os.path.join(model_path, "tokenizer"))
    unk = tok.convert_tokens_to_ids(tok.unk_token)
    for prompt in ["a handwritten digit seven", "7", "seven", "digit 7", "the number seven"]:
        ids = tok(prompt).input_ids[1:-1]
        assert len(ids) == len(prompt.split()) and unk not in ids, (prompt, tok.convert_ids_to_tokens(ids))
    # characters the vocabulary has never seen map to the unknown token
    ids = tok("qq").input_ids[1:-1]
    assert ids and set(ids) == {unk}


def test_prompt_adherence_at_least_90_percent(classic_images, classifier):
    images, targets, _, _ = classic_images
    assert images.shape == (50, 32, 32, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0
    predicted = classify(classifier, images)
    adherence = float((predicted == targets).mean())
    per_digit = {d: int((predicted[targets == d] == d).sum()) for d in range(10)}
    assert adherence >= 0.90, f"prompt adherence {adherence:.2f}; correct per digit (of 5): {per_digit}"
    # the images are digits, not noise: dark background, some bright strokes
    grey = to_8x8(images)
    assert 0.05 < grey.mean() < 0.6


def test_modular_blocks_give_the_same_images(classic_images, model_path):
    from diffblocks import ModularPipeline

    images, _, prompts, seeds = classic_images
    pipe = ModularPipeline.from_pretrained(model_path)
    pipe.load_components(torch_dtype=torch.float32)
    with torch.inference_mode():
        modular = pipe(prompt=prompts, num_inference_steps=STEPS, generator=generators(seeds), output_type="np",
                       output="images")
    modular = np.asarray(modular)
    assert modular.shape == images.shape
    assert np.abs(modular - images).max() <= 1e-5


def test_diffusers_loads_the_shipped_folder_and_matches(classic_images, model_path):
    diffusers = pytest.importorskip("diffusers")
    images, _, prompts, seeds = classic_images
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_path)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == json.load(open(os.path.join(model_path, "model_index.json")))["scheduler"][1]
    subset = slice(0, 50, 5)  # one seed per digit keeps the test short
    with torch.inference_mode():
        theirs = pipe(prompts[subset], num_inference_steps=STEPS, generator=generators(seeds[subset]),
                      output_type="np").images
    assert np.abs(theirs - images[subset]).max() <= 1e-4


def test_switching_to_ddim_keeps_unclipped_latents():
    # the shipped scheduler config carries clip_sample=false like SD 1.5's, so DDIM/DDPM/PNDM swaps draw digits
    import diffblocks
    from diffblocks.default_models import default_model_path

    config = diffblocks.DPMSolverMultistepScheduler.load_config(default_model_path(), subfolder="scheduler")
    for cls in (diffblocks.DDIMScheduler, diffblocks.DDPMScheduler, diffblocks.PNDMScheduler):
        assert cls.from_config(config).config.clip_sample is False or cls is diffblocks.PNDMScheduler
    assert diffblocks.DDIMScheduler.from_config(config).config.set_alpha_to_one is False
