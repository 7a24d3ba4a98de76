"""Pixel parity with diffusers on tiny SD 1.x / 2.x / inpainting checkpoints written by diffusers."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

TOL = 1e-4
SIZE = dict(height=32, width=32)


def _lib(lib):
    if lib == "ours":
        import diffblocks as mod
    else:
        import diffusers as mod
    return mod


def make(loaded, lib, kind, cls_name, scheduler=None, **scheduler_overrides):
    """A pipeline of ``cls_name`` sharing the session pipeline's components, optionally with another scheduler."""
    mod = _lib(lib)
    base = loaded(lib, kind)
    components = dict(base.components)
    if scheduler is not None or scheduler_overrides:
        name = scheduler or type(base.scheduler).__name__
        components["scheduler"] = getattr(mod, name).from_config(base.scheduler.config, **scheduler_overrides)
    pipe = getattr(mod, cls_name)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _as_np(images):
    if isinstance(images, list) and isinstance(images[0], PIL.Image.Image):
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def run_both(loaded, kind, cls_name, scheduler=None, sched_kw=None, seed=0, gen_list=0, **kwargs):
    outs = {}
    for lib in ("theirs", "ours"):
        pipe = make(loaded, lib, kind, cls_name, scheduler, **(sched_kw or {}))
        if gen_list:
            gen = [torch.Generator().manual_seed(seed + k) for k in range(gen_list)]
        else:
            gen = torch.Generator().manual_seed(seed)
        outs[lib] = pipe(generator=gen, **kwargs)
    return outs["ours"], outs["theirs"]


def assert_close(ours, theirs, tol=TOL):
    a, b = _as_np(ours.images), _as_np(theirs.images)
    assert a.shape == b.shape
    diff = float(np.abs(a - b).max())
    assert diff <= tol, f"max abs diff {diff}"
    return diff


def test_text2img_np_batch_negative_pndm(loaded):
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionPipeline", prompt=["a red cat", "blue dog"], negative_prompt=["ugly", "bad"],
        num_inference_steps=2, output_type="np", **SIZE,
    )
    assert ours.images.shape == (2, 32, 32, 3)
    assert ours.nsfw_content_detected is None
    assert_close(ours, theirs)
    # the image depends on the prompt (the test can fail)
    assert float(np.abs(ours.images[0] - ours.images[1]).max()) > 1e-3


def test_text2img_pt_images_per_prompt_euler_ancestral(loaded):
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionPipeline", scheduler="EulerAncestralDiscreteScheduler",
        prompt="a photo", num_images_per_prompt=2, num_inference_steps=2, output_type="pt", **SIZE,
    )
    assert isinstance(ours.images, torch.Tensor) and ours.images.shape == (2, 3, 32, 32)
    assert_close(ours, theirs)


def _clip_skip_embeds(pipe, prompt, clip_skip):
    """Reference clip-skip embeddings (diffusers 0.42's own clip_skip path fails with transformers 5)."""
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        return pipe.text_encoder.final_layer_norm(hidden)


def test_text2img_pil_sd2_vpred_clip_skip_rescale(loaded):
    ours_pipe = make(loaded, "ours", "sd2", "StableDiffusionPipeline")
    theirs_pipe = make(loaded, "theirs", "sd2", "StableDiffusionPipeline")
    kw = dict(guidance_rescale=0.7, guidance_scale=5.0, num_inference_steps=2, output_type="pil", **SIZE)
    ours = ours_pipe(prompt="a castle", clip_skip=1, generator=torch.Generator().manual_seed(0), **kw)
    theirs = theirs_pipe(prompt_embeds=_clip_skip_embeds(theirs_pipe, "a castle", 1),
                         generator=torch.Generator().manual_seed(0), **kw)
    assert isinstance(ours.images[0], PIL.Image.Image) and ours.images[0].size == (32, 32)
    assert_close(ours, theirs, tol=1 / 255 + 1e-6)  # PIL rounds to 8 bits
    # clip_skip changes the result
    plain = ours_pipe(prompt="a castle", generator=torch.Generator().manual_seed(0), **kw)
    assert np.abs(_as_np(plain.images) - _as_np(ours.images)).max() > 1 / 255


def test_text2img_latent_and_tuple_and_generator_list(loaded):
    ours, theirs = run_both(
        loaded, "sd2", "StableDiffusionPipeline", scheduler="EulerDiscreteScheduler", prompt=["a", "b"],
        num_inference_steps=2, output_type="latent", return_dict=False, gen_list=2, **SIZE,
    )
    assert isinstance(ours, tuple) and ours[1] is None
    assert ours[0].shape == (2, 4, 16, 16)
    assert float((ours[0] - theirs[0]).abs().max()) <= TOL


def test_text2img_no_guidance_and_eta_ddim(loaded):
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionPipeline", scheduler="DDIMScheduler", prompt="x", guidance_scale=1.0, eta=0.7,
        num_inference_steps=3, output_type="np", **SIZE,
    )
    assert_close(ours, theirs)


def test_text2img_custom_sigmas_and_timesteps(loaded):
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionPipeline", scheduler="EulerDiscreteScheduler", prompt="x",
        sigmas=[14.6, 3.0, 0.5], output_type="np", **SIZE,
    )
    assert_close(ours, theirs)
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionPipeline", scheduler="DDPMScheduler", prompt="x",
        timesteps=[900, 500, 100], output_type="np", **SIZE,
    )
    assert_close(ours, theirs)


def test_text2img_prompt_embeds(loaded):
    ours_pipe = make(loaded, "ours", "sd", "StableDiffusionPipeline")
    theirs_pipe = make(loaded, "theirs", "sd", "StableDiffusionPipeline")
    pe, ne = theirs_pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="dog")
    pe2, ne2 = ours_pipe.encode_prompt("a cat", "cpu", 1, True, negative_prompt="dog")
    assert float((pe - pe2).abs().max()) == 0.0 and float((ne - ne2).abs().max()) == 0.0
    ours = ours_pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(1), **SIZE)
    theirs = theirs_pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(1), **SIZE)
    assert_close(ours, theirs)


def _image(seed=0, size=32):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _mask(size=32):
    arr = np.zeros((size, size), dtype=np.uint8)
    arr[8:24, 8:24] = 255
    return PIL.Image.fromarray(arr)


def test_img2img_strength_euler_ancestral(loaded):
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionImg2ImgPipeline", scheduler="EulerAncestralDiscreteScheduler",
        prompt=["a", "b"], image=_image(), strength=0.6, num_inference_steps=4, output_type="np",
    )
    assert ours.images.shape == (2, 32, 32, 3)
    assert_close(ours, theirs)


def test_img2img_sd2_generator_list_ddim_eta(loaded):
    ours, theirs = run_both(
        loaded, "sd2", "StableDiffusionImg2ImgPipeline", prompt="a", image=_image(1),
        num_images_per_prompt=2, strength=0.8, eta=0.3, num_inference_steps=3, output_type="pt", gen_list=2,
    )
    assert_close(ours, theirs)


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpaint_9_channel(loaded, strength):
    ours, theirs = run_both(
        loaded, "inpaint", "StableDiffusionInpaintPipeline", prompt="fill", image=_image(), mask_image=_mask(),
        strength=strength, num_inference_steps=4, output_type="np", negative_prompt="bad", **SIZE,
    )
    assert_close(ours, theirs)


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", "EulerAncestralDiscreteScheduler"])
def test_inpaint_4_channel(loaded, scheduler):
    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionInpaintPipeline", scheduler=scheduler, prompt=["fill", "it"],
        image=_image(3), mask_image=_mask(), strength=0.9, num_inference_steps=3, output_type="np", **SIZE,
    )
    assert_close(ours, theirs)


def test_callback_on_step_end_dynamic_cfg(loaded):
    """The diffusers docs' dynamic-CFG callback: drop guidance after the first step."""
    seen = {}

    def callback(pipe, i, t, tensors):
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append(tuple(tensors["prompt_embeds"].shape))
        if i == 0:
            pipe._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
        return tensors

    ours, theirs = run_both(
        loaded, "sd", "StableDiffusionPipeline", scheduler="EulerDiscreteScheduler", prompt="x",
        num_inference_steps=3, output_type="np", callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **SIZE,
    )
    assert seen["diffblocks"] == seen["diffusers"] == [(2, 77, 32), (1, 77, 32), (1, 77, 32)]
    assert_close(ours, theirs)


def test_interrupt_and_num_timesteps(loaded):
    pipe = make(loaded, "ours", "sd", "StableDiffusionPipeline")
    steps = []

    def callback(p, i, t, tensors):
        steps.append(i)
        if i == 1:
            p._interrupt = True
        return tensors

    pipe("x", num_inference_steps=4, output_type="latent", callback_on_step_end=callback, **SIZE)
    assert steps == [0, 1]
    assert pipe.num_timesteps == len(pipe.scheduler.timesteps) == 5 and pipe.interrupt is True  # PNDM: 4 steps, 5 t
    assert pipe.guidance_scale == 7.5 and pipe.do_classifier_free_guidance is True


def test_folder_round_trip_both_ways(loaded, tmp_path):
    import diffusers

    import diffblocks

    ours = loaded("ours", "sd")
    ours.save_pretrained(str(tmp_path / "ours"))
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(str(tmp_path / "ours"))
    theirs.set_progress_bar_config(disable=True)
    again = diffblocks.StableDiffusionPipeline.from_pretrained(str(tmp_path / "ours"))
    again.set_progress_bar_config(disable=True)
    kw = dict(prompt="a", num_inference_steps=2, output_type="np", **SIZE)
    a = again(generator=torch.Generator().manual_seed(0), **kw).images
    b = theirs(generator=torch.Generator().manual_seed(0), **kw).images
    assert float(np.abs(a - b).max()) <= TOL


def test_inpaint_padding_mask_crop_overlay(loaded):
    big = _image(5, size=48)
    arr = np.zeros((48, 48), dtype=np.uint8)
    arr[20:30, 14:26] = 255
    ours, theirs = run_both(
        loaded, "inpaint", "StableDiffusionInpaintPipeline", prompt="fill", image=big,
        mask_image=PIL.Image.fromarray(arr), padding_mask_crop=4, num_inference_steps=2, output_type="pil", **SIZE,
    )
    assert ours.images[0].size == (48, 48)  # pasted back onto the original image
    assert_close(ours, theirs, tol=1 / 255 + 1e-6)


def test_fp16_pipeline_decodes_with_upcast(loaded, sd_folders):
    import diffblocks

    half = diffblocks.StableDiffusionPipeline.from_pretrained(sd_folders["sd"], torch_dtype=torch.float16)
    half.set_progress_bar_config(disable=True)
    half.vae.register_to_config(force_upcast=True)
    kw = dict(prompt="a", num_inference_steps=2, output_type="np", **SIZE)
    ref = loaded("ours", "sd")(generator=torch.Generator().manual_seed(0), **kw).images
    got = half(generator=torch.Generator().manual_seed(0), **kw).images
    assert half.vae.dtype == torch.float16  # the VAE is back in fp16 after the float32 decode
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert float(np.abs(got - ref).max()) < 0.02
