"""diffblocks' CLIP text encoders against transformers' (the oracle): same weights, same outputs; files both ways."""
from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from diffblocks.models.clip_text import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)

TOL = 1e-5


def _config(act: str, eos: int, **extra) -> dict:
    cfg = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
               max_position_embeddings=16, hidden_act=act, bos_token_id=0, pad_token_id=1, eos_token_id=eos,
               projection_dim=24, layer_norm_eps=1e-5)
    cfg.update(extra)
    return cfg


def _pair(projection: bool, cfg: dict, seed: int = 0):
    """(ours, transformers') with the same (seeded, non-trivial) weights."""
    ref_cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    ours_cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    torch.manual_seed(seed)
    ref = ref_cls(transformers.CLIPTextConfig(**cfg)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    ours = ours_cls(CLIPTextConfig(**cfg)).eval()
    state = ours._convert_state_dict_keys(ref.state_dict())
    assert set(state) == set(ours.state_dict()), "parameter names differ from transformers' (after the prefix)"
    ours.load_state_dict(state, strict=True)
    return ours, ref


def _ids(eos: int, batch: int = 3, length: int = 16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (batch, length), generator=gen)
    ids[:, 0] = 0
    end = 98 if eos == 2 else eos  # legacy configs pool at the highest id
    for row, pos in enumerate((5, 9, 15)[:batch]):
        ids[row, pos] = end
        ids[row, pos + 1:] = 1 if eos == 2 else end
    return ids


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("eos", [2, 97])
@pytest.mark.parametrize("projection", [False, True])
def test_outputs_match_transformers(act, eos, projection):
    ours, ref = _pair(projection, _config(act, eos))
    ids = _ids(eos)
    with torch.no_grad():
        a = ours(ids, output_hidden_states=True)
        b = ref(ids, output_hidden_states=True)
    assert a.last_hidden_state.shape == (3, 16, 32)
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() <= TOL
    assert len(a.hidden_states) == len(b.hidden_states) == 4  # embeddings + one per layer
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert (x - y).abs().max() <= TOL
    assert (a.hidden_states[-2] - b.hidden_states[-2]).abs().max() <= TOL
    if projection:
        assert a.text_embeds.shape == (3, 24)
        assert (a.text_embeds - b.text_embeds).abs().max() <= TOL
        assert a[0] is a.text_embeds  # tuple view: text_embeds first, like transformers
    else:
        assert a.pooler_output.shape == (3, 32)
        assert (a.pooler_output - b.pooler_output).abs().max() <= TOL
        assert a[0] is a.last_hidden_state and a[1] is a.pooler_output
        # the pooled row is the end token's: legacy argmax of ids or the first eos id
        expected_pos = ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)
        assert torch.equal(a.pooler_output, a.last_hidden_state[torch.arange(3), expected_pos])


@pytest.mark.parametrize("projection", [False, True])
def test_attention_mask_position_ids_and_tuple_output(projection):
    ours, ref = _pair(projection, _config("quick_gelu", 97))
    ids = _ids(97)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    pos = torch.arange(16).flip(0)[None].expand(3, -1)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, position_ids=pos)
        b = ref(ids, attention_mask=mask, position_ids=pos)
        tup = ours(ids, return_dict=False)
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() <= TOL
    assert isinstance(tup, tuple) and len(tup) == 2
    if projection:  # (text_embeds, last_hidden_state)
        assert torch.equal(tup[1], ours(ids).last_hidden_state)
        assert (a.text_embeds - b.text_embeds).abs().max() <= TOL
    else:  # (last_hidden_state, pooler_output)
        assert torch.equal(tup[1], ours(ids).pooler_output)
        assert (a.pooler_output - b.pooler_output).abs().max() <= TOL
    assert torch.equal(tup[0], ours(ids)[0])


def test_legacy_eos_pooling_differs_from_modern_on_same_ids():
    ids = torch.tensor([[0, 5, 97, 98, 1, 1]])
    legacy, _ = _pair(False, _config("gelu", 2, max_position_embeddings=6))
    modern = CLIPTextModel(CLIPTextConfig(**_config("gelu", 97, max_position_embeddings=6))).eval()
    modern.load_state_dict(legacy.state_dict())
    with torch.no_grad():
        a, b = legacy(ids), modern(ids)
    assert torch.equal(a.pooler_output, a.last_hidden_state[:, 3])  # highest id (98)
    assert torch.equal(b.pooler_output, b.last_hidden_state[:, 2])  # first eos (97)


@pytest.mark.parametrize("projection", [False, True])
def test_we_save_transformers_loads(tmp_path, projection):
    ours, _ = _pair(projection, _config("quick_gelu", 97))
    ours.save_pretrained(tmp_path / "te")
    assert sorted(os.listdir(tmp_path / "te")) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "te" / "config.json").read_text())
    assert cfg["model_type"] == "clip_text_model"
    assert cfg["architectures"] == [type(ours).__name__]
    assert cfg["hidden_act"] == "quick_gelu" and cfg["eos_token_id"] == 97 and cfg["dtype"] == "float32"
    ref_cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    ref = ref_cls.from_pretrained(tmp_path / "te").eval()
    ids = _ids(97)
    with torch.no_grad():
        assert (ours(ids)[0] - ref(ids)[0]).abs().max() <= TOL


@pytest.mark.parametrize("projection", [False, True])
def test_transformers_saves_we_load(tmp_path, projection):
    ours_before, ref = _pair(projection, _config("gelu", 2))
    ref.save_pretrained(tmp_path / "te")
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    ours = cls.from_pretrained(tmp_path / "te")
    assert not ours.training and ours.dtype == torch.float32
    assert ours.config.hidden_act == "gelu" and ours.config.eos_token_id == 2
    assert torch.equal(ours.text_model.embeddings.position_ids, torch.arange(16)[None])
    ids = _ids(2)
    with torch.no_grad():
        a, b = ours(ids, output_hidden_states=True), ref(ids, output_hidden_states=True)
    assert (a[0] - b[0]).abs().max() <= TOL
    assert (a.hidden_states[-2] - b.hidden_states[-2]).abs().max() <= TOL


def test_loads_legacy_prefixed_keys_bin_shards_variant_and_subfolder(tmp_path):
    ours, _ = _pair(False, _config("quick_gelu", 97))
    # transformers 4 layout with the persisted position_ids buffer, as .bin
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    folder = tmp_path / "root" / "text_encoder"
    folder.mkdir(parents=True)
    ours.config.save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    loaded = CLIPTextModel.from_pretrained(tmp_path / "root", subfolder="text_encoder")
    ids = _ids(97)
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], ours(ids)[0])
    # shards + fp16 variant
    ours.save_pretrained(tmp_path / "sharded", max_shard_size=20_000)
    files = sorted(os.listdir(tmp_path / "sharded"))
    assert "model.safetensors.index.json" in files and any(f.startswith("model-00001-of-") for f in files)
    again = CLIPTextModel.from_pretrained(tmp_path / "sharded")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())
    ours.half().save_pretrained(tmp_path / "sharded", variant="fp16")
    half = CLIPTextModel.from_pretrained(tmp_path / "sharded", variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    kept = CLIPTextModel.from_pretrained(tmp_path / "sharded", variant="fp16", torch_dtype="auto")
    assert kept.dtype == torch.float16
    default = CLIPTextModel.from_pretrained(tmp_path / "sharded", variant="fp16")
    assert default.dtype == torch.float32  # fp16 weights load as float32 unless asked otherwise


def test_config_round_trip_keeps_unknown_keys_and_validates(tmp_path):
    cfg = CLIPTextConfig(**_config("quick_gelu", 97), some_future_key=[1, 2])
    assert cfg.some_future_key == [1, 2] and cfg.get("missing", 5) == 5
    cfg.save_pretrained(tmp_path)
    back = CLIPTextConfig.from_pretrained(tmp_path)
    assert back == cfg and back.to_dict()["some_future_key"] == [1, 2]
    full = {"model_type": "clip", "text_config": _config("gelu", 2)}
    assert CLIPTextConfig.from_dict(full).hidden_act == "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="tanh-ish")
    with pytest.raises(ValueError, match="num_attention_heads"):
        CLIPTextConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(TypeError, match="config"):
        CLIPTextModel(config=3.5)


def test_model_helpers_and_errors():
    model = CLIPTextModel(CLIPTextConfig(**_config("quick_gelu", 97))).eval()
    assert model.get_input_embeddings() is model.text_model.embeddings.token_embedding
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    old = model.get_input_embeddings().weight.detach().clone()
    new = model.resize_token_embeddings(102)
    assert new.num_embeddings == 102 and model.config.vocab_size == 102
    assert torch.equal(new.weight[:99], old) and torch.allclose(new.weight[101], old.mean(0))
    model.requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model()
    with pytest.raises(TypeError, match="set_input_embeddings|torch.nn.Embedding"):
        model.set_input_embeddings(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(0)


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    ours, _ = _pair(False, _config("quick_gelu", 97))
    ours.save_pretrained(tmp_path / "te")
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "te" / "model.safetensors")
    state.pop("text_model.final_layer_norm.weight")
    save_file(state, tmp_path / "te" / "model.safetensors")
    with pytest.raises(ValueError, match="missing keys"):
        CLIPTextModel.from_pretrained(tmp_path / "te")
    with pytest.raises(ValueError, match="neither a valid local path nor a valid repo id"):
        CLIPTextModel.from_pretrained(tmp_path / "nowhere")
    os.remove(tmp_path / "te" / "config.json")
    with pytest.raises(EnvironmentError, match="config.json"):
        CLIPTextModel.from_pretrained(tmp_path / "te")


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    ours, _ = _pair(False, _config("quick_gelu", 97))
    ours.save_pretrained(tmp_path / "te")
    before = {n: (tmp_path / "te" / n).read_bytes() for n in os.listdir(tmp_path / "te")}
    from diffblocks.models import weights as W

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(W, "save_state_dict", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ours.save_pretrained(tmp_path / "te")
    assert {n: (tmp_path / "te" / n).read_bytes() for n in os.listdir(tmp_path / "te")} == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_loads_by_repo_id_from_the_hf_cache(tmp_path, monkeypatch):
    # a Hub repo id resolves through the HF cache offline, fetching transformers' file names (model.safetensors)
    from tests.fixtures.tiny import fill_hf_cache

    ours, _ = _pair(False, _config("quick_gelu", 97))
    ours.save_pretrained(tmp_path / "src" / "text_encoder")
    fill_hf_cache(str(tmp_path / "cache"), "org/tiny-clip", str(tmp_path / "src"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = CLIPTextModel.from_pretrained("org/tiny-clip", subfolder="text_encoder", cache_dir=str(tmp_path / "cache"))
    ids = _ids(97)
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], ours(ids)[0])


def test_config_by_repo_id_needs_only_config_json(tmp_path, monkeypatch):
    # reading a config fetches config.json alone: a cached repo holding no weights is enough
    from tests.fixtures.tiny import fill_hf_cache

    CLIPTextConfig(**_config("gelu", 2)).save_pretrained(str(tmp_path / "src" / "text_encoder"))
    fill_hf_cache(str(tmp_path / "cache"), "org/config-only", str(tmp_path / "src"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = CLIPTextConfig.from_pretrained("org/config-only", subfolder="text_encoder",
                                            cache_dir=str(tmp_path / "cache"))
    assert config.hidden_act == "gelu" and not hasattr(config, "cache_dir")
    with pytest.raises(TypeError, match="subfolder"):
        CLIPTextConfig.from_pretrained("org/config-only", subfolder=3, cache_dir=str(tmp_path / "cache"))


def test_gradient_checkpointing_through_both_names_gives_the_same_gradients():
    model = CLIPTextModel(CLIPTextConfig(**_config("quick_gelu", 97)))
    ids = _ids(97)
    model.train()
    model(ids)[0].sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()  # transformers' name
    assert model.is_gradient_checkpointing and model.text_model.encoder.gradient_checkpointing
    model(ids)[0].sum().backward()
    for n, g in plain.items():
        assert torch.allclose(dict(model.named_parameters())[n].grad, g, atol=1e-6), n
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()  # diffusers' name
    assert model.is_gradient_checkpointing
