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
        call = {"num_inference_steps": 2, **kwargs}
        outs[lib] = pipe(generator=torch.Generator().manual_seed(seed), **call)
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


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpaint_9_channel_unet_parity(sdxl_loaded, strength):
    ours, theirs = run_both(sdxl_loaded, "StableDiffusionXLInpaintPipeline", "inpaint9", prompt="a cat",
                            image=make_image(), mask_image=make_mask(), strength=strength, num_inference_steps=3,
                            output_type="np", **SIZE)
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


def test_autopipeline_rows_and_round_trip(sdxl_folders, tmp_path):
    import diffusers

    import diffblocks

    assert type(diffblocks.AutoPipelineForText2Image.from_pretrained(sdxl_folders["base"])).__name__ == \
        "StableDiffusionXLPipeline"
    assert type(diffblocks.AutoPipelineForInpainting.from_pretrained(sdxl_folders["base"])).__name__ == \
        "StableDiffusionXLInpaintPipeline"
    refiner = diffblocks.AutoPipelineForImage2Image.from_pretrained(sdxl_folders["refiner"])
    assert type(refiner).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert refiner.config.requires_aesthetics_score is True and refiner.text_encoder is None
    refiner.save_pretrained(str(tmp_path / "saved"))
    theirs = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(str(tmp_path / "saved"))
    assert theirs.config.requires_aesthetics_score is True and theirs.text_encoder is None


def test_modular_matches_diffusers_modular(sdxl_folders):
    """Our StableDiffusionXLAutoBlocks pipeline and diffusers' on the same folder: same image."""
    import logging

    import diffusers.modular_pipelines as theirs_mod

    import diffblocks.modular_pipelines as ours_mod

    outs = {}
    for name, mod in (("ours", ours_mod), ("theirs", theirs_mod)):
        logging.disable(logging.ERROR)  # diffusers logs a failed (unused) image_encoder lookup
        try:
            pipe = mod.StableDiffusionXLAutoBlocks().init_pipeline(sdxl_folders["base"])
            pipe.load_components(torch_dtype=torch.float32)
        finally:
            logging.disable(logging.NOTSET)
        outs[name] = pipe(prompt="a cat", negative_prompt="ugly", num_inference_steps=2, output_type="np",
                          generator=torch.Generator().manual_seed(0), output="images", **SIZE)
    assert max_diff(outs["ours"], outs["theirs"]) <= TOL


def test_fp16_vae_force_upcast_img2img_parity(sdxl_folders):
    """An fp16 VAE with `force_upcast` encodes and decodes in float32 (fresh pipelines: the VAE dtype changes)."""
    import diffusers

    import diffblocks

    outs = {}
    for name, mod in (("ours", diffblocks), ("theirs", diffusers)):
        pipe = mod.StableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl_folders["base"])
        pipe.set_progress_bar_config(disable=True)
        assert pipe.vae.config.force_upcast
        pipe.vae.to(torch.float16)
        outs[name] = pipe(prompt="a cat", image=make_image(), strength=0.6, num_inference_steps=3,
                          output_type="np", generator=torch.Generator().manual_seed(0)).images
        if name == "ours":
            assert pipe.vae.dtype == torch.float16  # restored after the float32 encode/decode
    assert max_diff(outs["ours"], outs["theirs"]) <= TOL
