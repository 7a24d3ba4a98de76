"""Precomputed IP-Adapter embeddings passed straight to a modular pipeline (no IP-Adapter step in the blocks):
the input step hands them to the denoiser, giving the classic pipeline's image for the same embeddings."""
import numpy as np
import pytest
import torch

from tests.fixtures.tiny import build_tiny_sd_folder, tiny_unet_config
from tests.ip_adapter._tiny_ip import build_ip_adapter_repo, reference_image

SUB = "models"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip_modular_pre")
    return {
        "sd": build_tiny_sd_folder(str(root / "sd")),
        "ip": build_ip_adapter_repo(str(root / "ip"), tiny_unet_config("sd"), subfolder=SUB),
    }


def test_precomputed_embeds_reach_the_denoiser_without_the_step(folders):
    from diffblocks import StableDiffusionPipeline
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion.modular_blocks import ALL_BLOCKS

    classic = StableDiffusionPipeline.from_pretrained(folders["sd"], safety_checker=None)
    classic.set_progress_bar_config(disable=True)

    def run_classic(**kw):
        return classic("a tiny photo", height=32, width=32, num_inference_steps=2, output_type="np",
                       generator=torch.Generator().manual_seed(0), **kw).images

    without = run_classic()
    classic.load_ip_adapter(folders["ip"], subfolder=SUB, weight_name="ip-adapter.safetensors")
    embeds = classic.prepare_ip_adapter_image_embeds(reference_image(1), None, torch.device("cpu"), 1, True)
    negative, positive = embeds[0].chunk(2)
    want = run_classic(ip_adapter_image_embeds=embeds)
    assert float(np.abs(want - without).max()) > 1e-3  # the adapter changes the image

    blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    assert "ip_adapter" not in blocks.sub_blocks
    assert {"ip_adapter_embeds", "negative_ip_adapter_embeds"} <= {p.name for p in blocks.inputs}
    pipe = blocks.init_pipeline(folders["sd"])
    pipe.update_components(**{name: getattr(classic, name) for name in pipe.null_component_names
                              if getattr(classic, name, None) is not None})

    def run_modular(**kw):
        return pipe(prompt="a tiny photo", height=32, width=32, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0), output="images", **kw)

    got = run_modular(ip_adapter_embeds=[positive], negative_ip_adapter_embeds=[negative])
    assert float(np.abs(np.asarray(got) - want).max()) <= 1e-6
    with pytest.raises(ValueError, match="ip_adapter_embeds"):
        run_modular(ip_adapter_embeds=positive)
