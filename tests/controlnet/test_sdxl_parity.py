"""Classic SDXL ControlNet pipelines give diffusers' images (tiny checkpoints written by diffusers)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.controlnet._helpers import assert_close, mask, rgb, run_both

CONTROL = rgb(11)
CONTROL2 = rgb(12)
IMAGE = rgb(13)


def test_text2img_single_batch(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetPipeline", prompt=["a cat", "a dog"],
                            negative_prompt=["bad", "ugly"], image=CONTROL)
    assert ours.shape == (2, 32, 32, 3)
    assert_close(ours, theirs)
    other, _ = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetPipeline", prompt=["a cat", "a dog"],
                        negative_prompt=["bad", "ugly"], image=CONTROL2)
    assert float(np.abs(other - ours).max()) > 1e-3


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(guess_mode=True, controlnet_conditioning_scale=0.7, num_images_per_prompt=2),
        dict(control_guidance_start=0.0, control_guidance_end=0.5, original_size=(64, 64)),
    ],
    ids=["guess+per-prompt", "window+micro-cond"],
)
def test_text2img_options(cn_loaded, kwargs):
    ours, theirs = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetPipeline", prompt="a cat",
                            image=CONTROL, **kwargs)
    assert_close(ours, theirs)


def test_text2img_multi(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetPipeline", multi=True, prompt="a cat",
                            image=[CONTROL, CONTROL2], controlnet_conditioning_scale=[0.4, 1.2],
                            control_guidance_end=[1.0, 0.5])
    assert_close(ours, theirs)


def test_img2img(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetImg2ImgPipeline", prompt="a cat",
                            image=IMAGE, control_image=CONTROL, strength=0.9)
    assert_close(ours, theirs)


def test_inpaint_multi_guess(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetInpaintPipeline", multi=True,
                            prompt="a cat", image=IMAGE, mask_image=mask(), control_image=[CONTROL, CONTROL2],
                            guess_mode=True, strength=0.9)
    assert_close(ours, theirs)


def test_callback_names_match_diffusers(cn_loaded):
    seen = {}

    def halve_control(pipe, i, t, tensors):
        seen.setdefault(type(pipe).__module__.split(".")[0], set()).update(tensors)
        return {"image": tensors["image"] * 0.5}

    names = ["latents", "add_text_embeds", "add_time_ids", "image"]
    ours, theirs = run_both(cn_loaded, "sdxl", "StableDiffusionXLControlNetPipeline", prompt="a cat", image=CONTROL,
                            callback_on_step_end=halve_control, callback_on_step_end_tensor_inputs=names)
    assert_close(ours, theirs)
    assert seen["diffblocks"] == seen["diffusers"] == set(names)


@pytest.mark.parametrize("cls_name, extra", [
    ("StableDiffusionXLControlNetPipeline", dict(image=CONTROL)),
    ("StableDiffusionXLControlNetInpaintPipeline", dict(image=IMAGE, mask_image=mask(), control_image=CONTROL,
                                                        strength=0.8)),
])
def test_guidance_window_with_denoising_end(cn_loaded, cls_name, extra):
    # diffusers measures the window on the schedule before `denoising_end` cuts it
    ours, theirs = run_both(cn_loaded, "sdxl", cls_name, prompt="a cat", num_inference_steps=6, denoising_end=0.6,
                            control_guidance_start=0.3, control_guidance_end=0.6, **extra)
    assert_close(ours, theirs)
