"""A LoRA load that fails leaves the pipeline exactly as it was (checked up front, or rolled back mid-injection)."""
import numpy as np
import pytest
import torch

from tests.fixtures.tiny import build_tiny_sd_folder
from tests.loaders.test_lora import make_lora, run


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffblocks import StableDiffusionPipeline

    folder = build_tiny_sd_folder(str(tmp_path_factory.mktemp("lora_atomic") / "sd"))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _snapshot(pipe):
    return {c: ({k: v.clone() for k, v in getattr(pipe, c).state_dict().items()},
                [p.requires_grad for p in getattr(pipe, c).parameters()],
                [type(m).__name__ for m in getattr(pipe, c).modules()])
            for c in ("unet", "text_encoder")}


def _assert_same(pipe, snap):
    for c, (weights, grads, classes) in snap.items():
        model = getattr(pipe, c)
        now = model.state_dict()
        assert list(now) == list(weights), c
        assert all(torch.equal(now[k], weights[k]) for k in weights), c
        assert [p.requires_grad for p in model.parameters()] == grads, c
        assert [type(m).__name__ for m in model.modules()] == classes, c
        assert not hasattr(model, "peft_config"), c


def test_bad_shape_in_text_encoder_touches_nothing(pipe):
    snap = _snapshot(pipe)
    sd = make_lora(pipe, "peft", seed=1)
    key = next(k for k in sd if k.startswith("text_encoder.") and k.endswith("lora_A.weight"))
    sd[key] = torch.zeros(4, sd[key].shape[1] + 1)
    with pytest.raises(ValueError, match=r"do not fit the model's layers.*lora_A\.weight: \(4, \d+\) \(expected"):
        pipe.load_lora_weights(sd, adapter_name="bad")
    assert pipe.get_list_adapters() == {}
    _assert_same(pipe, snap)


def test_missing_up_matrix_and_unknown_param(pipe):
    snap = _snapshot(pipe)
    sd = make_lora(pipe, "peft", seed=2, with_te=False)
    key = next(k for k in sd if k.endswith("lora_B.weight"))
    del sd[key]
    with pytest.raises(ValueError, match="need both lora_A and lora_B weights"):
        pipe.load_lora_weights(sd)
    sd = make_lora(pipe, "peft", seed=2, with_te=False)
    name = next(k for k in sd if k.endswith("lora_A.weight"))[: -len(".lora_A.weight")]
    sd[name + ".lora_C.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"lora_C\.weight"):
        pipe.load_lora_weights(sd)
    _assert_same(pipe, snap)


def test_failure_during_injection_rolls_back_every_component(pipe, monkeypatch):
    from diffblocks.loaders import lora as lora_mod

    base = run(pipe)
    pipe.load_lora_weights(make_lora(pipe, "peft", seed=3), adapter_name="keep")
    with_keep = run(pipe)
    snap_layers = {c: [type(m).__name__ for m in getattr(pipe, c).modules()] for c in ("unet", "text_encoder")}
    real = lora_mod.inject_lora_plan
    calls = []

    def flaky(plan):
        calls.append(plan.component)
        if len(calls) == 2:  # the unet went in, the text encoder fails half-way
            real(plan)
            raise RuntimeError("boom")
        return real(plan)

    monkeypatch.setattr(lora_mod, "inject_lora_plan", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        pipe.load_lora_weights(make_lora(pipe, "kohya", seed=4, alpha=2.0), adapter_name="new")
    monkeypatch.undo()
    assert calls == ["unet", "text_encoder"]
    assert pipe.get_list_adapters() == {"unet": ["keep"], "text_encoder": ["keep"]}
    assert {c: [type(m).__name__ for m in getattr(pipe, c).modules()] for c in snap_layers} == snap_layers
    assert pipe.get_active_adapters() == ["keep"]
    assert np.array_equal(run(pipe), with_keep)
    pipe.unload_lora_weights()
    assert np.array_equal(run(pipe), base)


def test_last_loaded_adapter_is_the_active_one_and_base_is_frozen(pipe):
    pipe.unet.requires_grad_(True)  # (unloading does not thaw the base weights, neither in diffusers)
    pipe.load_lora_weights(make_lora(pipe, "peft", seed=5), adapter_name="one")
    pipe.load_lora_weights(make_lora(pipe, "peft", seed=6, with_te=False), adapter_name="two")
    assert pipe.get_active_adapters() == ["two"]  # as in diffusers
    lora_params = [n for n, p in pipe.unet.named_parameters() if "lora_" in n]
    assert lora_params and not any(p.requires_grad for n, p in pipe.unet.named_parameters() if "lora_" not in n)
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}


def test_metadata_not_covering_the_weights_is_refused_cleanly(pipe):
    from diffblocks.loaders.lora import inject_lora_plan, plan_lora_for_model

    snap = _snapshot(pipe)
    sd = make_lora(pipe, "peft", seed=7, with_te=False)
    names = sorted({k.rsplit(".lora_", 1)[0][len("unet."):] for k in sd})
    unet_sd = {k[len("unet."):]: v for k, v in sd.items()}
    plan = plan_lora_for_model(pipe.unet, unet_sd, metadata={"r": 4, "lora_alpha": 4, "target_modules": names[:1]},
                               adapter_name="meta", component="unet")
    with pytest.raises(ValueError, match=r"does not target '.*', which the weights name"):
        inject_lora_plan(plan)
    _assert_same(pipe, snap)
