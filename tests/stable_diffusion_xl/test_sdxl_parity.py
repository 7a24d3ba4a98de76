"""Pixel parity with diffusers on tiny SDXL base and refiner checkpoints (classic pipelines)."""
from __future__ import annotations

import pytest
import torch

from .conftest import make_image, make_mask, max_diff

TOL = 1e-4
SIZE = dict(height=32, width=32)


def run_both(sdxl_loaded, cls_name, kind="base", seed=0, **kwargs):
    outs = {}
    for lib in ("theirs", "ours"):
        pipe = sdxl_loaded(lib, cls_name, kind)
        outs[lib] = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=kwargs.pop("steps", 2)
                         if False else kwargs.get("num_inference_steps", 2),
                         **{k: v for k, v in kwargs.items() if k != "num_inference_steps"})
    return outs["ours"], outs["theirs"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a photo of a cat"),
        dict(prompt=["a cat", "a dog"], prompt_2=["red", "blue"], negative_prompt=["bad", "ugly"],
             num_images_per_prompt=2, clip_skip=1),
        dict(prompt="a cat", guidance_scale=1.0, original_size=(64, 64), crops_coords_top_left=(4, 4),
             target_size=(32, 32)),
        dict(prompt="a cat", negative_original_size=(16, 16), negative_target_size=(32, 32), guidance_rescale=0.5),
    ],
    ids=["plain", "batch-nipp-negatives-clipskip", "no-cfg-microcond", "negative-microcond-rescale"],
)
def test_text2img_parity(sdxl_loaded, kwargs):
    ours, theirs = run_both(sdxl_loaded, "StableDiffusionXLPipeline", output_type="np", **SIZE, **kwargs)
    assert ours.images.shape[0] == theirs.images.shape[0]
    assert max_diff(ours.images, theirs.images) <= TOL


def test_text2img_output_types_and_tuple(sdxl_loaded):
    pipe = sdxl_loaded("ours", "StableDiffusionXLPipeline")
    pt = pipe(prompt="a cat", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0),
              **SIZE).images
    assert tuple(pt.shape) == (1, 3, 32, 32) and 0.0 <= float(pt.min()) and float(pt.max()) <= 1.0
    latent = pipe(prompt="a cat", num_inference_steps=2, output_type="latent",
                  generator=torch.Generator().manual_seed(0), **SIZE).images
    assert tuple(latent.shape) == (1, 4, 16, 16)
    (pil,) = pipe(prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  return_dict=False, **SIZE)
    assert pil[0].size == (32, 32)
    assert max_diff(pil, pt.permute(0, 2, 3, 1)) <= 1 / 255 + 1e-6


def test_prompt_embeds_path_matches_prompt(sdxl_loaded):
    pipe = sdxl_loaded("ours", "StableDiffusionXLPipeline")
    pe, npe, pooled, npooled = pipe.encode_prompt("a cat", negative_prompt="ugly")
    theirs = sdxl_loaded("theirs", "StableDiffusionXLPipeline").encode_prompt("a cat", negative_prompt="ugly")
    for a, b in zip((pe, npe, pooled, npooled), theirs):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5
    gen = torch.Generator
    a = pipe(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=pooled,
             negative_pooled_prompt_embeds=npooled, num_inference_steps=2, output_type="np",
             generator=gen().manual_seed(0), **SIZE).images
    b = pipe(prompt="a cat", negative_prompt="ugly", num_inference_steps=2, output_type="np",
             generator=gen().manual_seed(0), **SIZE).images
    assert max_diff(a, b) <= 1e-6


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_img2img_parity(sdxl_loaded, kind):
    ours, theirs = run_both(sdxl_loaded, "StableDiffusionXLImg2ImgPipeline", kind, prompt="a cat",
                            image=make_image(), strength=0.6, num_inference_steps=3, output_type="np")
    assert max_diff(ours.images, theirs.images) <= TOL


@pytest.mark.parametrize("strength", [0.9999, 0.6, 1.0])
def test_inpaint_parity(sdxl_loaded, strength):
    ours, theirs = run_both(sdxl_loaded, "StableDiffusionXLInpaintPipeline", prompt="a cat", image=make_image(),
                            mask_image=make_mask(), strength=strength, num_inference_steps=3, output_type="np",
                            **SIZE)
    assert max_diff(ours.images, theirs.images) <= TOL


def test_base_plus_refiner_parity(sdxl_loaded):
    """Base stops at denoising_end=0.5 and hands latents to the refiner starting at denoising_start=0.5."""
    results = {}
    for lib in ("theirs", "ours"):
        base = sdxl_loaded(lib, "StableDiffusionXLPipeline", "base")
        refiner = sdxl_loaded(lib, "StableDiffusionXLImg2ImgPipeline", "refiner")
        gen = torch.Generator().manual_seed(0)
        latents = base(prompt="a cat", num_inference_steps=4, denoising_end=0.5, output_type="latent",
                       generator=gen, **SIZE).images
        assert base.num_timesteps == 2
        image = refiner(prompt="a cat", image=latents, num_inference_steps=4, denoising_start=0.5,
                        output_type="np", generator=gen).images
        results[lib] = (latents, image)
    assert float((results["ours"][0] - results["theirs"][0]).abs().max()) <= TOL
    assert max_diff(results["ours"][1], results["theirs"][1]) <= TOL


def test_inpaint_denoising_start_end_parity(sdxl_loaded):
    results = {}
    for lib in ("theirs", "ours"):
        pipe = sdxl_loaded(lib, "StableDiffusionXLInpaintPipeline", "base")
        gen = torch.Generator().manual_seed(0)
        latents = pipe(prompt="a cat", image=make_image(), mask_image=make_mask(), num_inference_steps=4,
                       denoising_end=0.5, output_type="latent", generator=gen, **SIZE).images
        image = pipe(prompt="a cat", image=latents, mask_image=make_mask(), num_inference_steps=4,
                     denoising_start=0.5, output_type="np", generator=gen, **SIZE).images
        results[lib] = (latents, image)
    assert float((results["ours"][0] - results["theirs"][0]).abs().max()) <= TOL
    assert max_diff(results["ours"][1], results["theirs"][1]) <= TOL
