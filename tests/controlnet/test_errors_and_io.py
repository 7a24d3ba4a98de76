"""ControlNet argument errors, save_pretrained read back by diffusers, MultiControlNet wrapping, AutoPipeline rows."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.controlnet._helpers import TOL, as_np, make, mask, rgb

CONTROL, CONTROL2, IMAGE = rgb(31), rgb(32), rgb(33)


@pytest.fixture(scope="module")
def sd_multi(cn_loaded):
    return make(cn_loaded, "ours", "sd", "StableDiffusionControlNetPipeline", multi=True)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(image=[CONTROL]), ValueError, "must have the same length as the number of controlnets, but got 1 images"),
        (dict(image=CONTROL), TypeError, "For multiple controlnets: `image` must be type `list`"),
        (dict(image=[CONTROL, CONTROL2], controlnet_conditioning_scale=[1.0, 0.5, 0.2]), ValueError,
         "same length as the number of controlnets \\(2\\), got 3 values"),
        (dict(image=[CONTROL, CONTROL2], control_guidance_start=[0.0, 0.1, 0.2]), ValueError,
         "`control_guidance_start`: \\[0.0, 0.1, 0.2\\] has 3 elements but there are 2 controlnets"),
        (dict(image=[CONTROL, CONTROL2], control_guidance_start=[0.0, 0.1], control_guidance_end=[1.0]),
         ValueError, "`control_guidance_start` has 2 elements, but `control_guidance_end` has 1 elements"),
        (dict(image=[CONTROL, CONTROL2], control_guidance_start=0.6, control_guidance_end=0.6), ValueError,
         "control guidance start: 0.6 cannot be larger or equal to control guidance end: 0.6"),
        (dict(image=[CONTROL, CONTROL2], control_guidance_end=1.5), ValueError,
         "control guidance end: 1.5 can't be larger than 1.0"),
        (dict(image=[[CONTROL, CONTROL2, CONTROL]]), ValueError,
         "each sublist must have the same length as the number of controlnets, but the sublists in `image` got 3"),
        (dict(image=[[CONTROL, CONTROL2], [CONTROL, CONTROL2]]), ValueError,
         "`image` batch size: 2, prompt batch size: 1"),
    ],
)
def test_multi_errors_name_the_argument(sd_multi, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        sd_multi(prompt="a cat", num_inference_steps=1, **kwargs)


def test_single_errors(cn_loaded):
    pipe = cn_loaded("ours", "sd")
    with pytest.raises(TypeError, match="For single controlnet: `controlnet_conditioning_scale` must be type"):
        pipe(prompt="a cat", image=CONTROL, controlnet_conditioning_scale=[0.5], num_inference_steps=1)
    with pytest.raises(TypeError, match="`image` must be a PIL image, numpy array, torch tensor"):
        pipe(prompt="a cat", image="not an image", num_inference_steps=1)
    with pytest.raises(ValueError, match="`image` .*the ControlNet conditioning image"):
        pipe(prompt="a cat", num_inference_steps=1)
    with pytest.raises(ValueError, match="control guidance start: -0.1 can't be smaller than 0"):
        pipe(prompt="a cat", image=CONTROL, control_guidance_start=-0.1, num_inference_steps=1)
    img2img = make(cn_loaded, "ours", "sd", "StableDiffusionControlNetImg2ImgPipeline")
    with pytest.raises(ValueError, match="`control_image` batch size: 3, prompt batch size: 2"):
        img2img(prompt=["a", "b"], image=IMAGE, control_image=[CONTROL] * 3, num_inference_steps=1)


def test_modular_input_step_checks_too(cn_loaded):
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion import ALL_BLOCKS

    classic = make(cn_loaded, "ours", "sd", "StableDiffusionControlNetPipeline", multi=True)
    pipe = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["controlnet"]).init_pipeline()
    pipe.update_components(**{n: v for n, v in classic.components.items() if n in pipe.component_names})
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="`control_image` must have the same length as the number of controlnets"):
        pipe(prompt="a cat", control_image=[CONTROL], num_inference_steps=1, height=32, width=32)


def test_list_controlnet_is_wrapped(cn_loaded):
    from diffblocks import MultiControlNetModel

    pipe = make(cn_loaded, "ours", "sd", "StableDiffusionControlNetPipeline", multi=True)
    assert isinstance(pipe.controlnet, MultiControlNetModel) and len(pipe.controlnet.nets) == 2
    assert pipe.config["controlnet"] == ("diffusers", "MultiControlNetModel")
    again = type(pipe)(**{**pipe.components, "controlnet": pipe.controlnet})
    assert again.controlnet is pipe.controlnet
    pipe.controlnet = (pipe.controlnet.nets[0], pipe.controlnet.nets[1])
    assert isinstance(pipe.controlnet, MultiControlNetModel)


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_save_then_diffusers_loads_same_images(cn_loaded, tmp_path, multi):
    import diffusers

    ours = make(cn_loaded, "ours", "sd", "StableDiffusionControlNetInpaintPipeline", multi=multi)
    ours.save_pretrained(str(tmp_path))
    index = json.load(open(tmp_path / "model_index.json"))
    assert index["_class_name"] == "StableDiffusionControlNetInpaintPipeline"
    assert index["controlnet"] == ["diffusers", "MultiControlNetModel" if multi else "ControlNetModel"]
    assert os.path.isdir(tmp_path / "controlnet_1") == multi
    theirs = diffusers.StableDiffusionControlNetInpaintPipeline.from_pretrained(str(tmp_path))
    theirs.set_progress_bar_config(disable=True)
    back = type(ours).from_pretrained(str(tmp_path))
    back.set_progress_bar_config(disable=True)
    assert type(back.controlnet).__name__ == ("MultiControlNetModel" if multi else "ControlNetModel")
    control = [CONTROL, CONTROL2] if multi else CONTROL
    kw = dict(prompt="a cat", image=IMAGE, mask_image=mask(), control_image=control, num_inference_steps=2,
              output_type="np")
    a = ours(generator=torch.Generator().manual_seed(0), **kw).images
    b = theirs(generator=torch.Generator().manual_seed(0), **kw).images
    c = back(generator=torch.Generator().manual_seed(0), **kw).images
    assert float(np.abs(as_np(a) - as_np(b)).max()) <= TOL
    assert float(np.abs(as_np(a) - as_np(c)).max()) == 0.0


def test_sdxl_save_then_diffusers_loads(cn_loaded, tmp_path):
    import diffusers

    ours = make(cn_loaded, "ours", "sdxl", "StableDiffusionXLControlNetImg2ImgPipeline")
    ours.save_pretrained(str(tmp_path))
    theirs = diffusers.StableDiffusionXLControlNetImg2ImgPipeline.from_pretrained(str(tmp_path))
    theirs.set_progress_bar_config(disable=True)
    assert theirs.config.requires_aesthetics_score is False
    kw = dict(prompt="a cat", image=IMAGE, control_image=CONTROL, num_inference_steps=2, output_type="np")
    a = ours(generator=torch.Generator().manual_seed(0), **kw).images
    b = theirs(generator=torch.Generator().manual_seed(0), **kw).images
    assert float(np.abs(as_np(a) - as_np(b)).max()) <= TOL


# ------------------------------------------------------------------------------------------------ AutoPipeline
def test_auto_pipeline_from_pretrained_with_controlnet(cn_folders, cn_loaded):
    from diffblocks import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        ControlNetModel,
    )

    cn2 = ControlNetModel.from_pretrained(cn_folders["sd"]["cn2"])
    folder = cn_folders["sd"]["pipe"]
    pipe = AutoPipelineForText2Image.from_pretrained(folder, controlnet=cn2)
    assert type(pipe).__name__ == "StableDiffusionControlNetPipeline" and pipe.controlnet is cn2
    # diffusers looks for "StableDiffusionControlNetControlNetPipeline" here; we keep the ControlNet row, and
    # controlnet=None selects the plain row
    assert type(AutoPipelineForText2Image.from_pretrained(folder, controlnet=None)).__name__ == \
        "StableDiffusionPipeline"
    # a folder saved by a ControlNet pipeline: its own class, with the stored controlnet
    assert type(AutoPipelineForText2Image.from_pretrained(folder)).__name__ == "StableDiffusionControlNetPipeline"
    assert type(AutoPipelineForImage2Image.from_pretrained(folder, controlnet=cn2)).__name__ == \
        "StableDiffusionControlNetImg2ImgPipeline"
    assert type(AutoPipelineForInpainting.from_pretrained(folder)).__name__ == \
        "StableDiffusionControlNetInpaintPipeline"
    from diffblocks import MultiControlNetModel

    xl = AutoPipelineForText2Image.from_pretrained(
        cn_folders["sdxl"]["pipe"], controlnet=MultiControlNetModel([cn_loaded("ours", "sdxl", "cn2")] * 2))
    assert type(xl).__name__ == "StableDiffusionXLControlNetPipeline"
    assert type(xl.controlnet).__name__ == "MultiControlNetModel"


def test_auto_pipeline_from_pipe_switches_rows(cn_loaded):
    import diffblocks
    from diffblocks import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    cn_pipe = cn_loaded("ours", "sd")
    plain = AutoPipelineForText2Image.from_pipe(cn_pipe, controlnet=None)
    assert type(plain) is diffblocks.StableDiffusionPipeline
    assert plain.unet is cn_pipe.unet and "controlnet" not in plain.components
    assert plain.config["_controlnet"] == ("diffusers", "ControlNetModel")
    back = AutoPipelineForText2Image.from_pipe(plain, controlnet=cn_pipe.controlnet)
    assert type(back) is diffblocks.StableDiffusionControlNetPipeline and back.controlnet is cn_pipe.controlnet
    inpaint = AutoPipelineForInpainting.from_pipe(cn_pipe)
    assert type(inpaint) is diffblocks.StableDiffusionControlNetInpaintPipeline
    assert inpaint.controlnet is cn_pipe.controlnet
    assert type(AutoPipelineForInpainting.from_pipe(inpaint, controlnet=None)) is diffblocks.StableDiffusionInpaintPipeline
    xl = AutoPipelineForImage2Image.from_pipe(cn_loaded("ours", "sdxl"), controlnet=None)
    assert type(xl) is diffblocks.StableDiffusionXLImg2ImgPipeline
    assert type(AutoPipelineForImage2Image.from_pipe(xl, controlnet=cn_loaded("ours", "sdxl", "cn2"))) is \
        diffblocks.StableDiffusionXLControlNetImg2ImgPipeline
    # the switched pipeline runs: the plain text2img from the ControlNet pipeline's components
    out = plain(prompt="a cat", num_inference_steps=1, height=32, width=32, output_type="np").images
    assert out.shape == (1, 32, 32, 3)


def test_pag_and_union_rows_stay_unimplemented(cn_loaded):
    from diffblocks import AutoPipelineForText2Image

    with pytest.raises(NotImplementedError, match="StableDiffusionControlNetPAGPipeline"):
        AutoPipelineForText2Image.from_pipe(cn_loaded("ours", "sd"), enable_pag=True)


def test_diffusers_saved_multi_loads_and_from_pipe(cn_loaded, tmp_path):
    import diffusers

    import diffblocks

    theirs = make(cn_loaded, "theirs", "sd", "StableDiffusionControlNetPipeline", multi=True)
    theirs.save_pretrained(str(tmp_path))
    ours = diffblocks.StableDiffusionControlNetPipeline.from_pretrained(str(tmp_path))
    ours.set_progress_bar_config(disable=True)
    assert isinstance(ours.controlnet, diffblocks.MultiControlNetModel) and len(ours.controlnet.nets) == 2
    # nested per-prompt lists: [[net0 image, net1 image] per prompt]
    kw = dict(prompt=["a cat", "a dog"], image=[[CONTROL, CONTROL2], [CONTROL2, CONTROL]], num_inference_steps=2,
              output_type="np")
    a = ours(generator=torch.Generator().manual_seed(0), **kw).images
    b = theirs(generator=torch.Generator().manual_seed(0), **kw).images
    assert float(np.abs(as_np(a) - as_np(b)).max()) <= TOL
    # DiffusionPipeline.from_pipe: a plain SD pipeline from the ControlNet one and back, components shared
    plain = diffblocks.StableDiffusionPipeline.from_pipe(ours)
    assert plain.unet is ours.unet and "controlnet" not in plain.components
    again = diffblocks.StableDiffusionControlNetImg2ImgPipeline.from_pipe(plain, controlnet=ours.controlnet)
    assert again.controlnet is ours.controlnet and again.vae is ours.vae


def test_auto_pipeline_plain_folder_with_controlnet(tmp_path, cn_loaded):
    from diffblocks import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
    from tests.fixtures.tiny import build_tiny_sd_folder

    folder = build_tiny_sd_folder(str(tmp_path / "sd"))
    cn = cn_loaded("ours", "sd").controlnet
    for auto, name in ((AutoPipelineForText2Image, "StableDiffusionControlNetPipeline"),
                       (AutoPipelineForImage2Image, "StableDiffusionControlNetImg2ImgPipeline"),
                       (AutoPipelineForInpainting, "StableDiffusionControlNetInpaintPipeline")):
        pipe = auto.from_pretrained(folder, controlnet=cn)
        assert type(pipe).__name__ == name and pipe.controlnet is cn
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a cat", image=IMAGE, mask_image=mask(), control_image=CONTROL, num_inference_steps=1,
               output_type="np").images
    assert out.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("name", [
    "StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline", "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetInpaintPipeline",
])
def test_signatures_and_class_attributes_match_diffusers(name):
    import inspect

    import diffusers

    import diffblocks

    ours, theirs = getattr(diffblocks, name), getattr(diffusers, name)
    for method in ("__init__", "__call__"):
        a = [(k, p.default) for k, p in inspect.signature(getattr(ours, method)).parameters.items()]
        b = [(k, p.default) for k, p in inspect.signature(getattr(theirs, method)).parameters.items()]
        assert a == b, method
    assert sorted(ours._optional_components) == sorted(theirs._optional_components)
    assert ours.model_cpu_offload_seq == theirs.model_cpu_offload_seq
    assert ours._callback_tensor_inputs == theirs._callback_tensor_inputs


def test_output_size_read_from_the_control_image_equals_what_preprocess_gives():
    # the classic pipelines read the default size off the first control image instead of preprocessing it twice
    import numpy as np
    import PIL.Image

    from diffblocks.image_processor import VaeImageProcessor
    from diffblocks.pipelines.controlnet.pipeline_controlnet import StableDiffusionControlNetPipelineBase

    proc = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    pil = PIL.Image.new("RGB", (45, 37))
    inputs = [pil, [pil, PIL.Image.new("RGB", (45, 37))], torch.rand(3, 37, 45), torch.rand(2, 3, 37, 45),
              np.random.rand(37, 45, 3).astype(np.float32), np.random.rand(2, 37, 45, 3).astype(np.float32)]
    size_from = StableDiffusionControlNetPipelineBase._size_from
    for image in inputs:
        for height, width in ((None, None), (64, None), (None, 24)):
            want = proc.preprocess(image, height=height, width=width).shape[-2:]
            assert size_from(None, proc, image, height, width) == tuple(want), (type(image), height, width)
