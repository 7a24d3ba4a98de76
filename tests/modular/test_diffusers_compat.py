"""Index files written by one library load in the other (diffusers is the test-only oracle)."""
import json
import os
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffblocks import AutoencoderKL  # noqa: E402
from diffblocks.modular_pipelines import ComponentSpec, InputParam, ModularPipeline, ModularPipelineBlocks  # noqa: E402


def _diffusers_block():
    from diffusers.modular_pipelines import ComponentSpec as DSpec
    from diffusers.modular_pipelines import InputParam as DIn
    from diffusers.modular_pipelines import ModularPipelineBlocks as DBlocks

    class DVaeBlock(DBlocks):
        @property
        def expected_components(self):
            return [DSpec("vae", diffusers.AutoencoderKL)]

        @property
        def inputs(self):
            return [DIn("x")]

        def __call__(self, components, state):
            return components, state

    return DVaeBlock()


class VaeBlock(ModularPipelineBlocks):
    @property
    def expected_components(self):
        return [ComponentSpec("vae", AutoencoderKL)]

    @property
    def inputs(self):
        return [InputParam("x")]

    def __call__(self, components, state):
        return components, state


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    from tests.fixtures.tiny import save_component, tiny_vae_config

    root = tmp_path_factory.mktemp("vae-ckpt")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**tiny_vae_config())
    save_component(model, str(root / "vae"))
    return str(root), model


def test_diffusers_index_loads_in_diffblocks(vae_folder, tmp_path):
    folder, reference = vae_folder
    from diffusers.modular_pipelines import ComponentSpec as DSpec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = _diffusers_block().init_pipeline()
        pipe.update_components(vae=DSpec("vae", diffusers.AutoencoderKL, pretrained_model_name_or_path=folder,
                                         subfolder="vae").load())
        pipe.save_pretrained(str(tmp_path))
    ours = ModularPipeline(VaeBlock(), str(tmp_path))
    assert ours.vae is None
    ours.load_components()
    assert type(ours.vae) is AutoencoderKL
    for (name, a), (_, b) in zip(sorted(ours.vae.state_dict().items()), sorted(reference.state_dict().items())):
        torch.testing.assert_close(a, b, msg=name)


def test_diffblocks_index_loads_in_diffusers(vae_folder, tmp_path):
    folder, reference = vae_folder
    pipe = VaeBlock().init_pipeline()
    pipe.update_components(vae=ComponentSpec("vae", AutoencoderKL, pretrained_model_name_or_path=folder,
                                             subfolder="vae").load())
    pipe.save_pretrained(str(tmp_path))
    with open(tmp_path / "modular_model_index.json") as f:
        index = json.load(f)
    assert index["vae"][:2] == ["diffusers", "AutoencoderKL"]
    assert index["vae"][2]["pretrained_model_name_or_path"] == folder  # still points at its checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.ModularPipeline(_diffusers_block(), str(tmp_path))
        theirs.load_components()
    assert type(theirs.vae) is diffusers.AutoencoderKL
    torch.testing.assert_close(theirs.vae.decoder.conv_out.weight, reference.decoder.conv_out.weight)
