"""Modular SDXL: the seed's practical example end to end, split workflow == classic pipeline, presets, auto
blocks and workflows, refiner reuse through a ComponentsManager."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from .conftest import make_image, make_mask, max_diff

SIZE = dict(height=32, width=32)


def test_seed_practical_example(modular_repos, sdxl_folders, tmp_path):
    """components_manager.md "Practical Example" with diffblocks imports, local folders for the repos, CPU
    instead of CUDA, 2-3 steps and 32x32 images; LoRA steps left out."""
    # --- seed code (imports changed) ---------------------------------------------------------------------------
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion_xl import ALL_BLOCKS

    t2i_blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    text_blocks = t2i_blocks.sub_blocks.pop("text_encoder")
    decoder_blocks = t2i_blocks.sub_blocks.pop("decode")

    from diffblocks import ComponentsManager, ModularPipeline

    components = ComponentsManager()
    components.enable_auto_cpu_offload(device="cpu")
    t2i_repo = modular_repos["t2i"]
    t2i_loader_pipe = ModularPipeline.from_pretrained(t2i_repo, components_manager=components, collection="t2i")
    text_node = text_blocks.init_pipeline(t2i_repo, components_manager=components)
    decoder_node = decoder_blocks.init_pipeline(t2i_repo, components_manager=components)
    t2i_pipe = t2i_blocks.init_pipeline(t2i_repo, components_manager=components)

    t2i_loader_pipe.load_default_components(torch_dtype=torch.float32)

    vae = components.get_one(load_id=f"{sdxl_folders['base']}|vae|null|null")
    decoder_node.update_components(vae=vae)
    text_components = components.get_components_by_names(text_node.null_component_names)
    text_node.update_components(**text_components)
    t2i_components = components.get_components_by_names(t2i_pipe.null_component_names)
    t2i_pipe.update_components(**t2i_components)

    prompt = "an astronaut"
    text_embeddings = text_node(prompt=prompt, output=["prompt_embeds", "negative_prompt_embeds",
                                                       "pooled_prompt_embeds", "negative_pooled_prompt_embeds"])
    generator = torch.Generator(device="cpu").manual_seed(0)
    latents_t2i = t2i_pipe(**text_embeddings, num_inference_steps=3, generator=generator, output="latents", **SIZE)
    image = decoder_node(latents=latents_t2i, output="images")[0]
    image.save(str(tmp_path / "modular_part2_t2i.png"))

    refiner_blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["img2img"])
    refiner_blocks.sub_blocks.pop("image_encoder")
    refiner_blocks.sub_blocks.pop("decode")
    refiner_repo = modular_repos["refiner"]
    refiner_pipe = refiner_blocks.init_pipeline(refiner_repo, components_manager=components, collection="refiner")
    refiner_pipe.load_components(names="unet", torch_dtype=torch.float32)
    reuse_components = components.search_components("text_encoder_2|scheduler|vae|tokenizer_2")
    refiner_pipe.update_components(**reuse_components)
    refined_latents = refiner_pipe(image_latents=latents_t2i, prompt=prompt, num_inference_steps=10,
                                   output="latents")
    refined_image = decoder_node(latents=refined_latents, output="images")[0]
    refined_image.save(str(tmp_path / "modular_part2_t2i_refine_out.png"))
    # --- checks --------------------------------------------------------------------------------------------------
    assert sorted(text_embeddings) == ["negative_pooled_prompt_embeds", "negative_prompt_embeds",
                                       "pooled_prompt_embeds", "prompt_embeds"]
    assert tuple(text_embeddings["prompt_embeds"].shape[:2]) == (1, 77)
    # force_zeros_for_empty_prompt: no negative prompt -> zero negatives
    assert float(text_embeddings["negative_prompt_embeds"].abs().max()) == 0.0
    assert tuple(latents_t2i.shape) == (1, 4, 16, 16)
    assert image.size == (32, 32) and refined_image.size == (32, 32)
    assert not torch.equal(refined_latents, latents_t2i)
    assert os.path.exists(tmp_path / "modular_part2_t2i_refine_out.png")
    # the refiner got its own UNet (aesthetic-score conditioning) and shares the rest with the t2i collection
    assert refiner_pipe.unet is not t2i_pipe.unet
    assert refiner_pipe.scheduler is t2i_pipe.scheduler and refiner_pipe.text_encoder_2 is text_node.text_encoder_2
    assert refiner_pipe.text_encoder is None
    assert refiner_pipe.config.requires_aesthetics_score is True
    assert refiner_pipe.unet.config.projection_class_embeddings_input_dim != t2i_pipe.unet.config.projection_class_embeddings_input_dim
    # same inputs twice give the same image (manager offload is deterministic)
    again = t2i_pipe(**text_embeddings, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                     output="latents", **SIZE)
    assert torch.equal(again, latents_t2i)


def _modular_auto(repo):
    from diffblocks.modular_pipelines import StableDiffusionXLAutoBlocks

    pipe = StableDiffusionXLAutoBlocks().init_pipeline(repo)
    pipe.load_components(torch_dtype=torch.float32)
    return pipe


def test_split_workflow_matches_classic(modular_repos, sdxl_loaded):
    """text_encoder popped out, its denoiser_input_fields fed to the rest: the classic pipeline's image."""
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion_xl import ALL_BLOCKS

    blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    text = blocks.sub_blocks.pop("text_encoder").init_pipeline(modular_repos["t2i"])
    text.load_components(torch_dtype=torch.float32)
    rest = blocks.init_pipeline(modular_repos["t2i"])
    rest.load_components(torch_dtype=torch.float32)
    state = text(prompt="a cat", negative_prompt="ugly")
    embeds = state.get_by_kwargs("denoiser_input_fields")
    assert set(embeds) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                           "negative_pooled_prompt_embeds"}
    modular = rest(**embeds, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np",
                   output="images", **SIZE)
    classic = sdxl_loaded("ours", "StableDiffusionXLPipeline")(
        prompt="a cat", negative_prompt="ugly", guidance_scale=7.5, num_inference_steps=3, output_type="np",
        generator=torch.Generator().manual_seed(0), **SIZE).images
    assert max_diff(modular, classic) <= 1e-6
    theirs = sdxl_loaded("theirs", "StableDiffusionXLPipeline")(
        prompt="a cat", negative_prompt="ugly", guidance_scale=7.5, num_inference_steps=3, output_type="np",
        generator=torch.Generator().manual_seed(0), **SIZE).images
    assert max_diff(modular, theirs) <= 1e-4


@pytest.mark.parametrize("task", ["text2image", "image2image", "inpainting"])
def test_auto_blocks_match_classic(modular_repos, sdxl_loaded, task):
    pipe = _modular_auto(modular_repos["t2i"])
    common = dict(prompt="a cat", num_inference_steps=3, output_type="np", **(SIZE if task != "image2image" else {}))
    if task == "text2image":
        extra, cls = {}, "StableDiffusionXLPipeline"
    elif task == "image2image":
        extra, cls = dict(image=make_image(), strength=0.6), "StableDiffusionXLImg2ImgPipeline"
    else:
        extra, cls = dict(image=make_image(), mask_image=make_mask(), strength=0.9999), "StableDiffusionXLInpaintPipeline"
    out = pipe(**common, **extra, generator=torch.Generator().manual_seed(0), output="images")
    classic = sdxl_loaded("ours", cls)(**common, **extra, guidance_scale=7.5,
                                        generator=torch.Generator().manual_seed(0)).images
    assert max_diff(out, classic) <= 1e-6


def test_workflows_resolve_to_expected_blocks():
    from diffblocks.modular_pipelines import StableDiffusionXLAutoBlocks

    blocks = StableDiffusionXLAutoBlocks()
    t2i = blocks.get_workflow("text2image")
    assert [(n, type(b).__name__) for n, b in t2i.sub_blocks.items()] == [
        ("text_encoder", "StableDiffusionXLTextEncoderStep"),
        ("denoise.input", "StableDiffusionXLInputStep"),
        ("denoise.before_denoise.set_timesteps", "StableDiffusionXLSetTimestepsStep"),
        ("denoise.before_denoise.prepare_latents", "StableDiffusionXLPrepareLatentsStep"),
        ("denoise.before_denoise.prepare_add_cond", "StableDiffusionXLPrepareAdditionalConditioningStep"),
        ("denoise.denoise", "StableDiffusionXLDenoiseStep"),
        ("decode", "StableDiffusionXLDecodeStep"),
    ]
    inpaint = dict((n, type(b).__name__) for n, b in blocks.get_workflow("inpainting").sub_blocks.items())
    assert inpaint["vae_encoder"] == "StableDiffusionXLInpaintVaeEncoderStep"
    assert inpaint["denoise.denoise"] == "StableDiffusionXLInpaintDenoiseStep"
    assert inpaint["decode"] == "StableDiffusionXLDecodeStep"
    i2i = dict((n, type(b).__name__) for n, b in blocks.get_workflow("image2image").sub_blocks.items())
    assert i2i["vae_encoder"] == "StableDiffusionXLVaeEncoderStep"
    assert i2i["denoise.before_denoise.prepare_add_cond"] == "StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep"
    with pytest.raises(ValueError, match="Available workflows"):
        blocks.get_workflow("nope")


def test_presets_are_classes_and_not_mutated():
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion_xl import ALL_BLOCKS

    assert set(ALL_BLOCKS) == {"text2img", "img2img", "inpaint", "controlnet", "controlnet_img2img",
                               "controlnet_inpaint", "ip_adapter", "auto"}
    assert list(ALL_BLOCKS["img2img"])[:2] == ["text_encoder", "image_encoder"]
    for preset in ALL_BLOCKS.values():
        assert all(isinstance(v, type) for v in preset.values())
    before = list(ALL_BLOCKS["text2img"])
    blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    blocks.sub_blocks.pop("text_encoder")
    assert list(ALL_BLOCKS["text2img"]) == before


def test_modular_pipeline_properties(modular_repos):
    from diffblocks.modular_pipelines import ModularPipeline, StableDiffusionXLModularPipeline

    pipe = ModularPipeline.from_pretrained(modular_repos["refiner"])
    assert isinstance(pipe, StableDiffusionXLModularPipeline)
    # before loading: the documented fallbacks
    assert (pipe.default_sample_size, pipe.vae_scale_factor, pipe.num_channels_unet, pipe.num_channels_latents) == (
        128, 8, 4, 4)
    assert pipe.requires_aesthetics_score is True and pipe.force_zeros_for_empty_prompt is False
    pipe.load_components(torch_dtype=torch.float32)
    assert (pipe.default_sample_size, pipe.vae_scale_factor, pipe.default_height) == (32, 2, 64)


def test_guider_scale_changes_output(modular_repos):
    from diffblocks.guiders import ClassifierFreeGuidance

    pipe = _modular_auto(modular_repos["t2i"])
    kw = dict(prompt="a cat", num_inference_steps=2, output_type="pt", output="images", **SIZE)
    a = pipe(**kw, generator=torch.Generator().manual_seed(0))
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))
    b = pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (1, 3, 32, 32)
    assert float((a - b).abs().max()) > 1e-2


def test_errors(modular_repos, sdxl_loaded):
    pipe = sdxl_loaded("ours", "StableDiffusionXLPipeline")
    with pytest.raises(ValueError, match="divisible by 8"):
        pipe(prompt="a", height=30, width=32)
    with pytest.raises(ValueError, match="Provide either `prompt` or `prompt_embeds`"):
        pipe(height=32, width=32)
    with pytest.raises(ValueError, match="`pooled_prompt_embeds` also have to be passed"):
        pipe(prompt_embeds=torch.zeros(1, 77, 64), **SIZE)
    with pytest.raises(ValueError, match="cannot be larger than or equal to `denoising_end`"):
        sdxl_loaded("ours", "StableDiffusionXLImg2ImgPipeline")(prompt="a", image=make_image(),
                                                               denoising_start=0.6, denoising_end=0.4)
    with pytest.raises(ValueError, match=r"strength should in \[0.0, 1.0\]"):
        sdxl_loaded("ours", "StableDiffusionXLImg2ImgPipeline")(prompt="a", image=make_image(), strength=1.5)
    with pytest.raises(ValueError, match="`output_type` must be one of"):
        pipe(prompt="a", output_type="jpeg", **SIZE)
    with pytest.raises(ValueError, match="`callback_on_step_end_tensor_inputs` has to be in"):
        pipe(prompt="a", callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["foo"], **SIZE)
    # base UNet in the img2img pipeline with aesthetic scores switched on: the add-embedding size does not fit
    refiner_style = sdxl_loaded("ours", "StableDiffusionXLImg2ImgPipeline", "base")
    refiner_style.register_to_config(requires_aesthetics_score=True)
    try:
        with pytest.raises(ValueError, match="expects an added time embedding vector of length 80, but a vector of 72"):
            refiner_style(prompt="a", image=make_image(), num_inference_steps=2, strength=0.6)
    finally:
        refiner_style.register_to_config(requires_aesthetics_score=False)


def test_callback_sees_and_edits_latents(sdxl_loaded):
    pipe = sdxl_loaded("ours", "StableDiffusionXLPipeline")
    seen = []

    def cb(p, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape), tuple(tensors["add_text_embeds"].shape)))
        return {"latents": tensors["latents"] * 0}

    out = pipe(prompt="a cat", num_inference_steps=2, output_type="latent", callback_on_step_end=cb,
               callback_on_step_end_tensor_inputs=["latents", "add_text_embeds"], **SIZE).images
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] == (1, 4, 16, 16) and seen[0][2][0] == 1
    assert float(out.abs().max()) == 0.0
