import pytest
import torch

from tests.fixtures.tiny import build_tiny_sd_folder


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # the test machine is shared; one intra-op thread avoids oversubscription on tiny models
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# the SD 1.x pipelines the LoRA tests of a module share (module scope: each test module gets fresh ones)
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_sd_folder(str(tmp_path_factory.mktemp("lora_sd") / "sd"))


@pytest.fixture(scope="module")
def ref_pipe(sd_folder):
    diffusers = pytest.importorskip("diffusers")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def our_pipe(sd_folder):
    from diffblocks import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe
