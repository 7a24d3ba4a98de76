"""DiffusionPipeline base: loading, overrides, variants, saving, from_pipe, to(), repr, progress bar."""
import json
import logging
import os
import shutil

import pytest
import torch

from diffblocks.pipelines.pipeline_utils import DiffusionPipeline, pipeline_allow_patterns

from .conftest import OtherDenoiser, TinyDenoiser, TinyExactPipeline, TinyImg2ImgPipeline, TinyPipeline, make_components

LOGGER = "diffblocks.pipelines.pipeline_utils"


def _copy(src, tmp_path, name="copy"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _index(folder):
    with open(os.path.join(folder, "model_index.json")) as f:
        return json.load(f)


def _write_index(folder, data):
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(data, f)


def _same_weights(a, b):
    # diffblocks' CLIPTextModel keeps the `text_model.` level that transformers 5 drops: compare without it
    sa, sb = ({k.removeprefix("text_model."): v for k, v in m.state_dict().items()} for m in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


# ----------------------------------------------------------------------------------------------- loading
def test_class_from_model_index_and_components(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    assert type(pipe) is TinyPipeline
    assert isinstance(pipe.unet, TinyDenoiser)
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.safety_checker is None and pipe.feature_extractor is None and pipe.image_encoder is None
    assert pipe.config.unet == ("diffusers", "TinyDenoiser")
    assert tuple(pipe.config.safety_checker) == (None, None)
    assert pipe.name_or_path == tiny_folder
    ref = TinyPipeline(**make_components())
    assert _same_weights(pipe.unet, ref.unet) and _same_weights(pipe.text_encoder, ref.text_encoder)
    # the called subclass wins over _class_name
    other = TinyImg2ImgPipeline.from_pretrained(tiny_folder)
    assert type(other) is TinyImg2ImgPipeline and other.config.requires_aesthetics_score is False


def test_written_model_index_matches_diffusers_layout(tiny_folder):
    data = _index(tiny_folder)
    assert data["_class_name"] == "TinyPipeline"
    assert data["unet"] == ["diffusers", "TinyDenoiser"]
    assert data["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert data["tokenizer"][0] == "transformers" and data["tokenizer"][1].startswith("CLIPTokenizer")
    assert data["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert data["safety_checker"] == [None, None]
    assert data["requires_safety_checker"] is False
    assert sorted(os.listdir(tiny_folder)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet"]
    assert os.path.isfile(os.path.join(tiny_folder, "unet", "diffusion_pytorch_model.safetensors"))
    assert os.path.isfile(os.path.join(tiny_folder, "text_encoder", "model.safetensors"))


def test_component_overrides_and_unexpected_kwargs(tiny_classes, tiny_folder, caplog):
    from diffblocks.schedulers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler()
    unet = OtherDenoiser()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipe = DiffusionPipeline.from_pretrained(tiny_folder, scheduler=sched, unet=unet, not_used=True,
                                                 requires_safety_checker=True)
    assert pipe.scheduler is sched and pipe.unet is unet
    assert pipe.config.scheduler == ("diffusers", "EulerDiscreteScheduler")
    assert pipe.config.requires_safety_checker is True
    assert "Keyword arguments {'not_used': True} are not expected by TinyPipeline and will be ignored." in caplog.text


def test_passed_component_of_wrong_type_is_an_error(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    with pytest.raises(ValueError, match="is of type: .*CLIPTokenizer.*, but should be .*PreTrainedModel"):
        DiffusionPipeline.from_pretrained(tiny_folder, text_encoder=pipe.tokenizer)
    with pytest.raises(ValueError, match="is of type: .*, but should be .*ModelMixin"):
        DiffusionPipeline.from_pretrained(tiny_folder, unet=pipe.scheduler)


def test_none_for_optional_and_null_entries(tiny_classes, tiny_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder, feature_extractor=None, safety_checker=None)
    assert pipe.feature_extractor is None
    # deleting optional keys from model_index entirely still loads
    folder = _copy(tiny_folder, tmp_path)
    data = _index(folder)
    for key in ("safety_checker", "feature_extractor", "image_encoder"):
        data.pop(key, None)
    _write_index(folder, data)
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.safety_checker is None and "image_encoder" in pipe.components


def test_torch_dtype_forms(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder, torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    assert pipe.dtype == torch.float16
    pipe = DiffusionPipeline.from_pretrained(tiny_folder, torch_dtype={"unet": torch.bfloat16, "default": torch.float16})
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.float16
    pipe = DiffusionPipeline.from_pretrained(tiny_folder, dtype={"unet": torch.float16})
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float32
    with pytest.raises(ValueError, match="both `dtype` and `torch_dtype`"):
        DiffusionPipeline.from_pretrained(tiny_folder, dtype=torch.float16, torch_dtype=torch.float16)
    with pytest.raises(TypeError, match="`torch_dtype` must be a torch.dtype"):
        DiffusionPipeline.from_pretrained(tiny_folder, torch_dtype="half-ish")


def test_variants(tiny_classes, tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    unet_files = sorted(os.listdir(os.path.join(folder, "unet")))
    assert unet_files == ["config.json", "diffusion_pytorch_model.fp16.safetensors",
                          "diffusion_pytorch_model.safetensors"]
    assert "model.fp16.safetensors" in os.listdir(os.path.join(folder, "text_encoder"))
    fp16 = DiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    ref = DiffusionPipeline.from_pretrained(folder)
    assert fp16.unet.dtype == torch.float16
    assert _same_weights(fp16.unet, ref.unet.half())
    # without torch_dtype the fp16 variant is converted to float32, for every kind of model
    up = DiffusionPipeline.from_pretrained(folder, variant="fp16")
    assert up.unet.dtype == torch.float32 and up.text_encoder.dtype == torch.float32
    # the default weights are still the original ones
    assert DiffusionPipeline.from_pretrained(folder).unet.dtype == torch.float32
    with pytest.raises(ValueError, match="but no such modeling files are available.*non_ema|non_ema.*but no such"):
        DiffusionPipeline.from_pretrained(folder, variant="non_ema")


def test_variant_only_folder_needs_variant(tiny_classes, tiny_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    folder = str(tmp_path / "only16")
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    assert "diffusion_pytorch_model.safetensors" not in os.listdir(os.path.join(folder, "unet"))
    with pytest.raises(OSError, match="Error no file named .* found in directory .*pass `variant='fp16'`"):
        DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16)
    ok = DiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    assert ok.unet.dtype == torch.float16


def test_mixed_variant_loading(tiny_classes, tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    ema = TinyDenoiser()
    torch.nn.init.constant_(ema.conv_in.weight, 0.5)
    ema.save_pretrained(os.path.join(folder, "unet"), variant="non_ema")
    pipe = DiffusionPipeline.from_pretrained(folder, variant="non_ema")
    assert torch.all(pipe.unet.conv_in.weight == 0.5)
    plain = DiffusionPipeline.from_pretrained(folder)
    assert not torch.all(plain.unet.conv_in.weight == 0.5)
    assert _same_weights(pipe.text_encoder, plain.text_encoder)


def test_unknown_classes_and_missing_modules(tiny_classes, tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    data = _index(folder)
    _write_index(folder, {**data, "_class_name": "ShapEImg2ImgPipeline"})
    with pytest.raises(ValueError, match="'ShapEImg2ImgPipeline' named by `_class_name`.*not supported"):
        DiffusionPipeline.from_pretrained(folder)
    _write_index(folder, {**data, "unet": ["diffusers", "UNet9000Model"]})
    with pytest.raises(ValueError, match="'UNet9000Model'.*component `unet` of TinyPipeline.*not supported"):
        DiffusionPipeline.from_pretrained(folder)
    _write_index(folder, {**data, "unet": ["my_private_lib.models", "Thing"]})
    with pytest.raises(ValueError, match="library 'my_private_lib.models' of class 'Thing'"):
        DiffusionPipeline.from_pretrained(folder)
    _write_index(folder, {**data, "text_encoder": ["transformers", "NoSuchTransformersModel"]})
    with pytest.raises(ValueError, match="'NoSuchTransformersModel'.*not available in the installed transformers"):
        DiffusionPipeline.from_pretrained(folder)
    reduced = {k: v for k, v in data.items() if k not in ("unet", "scheduler")}
    _write_index(folder, reduced)
    with pytest.raises(ValueError, match="expected .*but only.*Missing: \\['scheduler', 'unet'\\]"):
        DiffusionPipeline.from_pretrained(folder)
    _write_index(folder, {**data, "_class_name": ["pipeline", "MyPipe"]})
    with pytest.raises(ValueError, match="custom pipeline"):
        DiffusionPipeline.from_pretrained(folder)
    os.remove(os.path.join(folder, "model_index.json"))
    with pytest.raises(OSError, match="Error no file named model_index.json"):
        DiffusionPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="neither a valid local path nor a valid repo id"):
        DiffusionPipeline.from_pretrained(str(tmp_path / "a" / "b" / "c"))
    with pytest.raises(NotImplementedError, match="balanced not supported"):
        DiffusionPipeline.from_pretrained(tiny_folder, device_map="balanced")


def test_device_map_single_device(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder, device_map="cpu")
    assert pipe.hf_device_map == {"text_encoder": "cpu", "unet": "cpu"}
    assert pipe.device.type == "cpu"


def test_load_by_repo_id_from_hf_cache_offline(tiny_classes, tiny_folder, tmp_path, monkeypatch):
    from tests.fixtures.tiny import fill_hf_cache

    import huggingface_hub.constants

    cache = str(tmp_path / "cache")
    fill_hf_cache(cache, "tiny-org/tiny-pipe", tiny_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pipe = DiffusionPipeline.from_pretrained("tiny-org/tiny-pipe", cache_dir=cache, local_files_only=True)
    assert type(pipe) is TinyPipeline and pipe.name_or_path == "tiny-org/tiny-pipe"
    assert _same_weights(pipe.unet, DiffusionPipeline.from_pretrained(tiny_folder).unet)


def test_pipeline_allow_patterns():
    files = [
        "model_index.json", "README.md", "big_array.npy",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.non_ema.bin",
        "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
        "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json",
        "safety_checker/config.json", "safety_checker/model.safetensors",
    ]
    index = {"_class_name": "X", "unet": ["diffusers", "U"], "text_encoder": ["transformers", "T"],
             "tokenizer": ["transformers", "Tok"], "scheduler": ["diffusers", "S"],
             "safety_checker": ["stable_diffusion", "SC"], "feature_extractor": [None, None]}
    common = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
              "tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json"]
    got = pipeline_allow_patterns(files, index, skip_components=["safety_checker"])
    assert got == sorted(common + ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"])
    got = pipeline_allow_patterns(files, index, variant="fp16", skip_components=["safety_checker"])
    assert got == sorted(common + ["text_encoder/model.fp16.safetensors",
                                   "unet/diffusion_pytorch_model.fp16.safetensors"])
    got = pipeline_allow_patterns(files, index, variant="non_ema", use_safetensors=False,
                                  skip_components=["safety_checker"])
    assert "unet/diffusion_pytorch_model.non_ema.bin" in got and "text_encoder/pytorch_model.bin" in got
    assert "unet/diffusion_pytorch_model.bin" not in got
    assert not any(f.endswith(".safetensors") for f in got)
    got = pipeline_allow_patterns(files, index)
    assert "safety_checker/model.safetensors" in got
    bin_only = [f for f in files if not f.endswith(".safetensors")]
    with pytest.raises(OSError, match="Could not find the necessary `safetensors` weights"):
        pipeline_allow_patterns(bin_only, index, use_safetensors=True)
    with pytest.raises(ValueError, match="no such modeling files are available"):
        pipeline_allow_patterns(files, index, variant="bf16")


# ----------------------------------------------------------------------------------------------- saving
def test_save_reload_same_outputs(tiny_classes, tiny_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    out1 = pipe(generator=torch.Generator().manual_seed(0))
    pipe.save_pretrained(str(tmp_path / "again"), safe_serialization=False)
    assert os.path.isfile(tmp_path / "again" / "unet" / "diffusion_pytorch_model.bin")
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "again"))
    again.set_progress_bar_config(disable=True)
    out2 = again(generator=torch.Generator().manual_seed(0))
    assert out1.shape == (1, 4, 8, 8)
    assert torch.equal(out1, out2)


def test_changed_scheduler_and_nulled_component_are_saved(tiny_classes, tiny_folder, tmp_path):
    from diffblocks.schedulers import EulerDiscreteScheduler

    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert pipe.config.scheduler == ("diffusers", "EulerDiscreteScheduler")
    pipe.feature_extractor = None
    assert tuple(pipe.config.feature_extractor) == (None, None)
    pipe.save_pretrained(str(tmp_path / "s"))
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "s"))
    assert type(again.scheduler).__name__ == "EulerDiscreteScheduler"


def test_save_is_atomic(tiny_classes, tiny_folder, tmp_path, monkeypatch):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(pipe.text_encoder), "save_pretrained", boom)
    target = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        pipe.save_pretrained(str(target))
    assert not target.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".fresh")] == []
    # an existing folder is left exactly as it was
    existing = _copy(tiny_folder, tmp_path, "existing")
    before = {p: os.path.getmtime(os.path.join(existing, p)) for p in ("model_index.json",)}
    with pytest.raises(RuntimeError, match="disk full"):
        pipe.save_pretrained(existing)
    assert before == {p: os.path.getmtime(os.path.join(existing, p)) for p in before}
    with pytest.raises(ValueError, match="is a file"):
        pipe.save_pretrained(os.path.join(existing, "model_index.json"))


def test_unsaveable_component_is_nulled_with_warning(tiny_classes, tiny_folder, tmp_path, caplog):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    pipe.register_modules(image_encoder=torch.nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipe.save_pretrained(str(tmp_path / "x"))
    assert "cannot be saved" in caplog.text
    assert _index(str(tmp_path / "x"))["image_encoder"] == [None, None]


# ----------------------------------------------------------------------------------------------- components
def test_components_sharing_and_repr(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    comps = pipe.components
    assert sorted(comps) == ["feature_extractor", "image_encoder", "safety_checker", "scheduler", "text_encoder",
                             "tokenizer", "unet"]
    other = TinyImg2ImgPipeline(**comps)
    assert other.unet is pipe.unet
    text = repr(pipe)
    assert text.startswith("TinyPipeline {\n")
    body = json.loads(text[len("TinyPipeline "):])
    assert body["unet"] == ["diffusers", "TinyDenoiser"] and body["_class_name"] == "TinyPipeline"
    assert pipe.parameters == {"requires_safety_checker": False}


def test_from_pipe_shares_and_keeps_dtypes(tiny_classes, tiny_folder, caplog):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    ptrs = {n: [p.data_ptr() for p in m.parameters()] for n, m in pipe._module_items()}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        new = TinyImg2ImgPipeline.from_pipe(pipe, torch_dtype=torch.float16)
    for name, module in new._module_items():
        assert module is getattr(pipe, name)
        assert [p.data_ptr() for p in module.parameters()] == ptrs[name]
        assert module.dtype == torch.float32
    assert pipe.unet.dtype == torch.float32  # the source is never cast
    assert "never casts components it shares" in caplog.text
    assert new.tokenizer is pipe.tokenizer and new.scheduler is pipe.scheduler
    # default: no dtype change at all (diffusers would cast to float32)
    half = DiffusionPipeline.from_pretrained(tiny_folder, torch_dtype=torch.float16)
    again = TinyImg2ImgPipeline.from_pipe(half)
    assert again.unet.dtype == torch.float16 and half.unet.dtype == torch.float16
    # a component passed here and not held by the source gets the requested dtype
    fresh = TinyDenoiser()
    mixed = TinyImg2ImgPipeline.from_pipe(pipe, unet=fresh, torch_dtype=torch.float16)
    assert mixed.unet is fresh and fresh.dtype == torch.float16 and pipe.unet.dtype == torch.float32


def test_from_pipe_config_round_trip(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    img = TinyImg2ImgPipeline.from_pipe(pipe, requires_aesthetics_score=True, requires_safety_checker=True)
    assert img.config.requires_aesthetics_score is True and img.config.requires_safety_checker is True
    txt = TinyPipeline.from_pipe(img)
    assert txt.config["_requires_aesthetics_score"] is True
    back = TinyImg2ImgPipeline.from_pipe(txt)
    assert back.config.requires_aesthetics_score is True
    assert dict(back.config) == dict(img.config)
    assert back.name_or_path == tiny_folder


def test_from_pipe_type_filter_and_missing(tiny_classes, tiny_folder, caplog):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with pytest.raises(ValueError, match="expected .*but only"):
            TinyExactPipeline.from_pipe(pipe)
    assert "component unet is not switched over to new pipeline" in caplog.text
    exact = TinyExactPipeline.from_pipe(pipe, unet=OtherDenoiser())
    assert exact.text_encoder is pipe.text_encoder
    with pytest.raises(TypeError, match="`pipeline` must be a DiffusionPipeline"):
        TinyPipeline.from_pipe("not a pipeline")


# ----------------------------------------------------------------------------------------------- to / device
def test_to_call_forms(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    pipe.to(torch.float16)
    assert pipe.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    pipe.to("cpu", torch.float32)
    assert pipe.dtype == torch.float32
    pipe.to(None, torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    pipe.to(device=torch.device("cpu"), dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    pipe.to(dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    with pytest.raises(ValueError, match="first corresponds to `device` and the second to `dtype`"):
        pipe.to(torch.float16, "cpu")
    with pytest.raises(ValueError, match="at most two positional"):
        pipe.to("cpu", torch.float16, True)
    with pytest.raises(ValueError, match="`dtype` was passed both"):
        pipe.to(torch.float16, dtype=torch.float16)
    with pytest.raises(TypeError, match="`dtype` must be a torch.dtype"):
        pipe.to(dtype="float16")


def test_device_and_execution_device(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    pipe.unet.to("meta")
    assert pipe.device == torch.device("cpu")  # no accelerator: the first component (text_encoder) decides
    pipe.text_encoder.to("meta")
    assert pipe.device == torch.device("meta")
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    assert pipe._execution_device == torch.device("cpu")
    pipe.unet._diffblocks_execution_device = torch.device("cuda", 1)
    assert pipe._execution_device == torch.device("cuda", 1)


def test_progress_bar_config(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    bar = pipe.progress_bar(total=3)
    assert bar.disable is True  # stderr is not a terminal under pytest: quiet by default
    bar.close()
    pipe.set_progress_bar_config(disable=False, desc="steps")
    bar = pipe.progress_bar(total=3)
    assert bar.disable is False and bar.desc.startswith("steps")
    bar.close()
    assert list(pipe.progress_bar(iterable=[1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="Either `total` or `iterable` has to be defined."):
        pipe.progress_bar()
    pipe._progress_bar_config = "bad"
    with pytest.raises(ValueError, match="should be of type `dict`"):
        pipe.progress_bar(total=1)


def test_signature_keys_and_misc(tiny_classes):
    expected, optional = TinyImg2ImgPipeline._get_signature_keys(TinyImg2ImgPipeline)
    assert expected == ["feature_extractor", "image_encoder", "safety_checker", "scheduler", "text_encoder",
                        "tokenizer", "unet"]
    assert optional == ["requires_aesthetics_score", "requires_safety_checker"]
    import numpy as np

    imgs = DiffusionPipeline.numpy_to_pil(np.zeros((2, 4, 4, 3), dtype=np.float32))
    assert len(imgs) == 2 and imgs[0].size == (4, 4)
    pipe = TinyPipeline(**make_components())
    assert pipe.interrupt is False
    pipe.enable_attention_slicing()  # no module implements it: a no-op
    pipe.disable_attention_slicing()


# ----------------------------------------------------------------------------------------------- real SD folders
def _gen():
    return torch.Generator().manual_seed(0)


def test_sd_folder_interop_with_diffusers(tiny_sd_folder, tmp_path):
    import diffusers

    from diffblocks import StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_sd_folder)
    assert type(pipe) is StableDiffusionPipeline
    assert pipe.config.unet == ("diffusers", "UNet2DConditionModel")
    pipe.set_progress_bar_config(disable=True)
    ours = pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images

    # ours -> diffusers
    pipe.save_pretrained(str(tmp_path / "ours"))
    data = _index(str(tmp_path / "ours"))
    assert data["_class_name"] == "StableDiffusionPipeline" and data["vae"] == ["diffusers", "AutoencoderKL"]
    theirs_pipe = diffusers.DiffusionPipeline.from_pretrained(str(tmp_path / "ours"))
    assert type(theirs_pipe).__name__ == "StableDiffusionPipeline"
    theirs_pipe.set_progress_bar_config(disable=True)
    theirs = theirs_pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    assert float(abs(ours - theirs).max()) <= 1e-4

    # diffusers -> ours
    theirs_pipe.save_pretrained(str(tmp_path / "theirs"))
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "theirs"))
    again.set_progress_bar_config(disable=True)
    out = again("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    assert float(abs(out - ours).max()) <= 1e-4


def test_sd_safety_checker_none_warning(tiny_sd_folder, caplog):
    with caplog.at_level(logging.WARNING):
        pipe = DiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None, requires_safety_checker=True)
    assert pipe.safety_checker is None and pipe.config.requires_safety_checker is True
    assert "You have disabled the safety checker for <class 'diffblocks.pipelines.stable_diffusion" in caplog.text
    assert "by passing `safety_checker=None`" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        DiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=None)
    assert "disabled the safety checker" not in caplog.text  # the folder says requires_safety_checker=false


def test_sd_from_pipe_shares_every_tensor(tiny_sd_folder):
    from diffblocks import StableDiffusionImg2ImgPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_sd_folder, torch_dtype=torch.float16)
    before = {n: {k: t.data_ptr() for k, t in m.state_dict().items()} for n, m in pipe._module_items()}
    img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    for name, module in img._module_items():
        assert module is getattr(pipe, name)
        assert {k: t.data_ptr() for k, t in module.state_dict().items()} == before[name]
        assert module.dtype == torch.float16  # diffusers would have cast everything to float32 here
    assert pipe.unet.dtype == torch.float16


def test_sd_model_cpu_offload_on_cpu(tiny_sd_folder):
    from diffblocks import hooks

    pipe = DiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._offload_mode == "model"
    assert all(hooks.has_hooks(m) for _, m in pipe._module_items())
    assert pipe._execution_device == torch.device("cpu")
    out = pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    assert float(abs(out - ref).max()) <= 1e-6
    assert not any(h.resident for h in pipe._offload_hooks)  # maybe_free_model_hooks sent everything back
    pipe.remove_all_hooks()
    assert not any(hooks.has_hooks(m) for _, m in pipe._module_items())
    pipe.enable_sequential_cpu_offload(device="cpu")
    out = pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    assert float(abs(out - ref).max()) <= 1e-6
    pipe.remove_all_hooks()


def test_offload_errors(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="`enable_model_cpu_offload` requires accelerator, but not found"):
            pipe.enable_model_cpu_offload()
    with pytest.raises(ValueError, match="Cannot pass both"):
        pipe.enable_model_cpu_offload(gpu_id=1, device="cuda:0")
    with pytest.raises(ValueError, match="`gpu_id` must be a non-negative int"):
        pipe.enable_model_cpu_offload(gpu_id=-1, device="cuda")
    bare = DiffusionPipeline.__new__(TinyExactPipeline)
    TinyExactPipeline.__init__(bare, unet=OtherDenoiser(), scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="no `model_cpu_offload_seq` class attribute is set"):
        bare.enable_model_cpu_offload(device="cpu")


def test_run_blocks_uses_the_pipeline_as_components(tiny_classes, tiny_folder):
    from diffblocks.modular_pipelines import InputParam, ModularPipelineBlocks, OutputParam

    class Denoise(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("x", required=True), InputParam("scale", default=2.0)]

        @property
        def intermediate_outputs(self):
            return [OutputParam("y")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.y = components.unet(bs.x) * bs.scale
            self.set_block_state(state, bs)
            return components, state

    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    x = torch.randn(1, 4, 8, 8)
    state = pipe.run_blocks(Denoise(), x=x)
    with torch.no_grad():
        expected = pipe.unet(x) * 2.0
    assert torch.allclose(state.get("y"), expected)
    assert state.get("scale") == 2.0  # declared default filled in
    state = pipe.run_blocks(Denoise(), x=x, scale=0.5)
    assert torch.allclose(state.get("y"), expected / 4)


def test_assigning_to_a_null_component_registers_it(tiny_classes, tiny_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    assert tuple(pipe.config.image_encoder) == (None, None)
    pipe.image_encoder = OtherDenoiser()  # diffusers (quirk) would leave the entry null and not save it
    assert pipe.config.image_encoder == ("diffusers", "OtherDenoiser")
    pipe.save_pretrained(str(tmp_path / "x"))
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "x"))
    assert isinstance(again.image_encoder, OtherDenoiser)
    pipe.image_encoder = None
    assert tuple(pipe.config.image_encoder) == (None, None)
    # like diffusers, setting a name that is only a config key (not yet an attribute) does not touch the config
    pipe.requires_safety_checker = True
    assert pipe.config.requires_safety_checker is False


def test_save_into_existing_folder_drops_stale_shards(tiny_classes, tiny_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    folder = str(tmp_path / "sharded")
    pipe.save_pretrained(folder, max_shard_size=1000)
    unet_files = os.listdir(os.path.join(folder, "unet"))
    assert "diffusion_pytorch_model.safetensors.index.json" in unet_files
    assert any("-of-" in f for f in unet_files)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    pipe.to(torch.float32).save_pretrained(folder)  # unsharded now: old shards and index must go, fp16 stays
    unet_files = sorted(os.listdir(os.path.join(folder, "unet")))
    assert unet_files == ["config.json", "diffusion_pytorch_model.fp16.safetensors",
                          "diffusion_pytorch_model.safetensors"]
    again = DiffusionPipeline.from_pretrained(folder)
    assert _same_weights(again.unet, pipe.unet)


def test_sd1_folder_with_safety_checker_and_feature_extractor(tiny_sd_folder, tmp_path):
    """SD 1.x layout: ["stable_diffusion", "StableDiffusionSafetyChecker"] + CLIPImageProcessor, both directions."""
    import diffusers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker as RefChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from diffblocks import StableDiffusionSafetyChecker

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=100, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    checker = RefChecker(config).eval()
    extractor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    ref = diffusers.DiffusionPipeline.from_pretrained(tiny_sd_folder, safety_checker=checker,
                                                      feature_extractor=extractor, requires_safety_checker=True)
    ref.save_pretrained(str(tmp_path / "theirs"))
    data = _index(str(tmp_path / "theirs"))
    assert data["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]

    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "theirs"), torch_dtype=torch.float16)
    assert isinstance(pipe.safety_checker, StableDiffusionSafetyChecker)
    assert pipe.safety_checker.dtype == torch.float16
    assert pipe.config.safety_checker == ("stable_diffusion", "StableDiffusionSafetyChecker")
    assert pipe.config.feature_extractor == ("transformers", "CLIPImageProcessor")
    sd_ref = checker.state_dict()
    for key, value in pipe.safety_checker.state_dict().items():
        assert torch.equal(value.float(), sd_ref[key].half().float()), key

    pipe.to(torch.float32).save_pretrained(str(tmp_path / "ours"))
    data = _index(str(tmp_path / "ours"))
    assert data["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert data["feature_extractor"] == ["transformers", "CLIPImageProcessor"]
    back = diffusers.DiffusionPipeline.from_pretrained(str(tmp_path / "ours"))
    assert type(back.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert type(back.feature_extractor).__name__.startswith("CLIPImageProcessor")


def test_offload_gpu_id_is_remembered(tiny_classes, tiny_folder, caplog):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    pipe.enable_model_cpu_offload(gpu_id=5, device="cuda")  # no CUDA needed until a model runs
    assert pipe._offload_gpu_id == 5 and pipe._offload_device == torch.device("cuda", 5)
    assert pipe._execution_device == torch.device("cuda", 5)
    pipe.maybe_free_model_hooks()
    assert pipe._offload_gpu_id == 5
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pipe.to("meta")  # any non-CPU move of an offloaded pipeline is discouraged
    assert "It is strongly recommended against doing so" in caplog.text
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    pipe.enable_sequential_cpu_offload(device="cuda:1")
    with pytest.raises(ValueError, match="activated sequential model offloading"):
        pipe.to("cuda")
    pipe.remove_all_hooks()
    assert pipe._execution_device == torch.device("cpu")


def test_transformers_renamed_class():
    from transformers import CLIPImageProcessor

    from diffblocks.pipelines.pipeline_utils import class_library_tuple, resolve_class

    assert resolve_class("transformers", "CLIPFeatureExtractor") is CLIPImageProcessor
    assert class_library_tuple(CLIPImageProcessor()) == ("transformers", "CLIPImageProcessor")
    assert class_library_tuple(None) == (None, None)


def test_compiled_component_is_recorded_and_saved_as_its_module(tiny_classes, tiny_folder, tmp_path):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    compiled = torch.compile(pipe.unet)  # compilation itself is lazy: nothing runs here
    pipe.unet = compiled
    assert pipe.config.unet == ("diffusers", "TinyDenoiser")
    pipe.save_pretrained(str(tmp_path / "c"))
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "c"))
    assert type(again.unet) is TinyDenoiser and _same_weights(again.unet, compiled._orig_mod)


def test_image_pipeline_output():
    import numpy as np

    from diffblocks.pipelines import ImagePipelineOutput

    images = np.zeros((1, 4, 4, 3), dtype=np.float32)
    out = ImagePipelineOutput(images=images)
    assert out.images is images and out[0] is images and out["images"] is images
    assert out.to_tuple()[0] is images


def test_sd_attention_slicing_and_vae_helpers_keep_outputs(tiny_sd_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    pipe.enable_attention_slicing()
    pipe.enable_vae_slicing()
    pipe.enable_xformers_memory_efficient_attention()
    out = pipe("a cat", num_inference_steps=2, generator=_gen(), output_type="np").images
    assert float(abs(out - ref).max()) <= 1e-5
    pipe.disable_attention_slicing()
    pipe.disable_vae_slicing()
    # tiling decodes 64x64 in blended 32x32 tiles with this tiny VAE: different pixels, by design
    pipe.enable_vae_tiling()
    assert pipe.vae.use_tiling is True
    pipe.disable_vae_tiling()
    assert pipe.vae.use_tiling is False


def test_vae_helpers_need_a_vae(tiny_classes, tiny_folder):
    pipe = DiffusionPipeline.from_pretrained(tiny_folder)
    with pytest.raises(ValueError, match="`TinyPipeline` has no VAE component supporting `enable_slicing\\(\\)`"):
        pipe.enable_vae_slicing()


def test_incomplete_cached_snapshot_offline_is_a_clear_error(tiny_classes, tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from tests.fixtures.tiny import fill_hf_cache

    cache = str(tmp_path / "cache")
    snapshot = fill_hf_cache(cache, "tiny-org/partial", tiny_folder)
    os.remove(os.path.join(snapshot, "unet", "diffusion_pytorch_model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # the unet has no weights left in the snapshot: nothing to pick, so loading it fails clearly
    with pytest.raises(OSError, match="unet|diffusion_pytorch_model"):
        DiffusionPipeline.from_pretrained("tiny-org/partial", cache_dir=cache)
    # a component passed by the caller is not needed from the cache at all
    pipe = DiffusionPipeline.from_pretrained("tiny-org/partial", cache_dir=cache, unet=TinyDenoiser())
    assert isinstance(pipe.unet, TinyDenoiser)


def test_loading_options_reach_the_components(tiny_classes, tiny_folder):
    from diffblocks.pipelines.pipeline_utils import _check_device_map

    slow = DiffusionPipeline.from_pretrained(tiny_folder, low_cpu_mem_usage=False)
    assert _same_weights(slow.unet, DiffusionPipeline.from_pretrained(tiny_folder).unet)
    with pytest.raises(OSError, match="Error no file named .*pytorch_model.bin"):
        DiffusionPipeline.from_pretrained(tiny_folder, use_safetensors=False)
    with pytest.raises(TypeError, match="`use_safetensors` must be None, True or False"):
        DiffusionPipeline.from_pretrained(tiny_folder, use_safetensors="yes")
    with pytest.raises(TypeError, match="`variant` must be a str"):
        DiffusionPipeline.from_pretrained(tiny_folder, variant=16)
    with pytest.raises(ValueError, match="`device_map` must be a string"):
        DiffusionPipeline.from_pretrained(tiny_folder, device_map={"unet": 0})
    assert _check_device_map("cuda:1") == torch.device("cuda", 1)  # one device: load, then move there
    with pytest.raises(NotImplementedError, match="nowhere not supported"):
        _check_device_map("nowhere")
    with pytest.raises(ValueError, match="`custom_pipeline='lpw_stable_diffusion'` is not supported"):
        DiffusionPipeline.from_pretrained(tiny_folder, custom_pipeline="lpw_stable_diffusion")


def test_cached_repo_online_costs_one_metadata_request(tiny_classes, tiny_folder, tmp_path, monkeypatch):
    """Online with everything cached: one model_info call, no download, no per-file HEAD request."""
    import types as _types

    import huggingface_hub
    import huggingface_hub.constants

    from tests.fixtures.tiny import fill_hf_cache

    cache = str(tmp_path / "cache")
    snapshot = fill_hf_cache(cache, "tiny-org/online", tiny_folder)
    commit = os.path.basename(snapshot)
    files = []
    for root, _, names in os.walk(snapshot):
        files += [os.path.relpath(os.path.join(root, n), snapshot).replace(os.sep, "/") for n in names]
    files.append("unet/diffusion_pytorch_model.bin")  # on the Hub but not wanted (safetensors preferred)
    calls = []

    def model_info(self, repo_id, revision=None, token=None, **kw):
        calls.append(repo_id)
        return _types.SimpleNamespace(sha=commit, siblings=[_types.SimpleNamespace(rfilename=f) for f in files])

    def no_network(*a, **k):
        raise AssertionError("unexpected download")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    pipe = DiffusionPipeline.from_pretrained("tiny-org/online", cache_dir=cache)
    assert calls == ["tiny-org/online"]
    assert type(pipe) is TinyPipeline
