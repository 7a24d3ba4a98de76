"""IP-Adapter on SDXL: classic pipelines vs diffusers, modular pipelines (our step) vs classic and vs diffusers'
modular pipeline, the step's declarations, and the ComponentsManager's "Additional Component Info"."""
import logging

import numpy as np
import pytest
import torch

from tests.fixtures.tiny import build_tiny_sdxl_folder, tiny_unet_config
from tests.ip_adapter._tiny_ip import IMAGE_SIZE, build_ip_adapter_repo, reference_image

TOL = 1e-4
SUB = "sdxl_models"
SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_sdxl")
    return {
        "sdxl": build_tiny_sdxl_folder(str(root / "sdxl")),
        "ip": build_ip_adapter_repo(str(root / "ip"), tiny_unet_config("sdxl"), subfolder=SUB),
    }


def diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def _classic(lib, cls, folder):
    pipe = getattr(lib, cls).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_classic_two_adapters_num_images_parity(folders):
    diffusers = pytest.importorskip("diffusers")
    import diffblocks

    images = [reference_image(0), reference_image(1)]
    outs = {}
    for name, lib in (("ref", diffusers), ("ours", diffblocks)):
        pipe = _classic(lib, "StableDiffusionXLPipeline", folders["sdxl"])
        pipe.load_ip_adapter(folders["ip"], subfolder=SUB,
                             weight_name=["ip-adapter-plus.bin", "ip-adapter-2.safetensors"])
        pipe.set_ip_adapter_scale([0.7, 0.4])
        outs[name] = np.asarray(pipe("a tiny photo", num_inference_steps=2, num_images_per_prompt=2,
                                     ip_adapter_image=images, output_type="np",
                                     generator=torch.Generator().manual_seed(0), **SIZE).images)
        if name == "ours":
            # the SDXL pipeline has no safety checker: unloading drops the feature extractor too
            pipe.unload_ip_adapter()
            assert pipe.image_encoder is None and pipe.feature_extractor is None
            assert pipe.config.feature_extractor == (None, None)
            assert pipe.unet.encoder_hid_proj is None
    assert outs["ours"].shape == (2, 32, 32, 3)
    assert diff(outs["ours"], outs["ref"]) <= TOL


def test_inpaint_parity(folders):
    diffusers = pytest.importorskip("diffusers")
    import diffblocks
    from PIL import Image

    mask = Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), 8))
    outs = {}
    for name, lib in (("ref", diffusers), ("ours", diffblocks)):
        pipe = _classic(lib, "StableDiffusionXLInpaintPipeline", folders["sdxl"])
        pipe.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter.safetensors")
        outs[name] = np.asarray(pipe("a tiny photo", image=reference_image(5, size=32), mask_image=mask,
                                     strength=0.8, num_inference_steps=3, ip_adapter_image=reference_image(6),
                                     output_type="np", generator=torch.Generator().manual_seed(0), **SIZE).images)
    assert diff(outs["ours"], outs["ref"]) <= TOL


def _modular_ip_pipeline(folders, family):
    from transformers import CLIPImageProcessor

    from diffblocks.modular_pipelines import ComponentSpec, SequentialPipelineBlocks

    if family == "sdxl":
        # the SDXL auto blocks with the auto IP-Adapter step 2nd (as the lead wires it into modular_blocks)
        from diffblocks.modular_pipelines.stable_diffusion_xl import StableDiffusionXLAutoBlocks
        from diffblocks.modular_pipelines.stable_diffusion_xl.ip_adapter import IP_ADAPTER_BLOCKS

        blocks = StableDiffusionXLAutoBlocks()
        assert type(blocks.sub_blocks["ip_adapter"]) is IP_ADAPTER_BLOCKS["ip_adapter"]
        names = [p.name for p in blocks.inputs]
        # the image input comes right after the text encoder's inputs
        assert names[names.index("clip_skip") + 1] == "ip_adapter_image"
    else:
        from diffblocks.modular_pipelines.stable_diffusion.ip_adapter import StableDiffusionIPAdapterStep
        from diffblocks.modular_pipelines.stable_diffusion.modular_blocks import ALL_BLOCKS

        preset = ALL_BLOCKS["text2img"].copy()
        preset.insert("ip_adapter", StableDiffusionIPAdapterStep, 1)
        blocks = SequentialPipelineBlocks.from_blocks_dict(preset)
    assert list(blocks.sub_blocks)[:2] == ["text_encoder", "ip_adapter"]
    pipe = blocks.init_pipeline(folders[family])
    null = pipe.null_component_names
    assert null.index("image_encoder") == null.index("unet") - 1
    logging.disable(logging.ERROR)  # the pipeline folder has no image_encoder: its lookup logs an error
    try:
        pipe.load_components(torch_dtype=torch.float32)
    finally:
        logging.disable(logging.NOTSET)
    assert "image_encoder" in pipe.null_component_names
    pipe.load_ip_adapter(folders["ip"], subfolder=SUB if family == "sdxl" else "models",
                         weight_name="ip-adapter-plus.bin", image_encoder_folder="image_encoder")
    assert "image_encoder" not in pipe.null_component_names
    # the default feature extractor is sized for real encoders (224): give it the tiny encoder's size
    pipe.update_components(feature_extractor=ComponentSpec(
        "feature_extractor", CLIPImageProcessor, config={"size": IMAGE_SIZE, "crop_size": IMAGE_SIZE},
        default_creation_method="from_config"))
    return pipe


def test_modular_step_matches_classic_and_diffusers_modular(folders):
    diffusers = pytest.importorskip("diffusers")
    import diffblocks
    import diffusers.modular_pipelines as theirs_mod
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from diffblocks.loaders.ip_adapter import ModularIPAdapterMixin
    from diffblocks.modular_pipelines import ComponentsManager

    image = reference_image(3)
    pipe = _modular_ip_pipeline(folders, "sdxl")
    assert isinstance(pipe, ModularIPAdapterMixin)
    pipe.set_ip_adapter_scale(0.6)
    modular = pipe(prompt="a tiny photo", num_inference_steps=2, ip_adapter_image=image, output_type="np",
                   generator=torch.Generator().manual_seed(0), output="images", **SIZE)

    classic = _classic(diffblocks, "StableDiffusionXLPipeline", folders["sdxl"])
    classic.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter-plus.bin")
    classic.set_ip_adapter_scale(0.6)
    want = classic("a tiny photo", num_inference_steps=2, ip_adapter_image=image, guidance_scale=7.5,
                   output_type="np", generator=torch.Generator().manual_seed(0), **SIZE).images
    assert diff(modular, want) <= 1e-6

    logging.disable(logging.ERROR)
    try:
        theirs = theirs_mod.StableDiffusionXLAutoBlocks().init_pipeline(folders["sdxl"])
        theirs.load_components(torch_dtype=torch.float32)
    finally:
        logging.disable(logging.NOTSET)
    theirs.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter-plus.bin")
    theirs.set_ip_adapter_scale(0.6)
    theirs.update_components(
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(f"{folders['ip']}/{SUB}/image_encoder"),
        feature_extractor=CLIPImageProcessor(size=IMAGE_SIZE, crop_size=IMAGE_SIZE))
    reference = theirs(prompt="a tiny photo", num_inference_steps=2, ip_adapter_image=image, output_type="np",
                       generator=torch.Generator().manual_seed(0), output="images", **SIZE)
    assert diff(modular, reference) <= TOL

    # the manager shows the image encoder's load id and the UNet's IP-Adapter
    manager = ComponentsManager()
    manager.add("unet", pipe.unet)
    manager.add("image_encoder", pipe.image_encoder)
    text = repr(manager)
    assert f"{folders['ip']}|{SUB}/image_encoder|null|null" in text
    info = text.split("Additional Component Info:")[1]
    assert "unet:" in info and "IP-Adapter: Enabled" in info and "image_encoder:" not in info
    assert manager.get_model_info(manager.get_ids(["unet"])[0])["ip_adapter"]

    pipe.unload_ip_adapter()
    assert pipe.image_encoder is not None  # a regular component of the modular pipeline
    assert pipe.unet.encoder_hid_proj is None
    assert "IP-Adapter" not in repr(manager)
    # without `ip_adapter_image` the auto step is skipped: the plain text-to-image result
    classic.unload_ip_adapter()
    plain = pipe(prompt="a tiny photo", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0), output="images", **SIZE)
    want = classic("a tiny photo", num_inference_steps=2, guidance_scale=7.5, output_type="np",
                   generator=torch.Generator().manual_seed(0), **SIZE).images
    assert diff(plain, want) <= 1e-6


def test_sd_modular_step_matches_classic(tmp_path_factory):
    import diffblocks
    from tests.fixtures.tiny import build_tiny_sd_folder

    root = tmp_path_factory.mktemp("ip_sd_modular")
    folders = {"sd": build_tiny_sd_folder(str(root / "sd")),
               "ip": build_ip_adapter_repo(str(root / "ip"), tiny_unet_config("sd"), subfolder="models")}
    image = reference_image(4)
    pipe = _modular_ip_pipeline(folders, "sd")
    got = pipe(prompt="a tiny photo", num_inference_steps=2, num_images_per_prompt=2, ip_adapter_image=image,
               output_type="np", generator=torch.Generator().manual_seed(0), output="images", **SIZE)
    classic = diffblocks.StableDiffusionPipeline.from_pretrained(folders["sd"], safety_checker=None)
    classic.set_progress_bar_config(disable=True)
    classic.load_ip_adapter(folders["ip"], subfolder="models", weight_name="ip-adapter-plus.bin")
    want = classic("a tiny photo", num_inference_steps=2, num_images_per_prompt=2, ip_adapter_image=image,
                   output_type="np", generator=torch.Generator().manual_seed(0), **SIZE).images
    assert np.asarray(got).shape == (2, 32, 32, 3)
    assert diff(got, want) <= 1e-6


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_step_declarations(family):
    if family == "sdxl":
        from diffblocks.modular_pipelines.stable_diffusion_xl.ip_adapter import StableDiffusionXLIPAdapterStep as Step
    else:
        from diffblocks.modular_pipelines.stable_diffusion.ip_adapter import StableDiffusionIPAdapterStep as Step
    step = Step()
    assert step.model_name == ("stable-diffusion-xl" if family == "sdxl" else "stable-diffusion")
    specs = step.expected_components
    assert [s.name for s in specs] == ["image_encoder", "feature_extractor", "unet", "guider"]
    names = [s.type_hint.__name__ for s in specs]
    assert names[0] == "CLIPVisionModelWithProjection" and names[2] == "UNet2DConditionModel"
    # transformers 5 may hand out a backend class (CLIPImageProcessorPil without torchvision)
    assert names[1].startswith("CLIPImageProcessor")
    assert specs[0].default_creation_method == "from_pretrained"
    assert specs[1].default_creation_method == "from_config"
    assert dict(specs[1].config) == {"size": 224, "crop_size": 224}
    assert [(p.name, p.required) for p in step.inputs] == [("ip_adapter_image", True)]
    outs = {p.name: p.kwargs_type for p in step.intermediate_outputs}
    assert outs == {"ip_adapter_embeds": "denoiser_input_fields",
                    "negative_ip_adapter_embeds": "denoiser_input_fields"}
