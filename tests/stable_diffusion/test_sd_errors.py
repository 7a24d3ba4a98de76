"""Argument errors of the classic SD pipelines (messages as diffusers words them), construction checks."""
from __future__ import annotations

import re

import numpy as np
import PIL.Image
import pytest
import torch

SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def pipes(loaded):
    import diffblocks

    base = loaded("ours", "sd")
    return {
        "t2i": base,
        "i2i": diffblocks.StableDiffusionImg2ImgPipeline(**base.components),
        "inp": diffblocks.StableDiffusionInpaintPipeline(**base.components),
    }


IMAGE = PIL.Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(prompt="a", height=30, width=32), ValueError,
         "`height` and `width` have to be divisible by 8 but are 30 and 32."),
        (dict(prompt="a", prompt_embeds=torch.zeros(1, 77, 32)), ValueError, "Cannot forward both `prompt`: a and"),
        (dict(), ValueError, "Provide either `prompt` or `prompt_embeds`. Cannot leave both"),
        (dict(prompt=3), ValueError, "`prompt` has to be of type `str` or `list` but is <class 'int'>"),
        (dict(prompt="a", negative_prompt="b", negative_prompt_embeds=torch.zeros(1, 77, 32)), ValueError,
         "Cannot forward both `negative_prompt`: b and `negative_prompt_embeds`"),
        (dict(prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(2, 77, 32)), ValueError,
         "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly"),
        (dict(prompt="a", output_type="jpg"), ValueError, "`output_type` must be one of ['pil', 'np', 'pt', 'latent'], got 'jpg'"),
        (dict(prompt="a", callback_on_step_end_tensor_inputs=["latents", "noise"]), ValueError,
         "`callback_on_step_end_tensor_inputs` has to be in ['latents', 'prompt_embeds', 'negative_prompt_embeds'], "
         "but found ['noise']"),
        (dict(prompt="a", num_inference_steps=0), ValueError, "`num_inference_steps` must be a positive integer, got 0"),
        (dict(prompt="a", timesteps=[10], sigmas=[1.0]), ValueError, "Only one of `timesteps` or `sigmas` can be passed"),
        (dict(prompt=["a", "b"], generator=[torch.Generator()]), ValueError,
         "You have passed a list of generators of length 1, but requested an effective batch size of 2"),
        (dict(prompt=["a", "b"], negative_prompt="c"), TypeError,
         "`negative_prompt` should be the same type to `prompt`, but got <class 'str'> != <class 'list'>."),
        (dict(prompt=["a", "b"], negative_prompt=["c"]), ValueError,
         "`negative_prompt`: ['c'] has batch size 1, but `prompt`: ['a', 'b'] has batch size 2."),
        (dict(prompt="a", unknown_arg=1), TypeError, "unexpected keyword argument(s) ['unknown_arg']"),
    ],
)
def test_text2img_errors(pipes, kwargs, error, message):
    kwargs = {**SIZE, **kwargs} if "height" not in kwargs else kwargs
    with pytest.raises(error, match=re.escape(message)):
        pipes["t2i"](num_inference_steps=kwargs.pop("num_inference_steps", 1), output_type=kwargs.pop(
            "output_type", "latent"), **kwargs)


def test_custom_timesteps_need_scheduler_support(pipes):
    with pytest.raises(ValueError, match=re.escape("`set_timesteps` does not support custom timestep schedules")):
        pipes["t2i"]("a", timesteps=[900, 100], output_type="latent", **SIZE)  # PNDM has no custom timesteps


@pytest.mark.parametrize("strength", [1.5, -0.1])
def test_strength_outside_unit_interval(pipes, strength):
    for name in ("i2i", "inp"):
        extra = {"mask_image": IMAGE} if name == "inp" else {}
        with pytest.raises(ValueError, match=re.escape(f"The value of strength should in [0.0, 1.0] but is {strength}")):
            pipes[name]("a", image=IMAGE, strength=strength, output_type="latent", **extra)


def test_strength_too_small_for_steps(pipes):
    with pytest.raises(ValueError, match="the number of pipeline"):
        pipes["i2i"]("a", image=IMAGE, strength=0.1, num_inference_steps=2, output_type="latent")


def test_inpaint_padding_mask_crop_needs_pil_and_pil_output(pipes):
    with pytest.raises(ValueError, match="The image should be a PIL image when inpainting mask crop"):
        pipes["inp"]("a", image=np.zeros((32, 32, 3)), mask_image=IMAGE, padding_mask_crop=4, **SIZE)
    with pytest.raises(ValueError, match="The output type should be PIL when inpainting mask crop, but is np"):
        pipes["inp"]("a", image=IMAGE, mask_image=IMAGE, padding_mask_crop=4, output_type="np", **SIZE)


def test_missing_images(pipes):
    with pytest.raises(ValueError, match="`image` input cannot be undefined."):
        pipes["i2i"]("a")
    with pytest.raises(ValueError, match="`mask_image` input cannot be undefined."):
        pipes["inp"]("a", image=IMAGE)


def test_constructor_checks_and_legacy_scheduler_config(pipes, caplog):
    import diffblocks

    components = dict(pipes["t2i"].components)
    with pytest.raises(ValueError, match="Make sure to define a feature extractor"):
        diffblocks.StableDiffusionPipeline(**{**components, "safety_checker": object(), "feature_extractor": None})
    old = diffblocks.PNDMScheduler.from_config(components["scheduler"].config, steps_offset=0)
    with pytest.warns(FutureWarning, match="steps_offset"):
        pipe = diffblocks.StableDiffusionPipeline(**{**components, "scheduler": old})
    assert pipe.scheduler.config.steps_offset == 1
    with caplog.at_level("WARNING"):
        diffblocks.StableDiffusionPipeline(**{**components, "requires_safety_checker": True})
    assert "You have disabled the safety checker" in caplog.text
    assert pipe.vae_scale_factor == 2 and pipe.default_height == 64


def test_legacy_callback_and_inpaint_callback_tensors(pipes):
    seen = []
    with pytest.warns(FutureWarning, match="callback_on_step_end"):
        pipes["t2i"]("a", num_inference_steps=2, output_type="latent", callback=lambda i, t, lat: seen.append(
            (i, tuple(lat.shape))), callback_steps=1, **SIZE)
    assert seen == [(0, (1, 4, 16, 16)), (1, (1, 4, 16, 16)), (2, (1, 4, 16, 16))]  # PNDM: 3 timesteps
    got = {}

    def on_step(pipe, i, t, tensors):
        got.update({k: None if v is None else tuple(v.shape) for k, v in tensors.items()})
        return {}

    pipes["inp"]("a", image=IMAGE, mask_image=IMAGE, num_inference_steps=1, output_type="latent",
                 callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents", "mask",
                                                                                   "masked_image_latents"], **SIZE)
    # a 4-channel UNet never uses masked-image latents, so they are not computed (diffusers encodes them anyway)
    assert got == {"latents": (1, 4, 16, 16), "mask": (1, 1, 16, 16), "masked_image_latents": None}
