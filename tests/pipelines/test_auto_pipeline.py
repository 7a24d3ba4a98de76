"""AutoPipeline tables, class selection, from_pretrained and from_pipe on tiny SD folders."""
import logging

import pytest
import torch

from diffblocks import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffblocks.pipelines.auto_pipeline import (
    AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
    AUTO_INPAINT_PIPELINES_MAPPING,
    AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    _get_model,
    _get_task_class,
)


class ControlNetModel:  # stands in for a controlnet object: only its class name matters for the name rewrite
    pass


class ControlNetUnionModel:
    pass


def test_tables_have_the_sd_family_rows():
    for mapping in (AUTO_TEXT2IMAGE_PIPELINES_MAPPING, AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
                    AUTO_INPAINT_PIPELINES_MAPPING):
        for key in ("stable-diffusion", "stable-diffusion-xl", "stable-diffusion-controlnet",
                    "stable-diffusion-xl-controlnet"):
            assert key in mapping
    assert AUTO_IMAGE2IMAGE_PIPELINES_MAPPING["stable-diffusion-xl"] == "StableDiffusionXLImg2ImgPipeline"
    assert AUTO_INPAINT_PIPELINES_MAPPING["stable-diffusion-controlnet"] == "StableDiffusionControlNetInpaintPipeline"
    assert _get_model("StableDiffusionXLInpaintPipeline") == "stable-diffusion-xl"
    assert _get_model("ShapEImg2ImgPipeline") is None


@pytest.mark.parametrize(
    "auto, source, kwargs, expected",
    [
        (AutoPipelineForText2Image, "StableDiffusionXLPipeline", {}, "StableDiffusionXLPipeline"),
        (AutoPipelineForText2Image, "StableDiffusionXLPipeline", {"controlnet": ControlNetModel()},
         "StableDiffusionXLControlNetPipeline"),
        (AutoPipelineForText2Image, "StableDiffusionXLPipeline", {"enable_pag": True}, "StableDiffusionXLPAGPipeline"),
        (AutoPipelineForText2Image, "StableDiffusionXLPipeline", {"controlnet": ControlNetModel(), "enable_pag": True},
         "StableDiffusionXLControlNetPAGPipeline"),
        (AutoPipelineForText2Image, "StableDiffusionXLPipeline", {"controlnet": ControlNetUnionModel()},
         "StableDiffusionXLControlNetUnionPipeline"),
        (AutoPipelineForImage2Image, "StableDiffusionXLPipeline", {"controlnet": ControlNetModel()},
         "StableDiffusionXLControlNetImg2ImgPipeline"),
        (AutoPipelineForImage2Image, "StableDiffusionXLImg2ImgPipeline", {"enable_pag": True},
         "StableDiffusionXLPAGImg2ImgPipeline"),
        (AutoPipelineForImage2Image, "StableDiffusionXLImg2ImgPipeline", {"controlnet": ControlNetModel()},
         "StableDiffusionXLControlNetImg2ImgPipeline"),
        (AutoPipelineForInpainting, "StableDiffusionXLPipeline", {"enable_pag": True},
         "StableDiffusionXLPAGInpaintPipeline"),
        (AutoPipelineForInpainting, "StableDiffusionXLInpaintPipeline", {}, "StableDiffusionXLInpaintPipeline"),
        (AutoPipelineForInpainting, "StableDiffusionPipeline", {"controlnet": ControlNetModel()},
         "StableDiffusionControlNetInpaintPipeline"),
        (AutoPipelineForText2Image, "StableDiffusionInpaintPipeline", {}, "StableDiffusionPipeline"),
    ],
)
def test_class_selection_for_from_pretrained(auto, source, kwargs, expected):
    name = auto._name_for_pretrained(source, dict(kwargs))
    model = _get_model(name)
    assert auto._mapping[model] == expected


def test_text2image_with_controlnet_on_img2img_repo_is_an_error():
    name = AutoPipelineForText2Image._name_for_pretrained("StableDiffusionXLImg2ImgPipeline",
                                                          {"controlnet": ControlNetModel()})
    assert name == "StableDiffusionXLImg2ImgControlNetPipeline"
    with pytest.raises(ValueError, match="AutoPipeline can't find a pipeline linked to "
                                         "StableDiffusionXLImg2ImgControlNetPipeline for None"):
        _get_task_class(AUTO_TEXT2IMAGE_PIPELINES_MAPPING, name)


def test_unsupported_pipeline_error_like_the_seed(tiny_sd_folder, tmp_path):
    import json
    import shutil

    folder = str(tmp_path / "shap")
    shutil.copytree(tiny_sd_folder, folder)
    path = f"{folder}/model_index.json"
    data = json.load(open(path))
    data["_class_name"] = "ShapEImg2ImgPipeline"
    json.dump(data, open(path, "w"))
    with pytest.raises(ValueError, match="^AutoPipeline can't find a pipeline linked to ShapEImg2ImgPipeline for None$"):
        AutoPipelineForImage2Image.from_pretrained(folder, torch_dtype=torch.float16)


def test_row_without_implementation_is_a_clear_error():
    with pytest.raises(NotImplementedError, match="StableDiffusionXLPAGPipeline, which diffblocks does not implement"):
        _get_task_class(AUTO_TEXT2IMAGE_PIPELINES_MAPPING, "StableDiffusionXLPAGPipeline")


def test_auto_classes_cannot_be_instantiated():
    with pytest.raises(EnvironmentError, match="AutoPipelineForText2Image is designed to be instantiated using the "
                                               "`AutoPipelineForText2Image.from_pretrained"):
        AutoPipelineForText2Image()


def test_from_pretrained_picks_the_task_class(tiny_sd_folder):
    t2i = AutoPipelineForText2Image.from_pretrained(tiny_sd_folder)
    i2i = AutoPipelineForImage2Image.from_pretrained(tiny_sd_folder, torch_dtype=torch.float16)
    inp = AutoPipelineForInpainting.from_pretrained(tiny_sd_folder, requires_safety_checker=False)
    assert type(t2i) is StableDiffusionPipeline
    assert type(i2i) is StableDiffusionImg2ImgPipeline and i2i.unet.dtype == torch.float16
    assert type(inp) is StableDiffusionInpaintPipeline
    assert "StableDiffusionImg2ImgPipeline {" in repr(i2i)


def test_from_pretrained_by_repo_id_from_cache(tiny_sd_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from tests.fixtures.tiny import fill_hf_cache

    cache = str(tmp_path / "hf")
    fill_hf_cache(cache, "org/tiny-sd", tiny_sd_folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pipe = AutoPipelineForImage2Image.from_pretrained("org/tiny-sd", cache_dir=cache, local_files_only=True)
    assert type(pipe) is StableDiffusionImg2ImgPipeline and pipe.name_or_path == "org/tiny-sd"


def test_from_pipe_round_trip_keeps_config_and_shares(tiny_sd_folder, caplog):
    t2i = AutoPipelineForText2Image.from_pretrained(tiny_sd_folder)
    ptrs = [p.data_ptr() for p in t2i.unet.parameters()]
    i2i = AutoPipelineForImage2Image.from_pipe(t2i)
    assert type(i2i) is StableDiffusionImg2ImgPipeline
    assert i2i.unet is t2i.unet and i2i.vae is t2i.vae and i2i.text_encoder is t2i.text_encoder
    assert [p.data_ptr() for p in i2i.unet.parameters()] == ptrs
    inp = AutoPipelineForInpainting.from_pipe(i2i)
    back = AutoPipelineForText2Image.from_pipe(inp)
    assert type(back) is StableDiffusionPipeline
    assert dict(back.config) == dict(t2i.config)
    assert dict(i2i.config) == dict(t2i.config)  # same components and settings, same _name_or_path
    over = AutoPipelineForImage2Image.from_pipe(t2i, requires_safety_checker=True)
    assert over.config.requires_safety_checker is True
    # controlnet=None into a pipeline without controlnet is dropped silently
    with caplog.at_level(logging.WARNING):
        plain = AutoPipelineForText2Image.from_pipe(i2i, controlnet=None)
    assert type(plain) is StableDiffusionPipeline and "controlnet" not in caplog.text
    # optional image_encoder can be overridden with None
    assert AutoPipelineForImage2Image.from_pipe(t2i, image_encoder=None).image_encoder is None


def test_from_pipe_unknown_source_is_an_error():
    from tests.pipelines.conftest import TinyPipeline, make_components

    pipe = TinyPipeline(**make_components())
    with pytest.raises(ValueError, match="AutoPipeline can't find a pipeline linked to TinyPipeline for None"):
        AutoPipelineForImage2Image.from_pipe(pipe)


def test_listed_but_unavailable_classes_raise_not_implemented(tiny_sd_folder, tmp_path, monkeypatch):
    import json
    import shutil

    import diffblocks.pipelines as pipelines
    from diffblocks import DiffusionPipeline
    from diffblocks.pipelines import auto_pipeline

    monkeypatch.setitem(pipelines._EXPORTS, "GhostPipeline", "._no_such_module")
    monkeypatch.setitem(pipelines._EXPORTS, "GhostImg2ImgPipeline", "._no_such_module")
    monkeypatch.setitem(auto_pipeline.AUTO_TEXT2IMAGE_PIPELINES_MAPPING, "ghost", "GhostPipeline")
    monkeypatch.setitem(auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, "ghost", "GhostImg2ImgPipeline")
    folder = str(tmp_path / "ghost")
    shutil.copytree(tiny_sd_folder, folder)
    data = json.load(open(f"{folder}/model_index.json"))
    data["_class_name"] = "GhostPipeline"
    json.dump(data, open(f"{folder}/model_index.json", "w"))
    with pytest.raises(NotImplementedError, match="'GhostPipeline' named by `_class_name`.*not available in this build"):
        DiffusionPipeline.from_pretrained(folder)
    with pytest.raises(NotImplementedError, match="maps GhostPipeline to GhostImg2ImgPipeline, which is not available"):
        AutoPipelineForImage2Image.from_pretrained(folder)
