"""Modular ControlNet: the presets and the auto blocks give the classic pipelines' images; block wiring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.controlnet._helpers import make, mask, rgb

CONTROL, CONTROL2, IMAGE = rgb(21), rgb(22), rgb(23)


def _modular(blocks, classic, guidance_scale):
    from diffblocks.guiders import ClassifierFreeGuidance

    pipe = blocks.init_pipeline()
    wanted = {n: v for n, v in classic.components.items() if n in pipe.component_names and v is not None}
    pipe.update_components(**wanted, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = [
    ("sd", "controlnet", "StableDiffusionControlNetPipeline", False,
     dict(prompt="a cat", image=CONTROL, guess_mode=True), dict(control_image=CONTROL, guess_mode=True)),
    ("sd", "controlnet_img2img", "StableDiffusionControlNetImg2ImgPipeline", True,
     dict(prompt="a cat", image=IMAGE, control_image=[CONTROL, CONTROL2], strength=0.9,
          controlnet_conditioning_scale=[0.5, 1.0]),
     dict(image=IMAGE, control_image=[CONTROL, CONTROL2], strength=0.9, controlnet_conditioning_scale=[0.5, 1.0])),
    ("sd", "controlnet_inpaint", "StableDiffusionControlNetInpaintPipeline", False,
     dict(prompt="a cat", image=IMAGE, mask_image=mask(), control_image=CONTROL, control_guidance_start=0.5),
     dict(image=IMAGE, mask_image=mask(), control_image=CONTROL, control_guidance_start=0.5,
          controlnet_conditioning_scale=0.5)),
    ("sdxl", "controlnet", "StableDiffusionXLControlNetPipeline", True,
     dict(prompt="a cat", image=[CONTROL, CONTROL2], control_guidance_end=[0.5, 1.0]),
     dict(control_image=[CONTROL, CONTROL2], control_guidance_end=[0.5, 1.0])),
    ("sdxl", "controlnet_img2img", "StableDiffusionXLControlNetImg2ImgPipeline", False,
     dict(prompt="a cat", image=IMAGE, control_image=CONTROL, strength=0.9),
     dict(image=IMAGE, control_image=CONTROL, strength=0.9, controlnet_conditioning_scale=0.8)),  # classic default
    ("sdxl", "controlnet_inpaint", "StableDiffusionXLControlNetInpaintPipeline", False,
     dict(prompt="a cat", image=IMAGE, mask_image=mask(), control_image=CONTROL, strength=0.9),
     dict(image=IMAGE, mask_image=mask(), control_image=CONTROL, strength=0.9)),
]


@pytest.mark.parametrize("kind, preset, cls_name, multi, classic_kw, modular_kw", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_preset_and_auto_match_classic(cn_loaded, kind, preset, cls_name, multi, classic_kw, modular_kw):
    from diffblocks.modular_pipelines import SequentialPipelineBlocks

    family = "stable_diffusion" if kind == "sd" else "stable_diffusion_xl"
    mod = __import__(f"diffblocks.modular_pipelines.{family}", fromlist=["ALL_BLOCKS"])
    classic = make(cn_loaded, "ours", kind, cls_name, multi=multi)
    gs = 7.5 if kind == "sd" else 5.0
    common = dict(num_inference_steps=2, output_type="np")
    ref = classic(generator=torch.Generator().manual_seed(0), **common, **classic_kw).images
    for blocks in (SequentialPipelineBlocks.from_blocks_dict(mod.ALL_BLOCKS[preset]),
                   SequentialPipelineBlocks.from_blocks_dict(mod.ALL_BLOCKS["auto"])):
        pipe = _modular(blocks, classic, gs)
        got = pipe(prompt="a cat", generator=torch.Generator().manual_seed(0), output="images", **common,
                   height=32, width=32, **modular_kw)
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) <= 1e-5


def test_auto_workflows_and_components():
    from diffblocks.modular_pipelines.stable_diffusion import StableDiffusionAutoBlocks
    from diffblocks.modular_pipelines.stable_diffusion_xl import StableDiffusionXLAutoBlocks

    for blocks, prefix in ((StableDiffusionAutoBlocks(), "StableDiffusion"),
                           (StableDiffusionXLAutoBlocks(), "StableDiffusionXL")):
        assert {"controlnet_text2image", "controlnet_image2image", "controlnet_inpainting"} <= set(
            blocks.available_workflows)
        names = [type(b).__name__ for b in blocks.get_workflow("controlnet_image2image").sub_blocks.values()]
        assert names[-3:] == [f"{prefix}ControlNetInputStep", f"{prefix}ControlNetDenoiseStep",
                              f"{prefix}DecodeStep"]
        inpaint = [type(b).__name__ for b in blocks.get_workflow("controlnet_inpainting").sub_blocks.values()]
        assert f"{prefix}InpaintControlNetDenoiseStep" in inpaint
        # without control_image the ControlNet branch is skipped
        plain = [type(b).__name__ for b in blocks.get_workflow("text2image").sub_blocks.values()]
        assert not any("ControlNet" in n for n in plain)
        specs = {s.name: s for s in blocks.expected_components}
        assert specs["controlnet"].type_hint.__name__ == "ControlNetModel"
        assert specs["control_image_processor"].default_creation_method == "from_config"
        assert {"control_image", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end",
                "guess_mode"} <= {p.name for p in blocks.inputs}


def test_sdxl_auto_pipeline_lists_controlnet_as_null(cn_folders):
    from diffblocks.modular_pipelines import ModularPipeline

    pipe = ModularPipeline.from_pretrained(cn_folders["sdxl"]["pipe"])
    assert "controlnet" in pipe.null_component_names
    pipe.load_components(names=["controlnet"])
    assert type(pipe.controlnet).__name__ == "ControlNetModel"
    assert "controlnet" not in pipe.null_component_names


def test_seed_modular_demo_auto_null_component_names():
    """The seed's "modular-demo-auto" pipeline: SDXL auto blocks with ControlNet and the IP-Adapter step 2nd."""
    from diffblocks.modular_pipelines.stable_diffusion_xl import StableDiffusionXLAutoBlocks

    blocks = StableDiffusionXLAutoBlocks()
    assert list(blocks.sub_blocks) == ["text_encoder", "ip_adapter", "vae_encoder", "denoise", "decode"]
    pipe = blocks.init_pipeline()
    assert pipe.null_component_names == ['text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2',
                                         'image_encoder', 'unet', 'vae', 'scheduler', 'controlnet']
