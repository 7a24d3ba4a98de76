"""Small pipelines built on DiffusionPipeline for testing the base without the SD family.

``TinyDenoiser`` is a ModelMixin model, ``TinyPipeline``/``TinyImg2ImgPipeline``/``TinyExactPipeline`` are
DiffusionPipeline subclasses. The ``tiny_classes`` fixture makes them resolvable from model_index.json by
registering them in diffblocks' lazy export tables for the duration of a test.
"""
import sys
import types

import pytest
import torch

from diffblocks.configuration import ConfigMixin, register_to_config
from diffblocks.models.modeling_utils import ModelMixin
from diffblocks.pipelines.pipeline_utils import DiffusionPipeline


class TinyDenoiser(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels: int = 4, hidden: int = 8):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(hidden, in_channels, 3, padding=1)

    def forward(self, x):
        return self.conv_out(torch.nn.functional.silu(self.conv_in(x)))


class OtherDenoiser(TinyDenoiser):
    pass


class TinyPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]

    def __init__(self, unet: TinyDenoiser, text_encoder, tokenizer, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              image_encoder=image_encoder)
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    def __call__(self, num_inference_steps: int = 2, generator=None):
        from diffblocks.utils.torch_utils import randn_tensor

        x = randn_tensor((1, 4, 8, 8), generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        with self.progress_bar(total=num_inference_steps) as bar:
            for t in self.scheduler.timesteps:
                x = self.scheduler.step(self.unet(x), t, x).prev_sample
                bar.update()
        self.maybe_free_model_hooks()
        return x


class TinyImg2ImgPipeline(TinyPipeline):
    def __init__(self, unet: TinyDenoiser, text_encoder, tokenizer, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False,
                 requires_aesthetics_score: bool = False):
        super().__init__(unet, text_encoder, tokenizer, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.register_to_config(requires_aesthetics_score=requires_aesthetics_score)


class TinyExactPipeline(DiffusionPipeline):
    """Only takes an OtherDenoiser as unet (for from_pipe's type filtering)."""

    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, unet: OtherDenoiser, scheduler, text_encoder=None, tokenizer=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)


# Pose as diffblocks classes so that model_index.json records them as ["diffusers", name] like real ones.
_ALIAS = "diffblocks.models._tiny_test_classes"
_alias_module = types.ModuleType(_ALIAS)
for _cls in (TinyDenoiser, OtherDenoiser, TinyPipeline, TinyImg2ImgPipeline, TinyExactPipeline):
    _cls.__module__ = _ALIAS
    setattr(_alias_module, _cls.__name__, _cls)
sys.modules[_ALIAS] = _alias_module

TEST_CLASSES = {
    "models": ["TinyDenoiser", "OtherDenoiser"],
    "pipelines": ["TinyPipeline", "TinyImg2ImgPipeline", "TinyExactPipeline"],
}


@pytest.fixture
def tiny_classes(monkeypatch):
    """Register the test classes in diffblocks' export tables (as if they were diffblocks classes)."""
    import diffblocks.models
    import diffblocks.pipelines

    module = _alias_module
    name = _ALIAS
    for package, names in ((diffblocks.models, TEST_CLASSES["models"]), (diffblocks.pipelines, TEST_CLASSES["pipelines"])):
        for cls_name in names:
            monkeypatch.setitem(package._EXPORTS, cls_name, name)
    return module


_TOKENIZER_DIR = []


def _tokenizer_dir(writer) -> str:
    """One tokenizer folder per test session, removed at exit."""
    if not _TOKENIZER_DIR:
        import atexit
        import shutil
        import tempfile

        path = tempfile.mkdtemp(prefix="diffblocks-tok-")
        writer(path)
        atexit.register(shutil.rmtree, path, True)
        _TOKENIZER_DIR.append(path)
    return _TOKENIZER_DIR[0]


def make_components(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffblocks.schedulers import DDIMScheduler
    from tests.fixtures.tiny import tiny_clip_text_config, write_tiny_tokenizer

    torch.manual_seed(seed)
    unet = TinyDenoiser().eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config())).eval()
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_dir(write_tiny_tokenizer))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return dict(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A saved TinyPipeline folder (fp32) plus an fp16 variant for unet and text_encoder."""
    path = str(tmp_path_factory.mktemp("tiny") / "pipe")
    pipe = TinyPipeline(**make_components())
    pipe.save_pretrained(path)
    return path



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models run fastest single-threaded, and far faster when the 2-core CI box is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
