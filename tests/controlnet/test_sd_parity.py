"""Classic SD 1.x ControlNet pipelines give diffusers' images (tiny checkpoints written by diffusers)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.controlnet._helpers import assert_close, mask, rgb, run_both

CONTROL = rgb(1)
CONTROL2 = rgb(2)
IMAGE = rgb(3)


def test_text2img_single(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetPipeline", prompt=["a cat", "a dog"],
                            negative_prompt=["bad", "ugly"], image=CONTROL)
    assert ours.shape == (2, 32, 32, 3)
    assert_close(ours, theirs)
    # the control image matters (the comparison can fail)
    other, _ = run_both(cn_loaded, "sd", "StableDiffusionControlNetPipeline", prompt=["a cat", "a dog"],
                        negative_prompt=["bad", "ugly"], image=CONTROL2)
    assert float(np.abs(other - ours).max()) > 1e-3


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(guess_mode=True, controlnet_conditioning_scale=0.7),
        dict(control_guidance_start=0.5, control_guidance_end=1.0, num_images_per_prompt=2),
        dict(guidance_scale=1.0, guess_mode=True),
    ],
    ids=["guess", "window+per-prompt", "no-cfg-guess"],
)
def test_text2img_options(cn_loaded, kwargs):
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetPipeline", prompt="a cat", image=CONTROL,
                            **kwargs)
    assert_close(ours, theirs)


def test_text2img_multi_list_scales_and_window(cn_loaded):
    ours, theirs = run_both(
        cn_loaded, "sd", "StableDiffusionControlNetPipeline", multi=True, prompt="a cat", image=[CONTROL, CONTROL2],
        controlnet_conditioning_scale=[0.5, 1.5], control_guidance_start=[0.0, 0.5], control_guidance_end=[0.5, 1.0],
    )
    assert_close(ours, theirs)


def test_text2img_size_follows_control_image(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetPipeline", prompt="a cat",
                            image=rgb(4, size=24))
    assert ours.shape == (1, 24, 24, 3)
    assert_close(ours, theirs)


def test_img2img_single_and_multi(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetImg2ImgPipeline", prompt="a cat",
                            image=IMAGE, control_image=CONTROL, strength=0.9)
    assert_close(ours, theirs)
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetImg2ImgPipeline", multi=True,
                            prompt="a cat", image=IMAGE, control_image=[CONTROL, CONTROL2], guess_mode=True,
                            controlnet_conditioning_scale=0.6)
    assert_close(ours, theirs)


@pytest.mark.parametrize("unet9", [False, True], ids=["4ch", "9ch"])
def test_inpaint(cn_loaded, unet9):
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetInpaintPipeline", unet9=unet9,
                            prompt="a cat", image=IMAGE, mask_image=mask(), control_image=CONTROL, strength=0.9)
    assert_close(ours, theirs)


def test_inpaint_multi(cn_loaded):
    ours, theirs = run_both(cn_loaded, "sd", "StableDiffusionControlNetInpaintPipeline", multi=True,
                            prompt="a cat", image=IMAGE, mask_image=mask(), control_image=[CONTROL, CONTROL2],
                            controlnet_conditioning_scale=[0.3, 0.9])
    assert_close(ours, theirs)


@pytest.mark.parametrize("cls_name, name, extra", [
    ("StableDiffusionControlNetPipeline", "image", dict(image=CONTROL)),
    ("StableDiffusionControlNetImg2ImgPipeline", "control_image", dict(image=IMAGE, control_image=CONTROL)),
])
def test_callback_sees_and_replaces_the_control_image(cn_loaded, cls_name, name, extra):
    seen = []

    def blank_control(pipe, i, t, tensors):
        seen.append(tuple(tensors[name].shape))
        return {name: tensors[name] * 0.0, "latents": tensors["latents"]}

    kw = dict(prompt="a cat", num_inference_steps=3, callback_on_step_end=blank_control,
              callback_on_step_end_tensor_inputs=["latents", name], **extra)
    ours, theirs = run_both(cn_loaded, "sd", cls_name, **kw)
    parity = assert_close(ours, theirs)
    # ours hands out one row per image (diffusers' tensor, seen first, is doubled for guidance)
    half = len(seen) // 2
    assert half >= 3 and seen == [(2, 3, 32, 32)] * half + [(1, 3, 32, 32)] * half
    untouched, _ = run_both(cn_loaded, "sd", cls_name, prompt="a cat", num_inference_steps=3, **extra)
    effect = float(np.abs(untouched - ours).max())
    assert effect > 1e-4 and effect > 20 * parity


def test_inpaint_padding_mask_crop(cn_loaded):
    from tests.controlnet._helpers import as_np, make

    import torch

    small = np.zeros((32, 32), dtype=np.uint8)
    small[4:12, 6:14] = 255
    import PIL.Image

    kw = dict(prompt="a cat", image=IMAGE, mask_image=PIL.Image.fromarray(small), control_image=CONTROL,
              padding_mask_crop=2, num_inference_steps=2, output_type="pil")
    out = {}
    for which in ("theirs", "ours"):
        pipe = make(cn_loaded, which, "sd", "StableDiffusionControlNetInpaintPipeline")
        out[which] = as_np(pipe(generator=torch.Generator().manual_seed(0), **kw).images)
    assert out["ours"].shape == (1, 32, 32, 3)
    # PIL output rounds to 1/255: allow one step
    assert float(np.abs(out["ours"] - out["theirs"]).max()) <= 1.0 / 255 + 1e-6


def test_global_pool_conditions_forces_guess_mode_like_diffusers(cn_loaded):
    # a ControlNet whose config says global_pool_conditions runs in guess mode even when guess_mode=False
    import copy

    import torch

    from tests.controlnet._helpers import as_np, make

    out = {}
    for which in ("theirs", "ours"):
        pipe = make(cn_loaded, which, "sd", "StableDiffusionControlNetPipeline")
        kwargs = dict(prompt="a cat", image=CONTROL, num_inference_steps=2, output_type="np")
        plain = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
        pooled_net = copy.deepcopy(pipe.controlnet)
        pooled_net.register_to_config(global_pool_conditions=True)
        pipe.controlnet = pooled_net
        pooled = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
        out[which] = (as_np(plain), as_np(pooled))
    ours, theirs = out["ours"], out["theirs"]
    assert_close(ours[1], theirs[1])
    assert np.abs(ours[1] - ours[0]).max() > 1e-4  # not the non-guess-mode image
