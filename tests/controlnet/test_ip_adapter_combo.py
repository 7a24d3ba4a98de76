"""IP-Adapter and ControlNet together (classic and modular) give diffusers' images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.controlnet._helpers import TOL, make, rgb
from tests.fixtures.tiny import tiny_unet_config
from tests.ip_adapter._tiny_ip import build_ip_adapter_repo, reference_image

SUB = "models"


@pytest.fixture(scope="module")
def ip_repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn-ip")
    return {kind: build_ip_adapter_repo(str(root / kind), tiny_unet_config(kind), subfolder=SUB)
            for kind in ("sd", "sdxl")}


@pytest.mark.parametrize(
    "kind, cls_name, kwargs",
    [
        ("sd", "StableDiffusionControlNetPipeline", dict(image=rgb(41), guess_mode=True)),
        ("sdxl", "StableDiffusionXLControlNetImg2ImgPipeline", dict(image=rgb(42), control_image=rgb(41),
                                                                    strength=0.9)),
    ],
)
def test_ip_adapter_with_controlnet(cn_loaded, ip_repos, kind, cls_name, kwargs):
    pipes = {which: make(cn_loaded, which, kind, cls_name) for which in ("theirs", "ours")}
    weight = "ip-adapter-plus.safetensors" if kind == "sd" else "ip-adapter.safetensors"
    try:
        for pipe in pipes.values():
            pipe.load_ip_adapter(ip_repos[kind], subfolder=SUB, weight_name=weight)
        out = {}
        for which, pipe in pipes.items():
            out[which] = pipe(prompt="a cat", ip_adapter_image=reference_image(3), num_inference_steps=2,
                              output_type="np", generator=torch.Generator().manual_seed(0), **kwargs).images
        assert float(np.abs(out["ours"] - out["theirs"]).max()) <= TOL
        # the image prompt takes part (the comparison can fail)
        plain = pipes["ours"](prompt="a cat", ip_adapter_image=reference_image(4), num_inference_steps=2,
                              output_type="np", generator=torch.Generator().manual_seed(0), **kwargs).images
        assert float(np.abs(plain - out["ours"]).max()) > 1e-3

        if kind == "sd":
            # modular: the IP-Adapter embeds step + the ControlNet preset, same components
            from transformers import CLIPImageProcessor

            from diffblocks.guiders import ClassifierFreeGuidance
            from diffblocks.modular_pipelines import ComponentSpec, SequentialPipelineBlocks
            from diffblocks.modular_pipelines.stable_diffusion import ALL_BLOCKS
            from diffblocks.modular_pipelines.stable_diffusion.ip_adapter import StableDiffusionIPAdapterStep
            from tests.ip_adapter._tiny_ip import IMAGE_SIZE

            preset = ALL_BLOCKS["controlnet"].copy()
            preset.insert("ip_adapter", StableDiffusionIPAdapterStep, 1)
            modular = SequentialPipelineBlocks.from_blocks_dict(preset).init_pipeline()
            ours = pipes["ours"]
            modular.update_components(**{n: v for n, v in ours.components.items()
                                         if n in modular.component_names and v is not None
                                         and n != "feature_extractor"},
                                      guider=ClassifierFreeGuidance(guidance_scale=7.5))
            modular.update_components(feature_extractor=ComponentSpec(
                "feature_extractor", CLIPImageProcessor, config={"size": IMAGE_SIZE, "crop_size": IMAGE_SIZE},
                default_creation_method="from_config"))
            modular.set_progress_bar_config(disable=True)
            got = modular(prompt="a cat", ip_adapter_image=reference_image(3), control_image=kwargs["image"],
                          guess_mode=True, num_inference_steps=2, height=32, width=32, output_type="np",
                          generator=torch.Generator().manual_seed(0), output="images")
            assert float(np.abs(got - out["ours"]).max()) <= 1e-5
    finally:
        for pipe in pipes.values():
            pipe.unload_ip_adapter()
