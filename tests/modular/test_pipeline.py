"""ModularPipeline: loading from indexes, lazy components, updates, saving, calling, devices, registry, manager."""
import json
import logging
import os
import textwrap
import weakref

import pytest
import torch

from diffblocks.modular_pipelines import (
    ComponentSpec,
    ConditionalPipelineBlocks,
    ModularPipeline,
    ModularPipelineBlocks,
    OutputParam,
    PipelineState,
    SequentialPipelineBlocks,
)
from diffblocks.modular_pipelines.modular_pipeline import (
    MODULAR_PIPELINE_MAPPING,
    get_modular_pipeline_class,
    register_modular_pipeline,
)
from diffblocks.modular_pipelines.modular_pipeline_utils import get_load_id

from .helpers import (
    AddBlock,
    ModelBlock,
    OtherTinyModel,
    TextBlock,
    TinyModel,
    TinyScheduler,
    write_tiny_model,
)

HELPERS = TinyModel.__module__


def _blocks():
    return SequentialPipelineBlocks.from_blocks_dict({"model": ModelBlock, "text": TextBlock})


def _spec(path, subfolder, cls="TinyModel", **extra):
    return {"type_hint": [HELPERS, cls], "pretrained_model_name_or_path": path, "subfolder": subfolder,
            "variant": None, "revision": None, **extra}


@pytest.fixture
def two_folders(tmp_path):
    """Components in two different checkpoint folders, and an index in a third that points at both."""
    a, b, c = tmp_path / "ckpt_a", tmp_path / "ckpt_b", tmp_path / "pipe"
    model = write_tiny_model(str(a), "unet", seed=1)
    text = write_tiny_model(str(b), "te", seed=2)
    c.mkdir()
    index = {
        "_class_name": "ModularPipeline",
        "_blocks_class_name": "SequentialPipelineBlocks",
        "factor": 3.0,
        "model": [None, None, _spec(str(a), "unet")],
        "text_model": [HELPERS, "TinyModel", _spec(str(b), "te")],
    }
    (c / "modular_model_index.json").write_text(json.dumps(index))
    return {"a": str(a), "b": str(b), "pipe": str(c), "model": model, "text": text}


def test_init_pipeline_without_repo():
    pipe = ModelBlock().init_pipeline()
    assert type(pipe) is ModularPipeline
    assert pipe.component_names == ["model", "scheduler"]
    assert pipe.null_component_names == ["model"]
    assert pipe.pretrained_component_names == ["model"] and pipe.config_component_names == ["scheduler"]
    assert isinstance(pipe.scheduler, TinyScheduler) and pipe.scheduler.config["beta"] == 0.5
    assert pipe.config.factor == 2.0 and pipe.config["_blocks_class_name"] == "ModelBlock"
    assert pipe.config["model"] == [None, None, {"type_hint": [HELPERS, "TinyModel"],
                                                 "pretrained_model_name_or_path": None, "subfolder": "",
                                                 "variant": None, "revision": None}]
    assert "scheduler" not in pipe.config  # from_config components are not part of the index
    text = repr(pipe)
    assert text.startswith("ModularPipeline {") and '"_blocks_class_name": "ModelBlock"' in text
    assert pipe.default_call_parameters == {"sample": None}
    assert pipe.doc == ModelBlock().doc
    with pytest.raises(KeyError, match="Unknown component 'nope'"):
        pipe.get_component_spec("nope")
    spec = pipe.get_component_spec("model")
    spec.subfolder = "changed"
    assert pipe.get_component_spec("model").subfolder == ""
    # blocks property is a copy
    pipe.blocks.sub_blocks["x"] = AddBlock()
    assert "x" not in pipe.blocks.sub_blocks


def test_modular_index_with_components_from_two_folders(two_folders):
    TinyModel.calls.clear()
    pipe = ModularPipeline(_blocks(), two_folders["pipe"])
    # lazy: nothing loaded yet
    assert TinyModel.calls == []
    assert pipe.null_component_names == ["model", "text_model"]
    assert pipe.config.factor == 3.0
    assert pipe._component_specs["model"].load_id == f"{two_folders['a']}|unet|null|null"
    assert pipe._component_specs["text_model"].load_id == f"{two_folders['b']}|te|null|null"

    pipe.load_components(names="model", torch_dtype=torch.float64)
    assert pipe.null_component_names == ["text_model"]
    assert pipe.model.linear.weight.dtype == torch.float64
    torch.testing.assert_close(pipe.model.linear.weight.float(), two_folders["model"].linear.weight)
    assert pipe.config["model"][:2] == [HELPERS, "TinyModel"]
    first = pipe.model
    pipe.load_components()  # loads what is missing, keeps what is loaded
    assert pipe.model is first and pipe.null_component_names == []
    torch.testing.assert_close(pipe.text_model.linear.weight, two_folders["text"].linear.weight)
    assert get_load_id(pipe.text_model) == f"{two_folders['b']}|te|null|null"

    sample = torch.ones(1, 4, dtype=torch.float64)
    out = pipe(sample=sample, prompt="abcd", output=["out", "prompt_len"])
    torch.testing.assert_close(out["out"], first(sample) * 3.0)
    assert out["prompt_len"] == 4


def test_relative_entries_resolve_beside_the_index(tmp_path):
    write_tiny_model(str(tmp_path / "pipe" / "parts"), "unet", seed=5)
    index = {"_class_name": "ModularPipeline", "model": [None, None, _spec("parts", "unet")]}
    (tmp_path / "pipe" / "modular_model_index.json").write_text(json.dumps(index))
    pipe = ModularPipeline(ModelBlock(), str(tmp_path / "pipe"))
    assert pipe._component_specs["model"].pretrained_model_name_or_path == os.path.join(str(tmp_path), "pipe", "parts")
    pipe.load_components()
    assert isinstance(pipe.model, TinyModel)


def test_plain_model_index(tmp_path):
    write_tiny_model(str(tmp_path), "model", seed=7)
    write_tiny_model(str(tmp_path), "text_model", seed=8, cls=OtherTinyModel)
    index = {"_class_name": "TinyPipeline", "_diffusers_version": "0.30.0", "factor": 5.0,
             "model": [HELPERS, "TinyModel"], "text_model": [HELPERS, "OtherTinyModel"],
             "safety_checker": [None, None]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    pipe = ModularPipeline(_blocks(), tmp_path)
    assert pipe.config.factor == 5.0
    spec = pipe._component_specs["text_model"]
    assert (spec.pretrained_model_name_or_path, spec.subfolder, spec.type_hint) == (str(tmp_path), "text_model",
                                                                                    OtherTinyModel)
    pipe.load_components(torch_dtype={"model": torch.float64, "default": torch.float32})
    assert type(pipe.text_model) is OtherTinyModel
    assert pipe.model.linear.weight.dtype == torch.float64
    assert pipe.text_model.linear.weight.dtype == torch.float32


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(EnvironmentError, match="Could not find or load 'modular_model_index.json' or 'model_index.json'"):
        ModularPipeline(ModelBlock(), str(tmp_path))
    with pytest.raises(EnvironmentError, match="Failed to load config from"):
        ModularPipeline.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="has no blocks"):
        ModularPipeline()
    with pytest.raises(TypeError, match="`blocks` must be a ModularPipelineBlocks instance"):
        ModularPipeline(blocks="not blocks")


def test_load_components_arguments(two_folders, caplog):
    pipe = ModularPipeline(_blocks(), two_folders["pipe"])
    with pytest.raises(ValueError, match="Pass either `names` or `workflow`, not both."):
        pipe.load_components(names="model", workflow="x")
    with pytest.raises(ValueError, match="Invalid type for names"):
        pipe.load_components(names=("model",))
    with caplog.at_level(logging.WARNING):
        pipe.load_components(names=["model", "nope"])
    assert "Unknown components will be ignored: {'nope'}" in caplog.text
    assert pipe.model is not None
    # a failing load is a warning and leaves the component None
    pipe._component_specs["text_model"].pretrained_model_name_or_path = two_folders["b"] + "-missing"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe.load_components(names="text_model")
    assert "Failed to create component text_model" in caplog.text and pipe.text_model is None
    # explicit names reload even if loaded
    old = pipe.model
    pipe.load_components(names="model")
    assert pipe.model is not old


def test_path_less_specs_are_skipped_and_load_default_components(two_folders):
    pipe = _blocks().init_pipeline()
    pipe.load_components()
    assert pipe.null_component_names == ["model", "text_model"]
    pipe = _blocks().init_pipeline(two_folders["pipe"])
    pipe.load_default_components(torch_dtype=torch.float16)
    assert pipe.null_component_names == []
    assert pipe.dtype == torch.float16


def test_update_components(two_folders, caplog):
    source = ModularPipeline(_blocks(), two_folders["pipe"])
    source.load_components()
    pipe = ModelBlock().init_pipeline()
    # an object loaded through a spec keeps its checkpoint in the spec
    pipe.update_components(model=source.model)
    assert pipe.model is source.model
    spec = pipe._component_specs["model"]
    assert (spec.pretrained_model_name_or_path, spec.subfolder) == (two_folders["a"], "unet")
    assert pipe.config["model"][2]["pretrained_model_name_or_path"] == two_folders["a"]
    # a plain object: spec without a path
    plain = TinyModel()
    pipe.update_components(model=plain)
    assert pipe._component_specs["model"].pretrained_model_name_or_path is None
    assert pipe._component_specs["model"].type_hint is TinyModel
    # config objects become from_config specs; config values update the config
    pipe.update_components(scheduler=TinyScheduler(beta=0.01), factor=10.0)
    assert pipe.scheduler.config["beta"] == 0.01
    assert pipe._component_specs["scheduler"].default_creation_method == "from_config"
    assert pipe.config.factor == 10.0
    out = pipe(sample=torch.ones(1, 4), output="out")
    torch.testing.assert_close(out, plain(torch.ones(1, 4)) * 10.0)
    with caplog.at_level(logging.WARNING):
        pipe.update_components(modle=plain)
    assert "Unexpected keyword arguments, will be ignored: 'modle' (did you mean 'model'?)" in caplog.text
    with caplog.at_level(logging.WARNING):
        pipe.update_components(model=None)
    assert "setting model to None (spec unchanged)" in caplog.text and pipe.model is plain


def test_unload_components(two_folders, caplog):
    pipe = ModularPipeline(_blocks(), two_folders["pipe"])
    pipe.load_components()
    ref = weakref.ref(pipe.model)
    spec = pipe._component_specs["model"]
    pipe.unload_components("model")
    assert pipe.model is None and pipe.components["model"] is None and ref() is None
    assert pipe._component_specs["model"] is spec
    pipe.unload_components("model")  # no-op
    with pytest.raises(ValueError, match="Invalid type for names"):
        pipe.unload_components(("text_model",))
    assert pipe.text_model is not None
    with caplog.at_level(logging.WARNING):
        pipe.unload_components(["text_model", "ghost"])
    assert "ghost" in caplog.text and pipe.text_model is None
    pipe.load_components(names="model")
    assert isinstance(pipe.model, TinyModel)


def test_call_outputs_and_warnings():
    pipe = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock}).init_pipeline()
    state = pipe(x=1)
    assert isinstance(state, PipelineState) and state.x == 2
    assert pipe(x=1, output="x") == 2
    assert pipe(x=1, output=["x", "amount"]) == {"x": 2, "amount": 1}
    with pytest.raises(ValueError, match=r"Output 'y' is not produced by this pipeline. .*Available outputs: \['amount', 'x'\]"):
        pipe(x=1, output="y")
    with pytest.raises(ValueError, match="is not a valid output type"):
        pipe(x=1, output=3)
    with pytest.warns(UserWarning, match="Unexpected input 'amout' provided. This input will be ignored. Did you mean 'amount'?"):
        assert pipe(x=1, amout=5, output="x") == 2
    with pytest.raises(TypeError, match="`state` must be a PipelineState"):
        pipe({"x": 1})
    # chaining: the given state is not mutated, new kwargs override its values
    first = pipe(x=1)
    second = pipe(first, x=10)
    assert first.x == 2 and second.x == 11
    third = pipe(first)
    assert third.x == 3 and first.x == 2


def test_declared_but_absent_output_is_none():
    from .helpers import AutoImageBlocks

    pipe = AutoImageBlocks().init_pipeline()
    assert pipe(prompt="p", output="workflow") is None  # skipped branch


def test_save_pretrained_round_trip(two_folders, tmp_path):
    pipe = ModularPipeline(_blocks(), two_folders["pipe"])
    pipe.load_components()
    plain = TinyModel(bias=0.5)
    pipe.update_components(model=plain)  # untagged: must be saved and indexed locally
    save_dir = str(tmp_path / "saved")
    pipe.save_pretrained(save_dir)
    with open(os.path.join(save_dir, "modular_model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "ModularPipeline" and index["_blocks_class_name"] == "SequentialPipelineBlocks"
    assert "_diffusers_version" in index
    assert index["model"][2]["pretrained_model_name_or_path"] == save_dir and index["model"][2]["subfolder"] == "model"
    assert index["text_model"][2]["pretrained_model_name_or_path"] == two_folders["b"]  # still points at its source
    assert os.path.isdir(os.path.join(save_dir, "text_model"))  # weights written anyway
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".diffblocks-save-")]
    reloaded = ModularPipeline(_blocks(), save_dir)
    reloaded.load_components()
    torch.testing.assert_close(reloaded.model.linear.weight, plain.linear.weight)
    assert reloaded.model.config["bias"] == 0.5
    # overwrite_modular_index points everything at the save dir
    pipe.save_pretrained(save_dir, overwrite_modular_index=True)
    with open(os.path.join(save_dir, "modular_model_index.json")) as f:
        index = json.load(f)
    assert index["text_model"][2]["pretrained_model_name_or_path"] == save_dir


def test_save_failure_leaves_no_folder(tmp_path):
    class Broken(TinyModel):
        def save_pretrained(self, save_directory, **kwargs):
            os.makedirs(save_directory)
            raise RuntimeError("disk full")

    pipe = ModelBlock().init_pipeline()
    pipe.update_components(model=Broken())
    with pytest.raises(RuntimeError, match="disk full"):
        pipe.save_pretrained(str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_devices_and_to():
    pipe = ModelBlock().init_pipeline()
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    pipe.update_components(model=TinyModel())
    assert pipe.to(torch.float64) is pipe and pipe.model.linear.weight.dtype == torch.float64
    pipe.to("cpu", torch.float32)
    assert pipe.dtype == torch.float32
    pipe.to(device="cpu", dtype=torch.float16)
    assert pipe.dtype == torch.float16
    with pytest.raises(ValueError, match="first corresponds to `device`"):
        pipe.to(torch.float32, "cpu")
    with pytest.raises(ValueError, match="at most two arguments"):
        pipe.to("cpu", torch.float32, 1)
    with pytest.raises(ValueError, match="`dtype` both as an argument and as a keyword"):
        pipe.to(torch.float32, dtype=torch.float32)
    with pytest.raises(ValueError, match="`device` must be a torch device"):
        pipe.to("nonsense-device")
    assert pipe._execution_device == torch.device("cpu")
    pipe.model._diffblocks_execution_device = torch.device("meta")  # managed by an offload hook
    assert pipe._execution_device == torch.device("meta")


class FakeManager:
    def __init__(self, reuse=None):
        self.components = {}
        self.added = []
        self.reuse_by_load_id = reuse is not None
        self._reuse = reuse
        self.lookups = []

    def add(self, name, component, collection=None):
        cid = f"{name}_{id(component)}"
        self.components[cid] = component
        self.added.append((name, component, collection))
        return cid

    def remove(self, cid):
        self.components.pop(cid)

    def _lookup_load_id(self, load_id, torch_dtype):
        self.lookups.append((load_id, torch_dtype))
        return self._reuse


def test_components_manager_integration(two_folders, caplog):
    manager = FakeManager()
    pipe = _blocks().init_pipeline(two_folders["pipe"], components_manager=manager, collection="c1")
    assert manager.added == []  # nothing loaded, scheduler (from_config) not registered
    pipe.load_components(names="model")
    assert [(n, c) for n, _, c in manager.added] == [("model", "c1")]
    other = TinyScheduler()
    pipe.update_components(scheduler=other)
    assert manager.added[-1][:2] == ("scheduler", other)
    pipe.unload_components("model")
    assert not any(k.startswith("model_") for k in manager.components)

    shared = TinyModel()
    reuse = FakeManager(reuse=shared)
    pipe2 = _blocks().init_pipeline(two_folders["pipe"], components_manager=reuse, collection="c2")
    with caplog.at_level(logging.INFO):
        pipe2.load_components(names="model", torch_dtype=torch.float16)
    assert pipe2.model is shared
    assert reuse.lookups == [(f"{two_folders['a']}|unet|null|null", torch.float16)]
    assert reuse.added[0][:3] == ("model", shared, "c2")
    assert "Reusing model" in caplog.text


def test_family_registry(tmp_path):
    class TinyModularPipeline(ModularPipeline):
        default_blocks_name = None

        @property
        def vae_scale_factor(self):
            return 8

    register_modular_pipeline("tiny", TinyModularPipeline)
    try:
        pipe = ModelBlock().init_pipeline()
        assert type(pipe) is TinyModularPipeline and pipe.vae_scale_factor == 8
        assert get_modular_pipeline_class("tiny") is TinyModularPipeline
        assert MODULAR_PIPELINE_MAPPING["tiny"]() == "TinyModularPipeline" and "tiny" in MODULAR_PIPELINE_MAPPING
        pipe.save_pretrained(str(tmp_path / "saved"))
        with open(tmp_path / "saved" / "modular_model_index.json") as f:
            assert json.load(f)["_class_name"] == "TinyModularPipeline"
    finally:
        from diffblocks.modular_pipelines.modular_pipeline import _PIPELINE_REGISTRY

        _PIPELINE_REGISTRY.pop("tiny", None)
    assert get_modular_pipeline_class("unknown-family") is None
    with pytest.raises(TypeError, match="ModularPipeline subclass"):
        register_modular_pipeline("x", object)
    with pytest.raises(ValueError, match="module:Class"):
        register_modular_pipeline("x", "no_colon")


CUSTOM_BLOCK_SOURCE = textwrap.dedent('''
    from diffblocks.modular_pipelines import ModularPipelineBlocks, InputParam, OutputParam, ComponentSpec


    class DummyCustomBlockSimple(ModularPipelineBlocks):
        _requirements = {"torch": ">=1.0"}

        def __init__(self, suffix="!"):
            self.suffix = suffix

        @property
        def inputs(self):
            return [InputParam("prompt", required=True)]

        @property
        def intermediate_inputs(self):
            return []

        @property
        def intermediate_outputs(self):
            return [OutputParam("output_prompt")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.output_prompt = "Modular diffusers + " + bs.prompt + self.suffix
            self.set_block_state(state, bs)
            return components, state
''')


def test_custom_block_code_round_trip(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "my_block.py").write_text(CUSTOM_BLOCK_SOURCE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_block", folder / "my_block.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    block = module.DummyCustomBlockSimple()
    block.save_pretrained(str(folder))
    with open(folder / "modular_config.json") as f:
        config = json.load(f)
    assert config["auto_map"] == {"ModularPipelineBlocks": "my_block.DummyCustomBlockSimple"}
    assert config["requirements"] == {"torch": ">=1.0"}
    with pytest.raises(ValueError, match="contains custom code. Pass `trust_remote_code=True`"):
        ModularPipelineBlocks.from_pretrained(str(folder))
    loaded = ModularPipelineBlocks.from_pretrained(str(folder), trust_remote_code=True, suffix="?")
    pipe = loaded.init_pipeline()
    state = pipe(prompt="hi")
    assert set(state.values) == {"prompt", "output_prompt"}
    assert state.output_prompt == "Modular diffusers + hi?"
    # a pipeline saved next to the block code comes back with those blocks
    pipe.save_pretrained(str(folder))
    again = ModularPipeline.from_pretrained(str(folder), trust_remote_code=True)
    assert type(again._blocks).__name__ == "DummyCustomBlockSimple"
    assert again(prompt="x", output="output_prompt") == "Modular diffusers + x!"


def test_from_pretrained_workflow_and_class_resolution(tmp_path):
    from .test_blocks import WorkflowBlocks

    (tmp_path / "modular_model_index.json").write_text(json.dumps({"_class_name": "ModularPipeline"}))
    pipe = ModularPipeline(WorkflowBlocks(), str(tmp_path), workflow="img2img")
    assert list(pipe.blocks.sub_blocks) == ["add", "image", "loop"]
    assert type(pipe.blocks.sub_blocks["image"]).__name__ == "ImageToImageBlock"
    with pytest.raises(ValueError, match="Available workflows"):
        ModularPipeline(WorkflowBlocks(), str(tmp_path), workflow="nope")
    with pytest.raises(ValueError, match="requires pipeline blocks"):
        ModularPipeline.from_pretrained(str(tmp_path), workflow="img2img")


def test_pipeline_owns_a_private_copy_of_its_blocks():
    blocks = SequentialPipelineBlocks.from_blocks_dict({"add": AddBlock, "text": TextBlock})
    pipe = ModularPipeline(blocks)
    assert pipe(x=1, prompt="ab", output="prompt_len") == 2
    blocks.sub_blocks.pop("text")  # editing the caller's object later does not change the pipeline
    assert pipe(x=1, prompt="abc", output="prompt_len") == 3
    copy_ = pipe.blocks
    assert "_decl_cache" not in copy_.__dict__ and "_decl_cache" not in copy_.sub_blocks["add"].__dict__
    copy_.sub_blocks.pop("text")
    assert copy_.input_names == ["x", "amount"]
    assert "prompt" in pipe.blocks.input_names


def test_update_components_with_specs(two_folders):
    pipe = ModelBlock().init_pipeline()
    pipe.update_components(model=TinyModel())
    pipe.update_components(scheduler=ComponentSpec("ignored", TinyScheduler, config={"beta": 0.123},
                                                   default_creation_method="from_config"))
    assert pipe.scheduler.config["beta"] == 0.123
    pipe.update_components(model=ComponentSpec("model", TinyModel, pretrained_model_name_or_path=two_folders["a"],
                                               subfolder="unet"))
    assert pipe.model is None and pipe.null_component_names == ["model"]
    assert pipe.config["model"][2]["pretrained_model_name_or_path"] == two_folders["a"]
    pipe.load_components()
    torch.testing.assert_close(pipe.model.linear.weight, two_folders["model"].linear.weight)


def test_missing_required_input_fails_before_any_block_runs():
    ran = []

    class First(AddBlock):
        def __call__(self, components, state):
            ran.append("first")
            return super().__call__(components, state)

    pipe = SequentialPipelineBlocks.from_blocks_dict({"first": First, "text": TextBlock}).init_pipeline()
    with pytest.raises(ValueError, match=r"Required input 'prompt' is missing: pass `prompt=...` to the pipeline"):
        pipe(x=1)
    assert ran == []
    # an input some block can produce is not checked early (it may be produced at run time)
    class MaybeMakesPrompt(AddBlock):
        @property
        def intermediate_outputs(self):
            return [OutputParam("x"), OutputParam("prompt")]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.prompt = "made"
            bs.x = 0
            self.set_block_state(state, bs)
            return components, state

    class Skippable(ConditionalPipelineBlocks):
        block_classes = [MaybeMakesPrompt]
        block_names = ["make"]
        block_trigger_inputs = ["flag"]

        def select_block(self, flag=None):
            return "make" if flag else None

    pipe = SequentialPipelineBlocks.from_blocks_dict({"maybe": Skippable, "text": TextBlock}).init_pipeline()
    assert "flag" in pipe.blocks.input_names  # a trigger no branch declares is still a pipeline input
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipe(x=1, flag=True, output="prompt_len") == 4
    with pytest.raises(ValueError, match="Required input 'prompt' is missing"):
        pipe(x=1)


def test_seed_era_state_constructor():
    state = PipelineState(inputs={"a": 1}, intermediates={"b": 2}, input_kwargs={"g": ["a"]},
                          intermediate_kwargs={"g": ["b"]})
    assert state.get_by_kwargs("g") == {"a": 1, "b": 2}


def test_from_pretrained_accepts_path_objects_and_hub_kwargs(two_folders, caplog):
    import pathlib

    from .test_blocks import WorkflowBlocks  # noqa: F401  (any importable blocks class works via `blocks=`)

    with caplog.at_level(logging.WARNING):
        pipe = ModularPipeline(_blocks(), pathlib.Path(two_folders["pipe"]), force_download=True, proxies=None,
                               local_files_only=True, unknown_option=1)
    assert pipe._pretrained_model_name_or_path == two_folders["pipe"]
    assert pipe.config.factor == 3.0
    assert "Unexpected input '['unknown_option']' provided. This input will be ignored." in caplog.text
