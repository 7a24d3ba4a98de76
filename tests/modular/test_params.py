"""InputParam / OutputParam / InsertableDict / ComponentSpec / ConfigSpec / combine_inputs / docs."""
import os
import warnings

import pytest
import torch

from diffblocks.modular_pipelines import ComponentSpec, ConfigSpec, InputParam, InsertableDict, OutputParam
from diffblocks.modular_pipelines.modular_pipeline_utils import (
    combine_inputs,
    combine_outputs,
    get_load_id,
    make_doc_string,
    validate_requirements,
)

from .helpers import PlainGuider, TinyModel, TinyScheduler, write_tiny_model


def test_params_fields_repr_equality():
    p = InputParam("strength", type_hint=float, default=0.3)
    assert repr(p) == "<strength: optional, default=0.3>"
    assert repr(InputParam("prompt", required=True)) == "<prompt: required, default=None>"
    assert p == InputParam("strength", type_hint=float, default=0.3)
    assert p != InputParam("strength", type_hint=float, default=0.4)
    assert repr(OutputParam("images", type_hint=list)) == "<images: list>"
    group = InputParam(kwargs_type="denoiser_input_fields")
    assert group.name is None and group.kwargs_type == "denoiser_input_fields"


def test_templates():
    p = InputParam.template("num_inference_steps")
    assert (p.name, p.type_hint, p.default, p.required) == ("num_inference_steps", int, 50, False)
    q = InputParam.template("prompt", note="for the refiner", name="prompt_2", required=False)
    assert q.name == "prompt_2" and q.required is False and q.description.endswith("(for the refiner)")
    g = InputParam.template("denoiser_input_fields")
    assert g.name is None and g.kwargs_type == "denoiser_input_fields"
    assert InputParam.template("dtype").default is torch.float32
    o = OutputParam.template("prompt_embeds")
    assert o.kwargs_type == "denoiser_input_fields"
    with pytest.raises(ValueError, match="InputParam template for nope not found"):
        InputParam.template("nope")
    with pytest.raises(ValueError, match="OutputParam template for nope not found"):
        OutputParam.template("nope")


def test_insertable_dict():
    d = InsertableDict([("a", 1), ("b", 2), ("c", 3)])
    assert d.insert("x", 9, 1) is d
    assert list(d) == ["a", "x", "b", "c"]
    d.insert("a", 0, -1)  # an existing key moves
    assert list(d) == ["x", "b", "a", "c"]
    d["b"] = 20  # replacing keeps position
    assert list(d) == ["x", "b", "a", "c"] and d["b"] == 20
    assert d.pop("x") == 9
    assert repr(InsertableDict()) == "InsertableDict()"
    r = InsertableDict([("m", TinyModel), ("s", TinyScheduler())])
    assert repr(r) == (
        "InsertableDict([\n"
        f"  0: ('m', <class '{TinyModel.__module__}.TinyModel'>)\n"
        f"  1: ('s', <obj '{TinyScheduler.__module__}.TinyScheduler'>)\n"
        "])"
    )
    with pytest.raises(TypeError, match="`index` must be an int"):
        d.insert("q", 1, "0")


def test_component_spec_load_id_and_equality():
    spec = ComponentSpec("unet", TinyModel, pretrained_model_name_or_path="repo", subfolder="unet", variant="fp16")
    assert spec.load_id == "repo|unet|fp16|null"
    assert ComponentSpec("u", pretrained_model_name_or_path="some/repo").load_id == "some/repo||null|null"
    assert ComponentSpec("u").load_id == "null||null|null"
    assert ComponentSpec("s", TinyScheduler, default_creation_method="from_config").load_id == "null"
    assert ComponentSpec.decode_load_id("repo|unet|fp16|null") == {
        "pretrained_model_name_or_path": "repo", "subfolder": "unet", "variant": "fp16", "revision": None}
    assert ComponentSpec.decode_load_id("null") == dict.fromkeys(ComponentSpec.loading_fields())
    assert ComponentSpec.decode_load_id("a|b") == {
        "pretrained_model_name_or_path": "a", "subfolder": "b", "variant": None, "revision": None}
    # repo= alias
    assert ComponentSpec("u", repo="org/x", subfolder="unet").pretrained_model_name_or_path == "org/x"
    # equality ignores type_hint and config
    other = ComponentSpec("unet", torch.nn.Linear, pretrained_model_name_or_path="repo", subfolder="unet",
                          variant="fp16", config={"a": 1})
    assert spec == other and hash(spec) == hash(other)
    assert spec != ComponentSpec("unet", TinyModel, pretrained_model_name_or_path="repo", subfolder="vae")
    assert ComponentSpec.loading_fields() == ["pretrained_model_name_or_path", "subfolder", "variant", "revision"]
    with pytest.raises(ValueError, match="default_creation_method"):
        ComponentSpec("x", default_creation_method="magic")


def test_component_spec_create():
    spec = ComponentSpec("scheduler", TinyScheduler, config={"beta": 0.5}, default_creation_method="from_config")
    sched = spec.create()
    assert isinstance(sched, TinyScheduler) and sched.config["beta"] == 0.5
    assert get_load_id(sched) == "null" and sched._diffusers_load_id == "null"
    assert spec.create(beta=0.7).config["beta"] == 0.7
    guider = ComponentSpec("guider", PlainGuider, config={"guidance_scale": 3.0, "unused": 1},
                           default_creation_method="from_config").create()
    assert guider.guidance_scale == 3.0
    with pytest.raises(ValueError, match="`type_hint` is required when using from_config creation method"):
        ComponentSpec("x", default_creation_method="from_config").create()


def test_component_spec_load(tmp_path):
    original = write_tiny_model(str(tmp_path), "unet", seed=3)
    spec = ComponentSpec("unet", TinyModel, repo=str(tmp_path), subfolder="unet")
    model = spec.load(torch_dtype=torch.float64)
    assert isinstance(model, TinyModel)
    assert model.linear.weight.dtype == torch.float64
    torch.testing.assert_close(model.linear.weight.float(), original.linear.weight)
    assert get_load_id(model) == f"{tmp_path}|unet|null|null"
    # dtype is the same keyword
    assert spec.load(dtype=torch.float16).linear.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="passed both `dtype`"):
        spec.load(dtype=torch.float16, torch_dtype=torch.float32)
    # loading fields passed to load() override the spec and are recorded
    write_tiny_model(str(tmp_path), "other", seed=4)
    m2 = spec.load(subfolder="other")
    assert spec.subfolder == "other" and get_load_id(m2).endswith("|other|null|null")
    with pytest.raises(ValueError, match="`pretrained_model_name_or_path` info is required"):
        ComponentSpec("unet", TinyModel).load()
    with pytest.raises(ValueError, match="Unable to load unet using load method"):
        ComponentSpec("unet", TinyModel, pretrained_model_name_or_path=str(tmp_path / "nowhere")).load()


def test_component_spec_drops_dtype_for_non_modules(tmp_path):
    TinyScheduler(beta=0.25).save_pretrained(str(tmp_path / "scheduler"))
    spec = ComponentSpec("scheduler", TinyScheduler, pretrained_model_name_or_path=str(tmp_path), subfolder="scheduler")
    sched = spec.load(torch_dtype=torch.float16)  # would raise TypeError if forwarded
    assert sched.config["beta"] == 0.25


def test_component_spec_from_component(tmp_path):
    write_tiny_model(str(tmp_path), "unet")
    model = ComponentSpec("unet", TinyModel, pretrained_model_name_or_path=str(tmp_path), subfolder="unet").load()
    spec = ComponentSpec.from_component("unet", model)
    assert spec.default_creation_method == "from_pretrained"
    assert (spec.pretrained_model_name_or_path, spec.subfolder) == (str(tmp_path), "unet")
    assert spec.type_hint is TinyModel
    sched = TinyScheduler(beta=0.9)
    sspec = ComponentSpec.from_component("scheduler", sched)
    assert sspec.default_creation_method == "from_config" and sspec.config["beta"] == 0.9
    with pytest.raises(ValueError, match="nn.Module"):
        ComponentSpec.from_component("unet", TinyModel())
    with pytest.raises(ValueError, match=r"Cannot create ComponentSpec from guider\(PlainGuider\)"):
        ComponentSpec.from_component("guider", PlainGuider())


def test_component_spec_from_processor_object():
    # transformers' image processors have no `config`; they describe themselves with to_dict()
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessor(size=32, crop_size=32)
    spec = ComponentSpec.from_component("feature_extractor", processor)
    assert spec.default_creation_method == "from_config"
    assert spec.type_hint is type(processor)
    rebuilt = spec.create()
    assert type(rebuilt) is type(processor)
    assert rebuilt.to_dict()["crop_size"] == processor.to_dict()["crop_size"]
    assert rebuilt.to_dict()["size"] == processor.to_dict()["size"]


def test_load_id_compat_attribute():
    m = TinyModel()
    m._diffblocks_load_id = "a|b|null|null"
    m._diffusers_load_id = "a|b|null|null"
    assert get_load_id(m) == "a|b|null|null"
    m._diffusers_load_id = "null"  # a diffusers script marking the object as modified
    assert get_load_id(m) == "null"


def test_config_spec():
    assert ConfigSpec("force_zeros_for_empty_prompt", True) == ConfigSpec("force_zeros_for_empty_prompt", True)
    assert ConfigSpec("a", 1) != ConfigSpec("a", 2)


def test_combine_inputs_rules():
    a = InputParam("x", default=5, description="first")
    b = InputParam("x", default=5, description="second")
    (merged,) = combine_inputs(("block-a", [a]), ("block-b", [b]))
    assert merged is a and merged == InputParam("x", default=5, description="first")
    (merged,) = combine_inputs(("block-a", [InputParam("x")]), ("block-b", [InputParam("x", default=5)]))
    assert merged.default is None and merged.defaults_by_block == {"block-a": None, "block-b": 5}
    (merged,) = combine_inputs(("a", [InputParam("x", default=1)]), ("b", [InputParam("x", default=2)]),
                               ("c", [InputParam("x", default=1)]))
    assert merged.defaults_by_block == {"a": 1, "b": 2, "c": 1}
    nested = InputParam("x", defaults_by_block={"branch-a": 1, "branch-b": 2})
    (merged,) = combine_inputs(("block-a", [InputParam("x", default=3)]), ("block-b", [nested]))
    assert merged.defaults_by_block == {"block-a": 3, "block-b.branch-a": 1, "block-b.branch-b": 2}
    # group inputs are keyed by kwargs_type, so two groups survive
    groups = combine_inputs(("a", [InputParam(kwargs_type="g1")]), ("b", [InputParam(kwargs_type="g2")]))
    assert [g.kwargs_type for g in groups] == ["g1", "g2"]
    # tensors as defaults do not break the comparison
    t = torch.ones(2)
    (merged,) = combine_inputs(("a", [InputParam("t", default=t)]), ("b", [InputParam("t", default=t)]))
    assert merged.default is t


def test_combine_outputs_prefers_tagged():
    out = combine_outputs(("a", [OutputParam("e"), OutputParam("f")]),
                          ("b", [OutputParam("e", kwargs_type="g"), OutputParam("f", description="later")]))
    assert [(o.name, o.kwargs_type, o.description) for o in out] == [("e", "g", ""), ("f", None, "")]


def test_make_doc_string_format():
    doc = make_doc_string(
        [InputParam("prompt", type_hint=str, required=True, description="The prompt."),
         InputParam("steps", type_hint=int, default=50),
         InputParam("strength", type_hint=float, defaults_by_block={"a": 0.9999, "b": 0.3, "c": 0.3}),
         InputParam("eta", type_hint=float),
         InputParam(kwargs_type="denoiser_input_fields")],
        [OutputParam("images", type_hint=list, description="Images.")],
        description="Line one.\nLine two.",
        class_name="MyBlock",
        expected_components=[ComponentSpec("unet", TinyModel, description="denoiser", pretrained_model_name_or_path="r",
                                           subfolder="unet")],
        expected_configs=[ConfigSpec("factor", 2.0)],
    )
    expected = (
        "class MyBlock\n\n"
        "  Line one.\n  Line two.\n\n"
        "  Components:\n      unet (`TinyModel`): denoiser [pretrained_model_name_or_path=r, subfolder=unet]\n\n"
        "  Configs:\n      factor (default: 2.0)\n\n"
        "  Inputs:\n"
        "      prompt (`str`):\n          The prompt.\n"
        "      steps (`int`, *optional*, defaults to 50):\n          TODO: Add description.\n"
        "      strength (`float`, *optional*, defaults to 0.9999 or 0.3, depending on the workflow):\n"
        "          TODO: Add description.\n"
        "      eta (`float`, *optional*):\n          TODO: Add description.\n"
        "      **denoiser_input_fields (`None`, *optional*):\n          TODO: Add description.\n\n"
        "  Outputs:\n      images (`list`):\n          Images."
    )
    assert doc == expected


def test_validate_requirements(caplog):
    with caplog.at_level("WARNING"):
        reqs = validate_requirements({"xyz_not_installed": ">=0.8.0", "nested": {"torch": "1.0"}, "abc": None})
    assert reqs == {"xyz_not_installed": ">=0.8.0", "torch": "==1.0", "abc": ""}
    assert "xyz_not_installed was specified in the requirements but wasn't found" in caplog.text
    assert "torch requirement '==1.0' is not satisfied" in caplog.text
    with pytest.raises(ValueError, match="Requirement specifier 'bad spec' for torch is invalid"):
        validate_requirements({"torch": "bad spec"})
    with pytest.raises(ValueError, match="dictionary"):
        validate_requirements(["torch"])


def test_component_spec_single_file(tmp_path):
    class SingleFileModel(TinyModel):
        @classmethod
        def from_single_file(cls, path, torch_dtype=None, **kwargs):
            model = cls()
            model.loaded_from = (path, torch_dtype, kwargs)
            return model

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not really used")
    spec = ComponentSpec("controlnet", SingleFileModel, pretrained_model_name_or_path=str(ckpt))
    model = spec.load(torch_dtype=torch.float16, config="cfg-dir")
    assert model.loaded_from == (str(ckpt), torch.float16, {"config": "cfg-dir"})
    assert spec.pretrained_model_name_or_path == str(ckpt)
    assert get_load_id(model) == f"{ckpt}||null|null"
    with pytest.raises(ValueError, match="`type_hint` is required when loading a single file model but is missing "
                                         "for component: controlnet"):
        ComponentSpec("controlnet", pretrained_model_name_or_path=str(ckpt)).load()
