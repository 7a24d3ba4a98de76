"""Registry behaviour beyond the seed examples: pattern grammar, info fields, reuse lookup, logging, threads."""
from __future__ import annotations

import logging
import threading

import pytest
import torch

from diffblocks.modular_pipelines import ComponentsManager
from diffblocks.modular_pipelines.components_manager import parse_memory_size

from ._helpers import CM_LOGGER, cm_warnings, named_module, named_object


@pytest.fixture
def cm():
    comp = ComponentsManager()
    objs = {
        "unet": named_module("UNet2DConditionModel", seed=1),
        "unet_copy": named_module("UNet2DConditionModel", seed=2),
        "vae": named_module("AutoencoderKL", seed=3),
        "text_encoder": named_module("CLIPTextModel", seed=4),
        "text_encoder_2": named_module("CLIPTextModelWithProjection", seed=5),
        "scheduler": named_object("EulerDiscreteScheduler"),
    }
    for name, obj in objs.items():
        comp.add(name, obj, collection="a" if name != "unet_copy" else "b")
    comp.objs = objs
    return comp


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("unet", ["unet"]),  # exact base name: never unet_copy
        ("unet*", ["unet", "unet_copy"]),
        ("!unet*", ["vae", "text_encoder", "text_encoder_2", "scheduler"]),
        ("*encoder*", ["text_encoder", "text_encoder_2"]),  # contains (upstream quirk: never matched)
        ("*_2", ["text_encoder_2"]),
        ("encod", ["text_encoder", "text_encoder_2"]),  # no exact name: substring
        ("unet|vae", ["unet", "vae"]),
        ("!unet|vae|scheduler", ["unet_copy", "text_encoder", "text_encoder_2"]),
        ("unet*|vae", ["unet", "unet_copy", "vae"]),
        ("!unet", ["unet_copy", "vae", "text_encoder", "text_encoder_2", "scheduler"]),
    ],
)
def test_search_grammar(cm, pattern, expected):
    found = cm.search_components(pattern)
    assert list(found) == expected
    assert all(found[n] is cm.objs[n] for n in expected)


def test_search_filters_and_errors(cm):
    assert list(cm.search_components(collection="b")) == ["unet_copy"]
    assert list(cm.search_components("unet*", collection="a")) == ["unet"]
    assert cm.search_components(collection="missing") == {}
    by_id = cm.search_components("vae", return_dict_with_names=False)
    assert list(by_id) == [f"vae_{id(cm.objs['vae'])}"]
    with pytest.raises(ValueError, match="Invalid type for `names`"):
        cm.search_components(["unet"])
    with pytest.raises(ValueError, match="Component or pattern 'zzz' not found in ComponentsManager"):
        cm.search_components("zzz")
    with pytest.raises(ValueError, match="No components found matching pattern 'q\\*'"):
        cm.search_components("q*")
    with pytest.raises(ValueError, match="No components found matching pattern 'unet\\|vae'"):
        cm.search_components("unet|vae", collection="missing")  # upstream: UnboundLocalError
    cm.objs["vae"]._diffblocks_load_id = "repo|vae|null|null"
    assert cm.search_components(load_id="repo|vae|null|null") == {"vae": cm.objs["vae"]}
    assert cm.get_one(load_id="repo|vae|null|null") is cm.objs["vae"]
    with pytest.raises(ValueError, match="Multiple components found matching 'None'"):
        cm.get_one(collection="a")


def test_ids_and_lookup(cm):
    uid = f"unet_{id(cm.objs['unet'])}"
    assert cm.get_ids("unet") == [uid]
    assert set(cm.get_ids(["unet", "vae"])) == {uid, f"vae_{id(cm.objs['vae'])}"}
    assert cm.get_ids(["unet"], collection="b") == []
    assert cm._lookup_ids(name="unet", collection="a") == {uid}
    assert cm._lookup_ids(collection="nope") == set()
    assert cm.get_components_by_ids([uid]) == {"unet": cm.objs["unet"]}
    assert cm.get_components_by_ids([uid], return_dict_with_names=False) == {uid: cm.objs["unet"]}
    with pytest.raises(KeyError):
        cm.get_components_by_ids(["nope_1"])
    with pytest.raises(TypeError, match="`names` must be a list of str"):
        cm.get_components_by_names([1, 2])


def test_model_info(cm):
    unet = cm.objs["unet"]
    uid = f"unet_{id(unet)}"
    info = cm.get_model_info(uid)
    assert info["model_id"] == uid and info["collection"] == "a" and info["class_name"] == "UNet2DConditionModel"
    assert info["size_gb"] == (4 * 4 + 4) * 4 / 1024**3
    assert info["adapters"] is None and info["has_hook"] is False and info["execution_device"] is None
    assert info["quantization"] is None and "ip_adapter" not in info
    assert cm.get_model_info(uid, fields="size_gb") == {"size_gb": info["size_gb"]}
    sched_info = cm.get_model_info(f"scheduler_{id(cm.objs['scheduler'])}")
    assert set(sched_info) == {"model_id", "added_time", "collection"}
    with pytest.raises(ValueError, match="Field 'bogus' not found in available_info_fields"):
        cm.get_model_info(uid, fields=["bogus"])
    with pytest.raises(ValueError, match="Component 'x_1' not found in ComponentsManager"):
        cm.get_model_info("x_1")


def test_ip_adapter_shown(cm):
    class IPAdapterAttnProcessor2_0:
        def __init__(self, scale):
            self.scale = scale

    class Plain:
        pass

    unet = cm.objs["unet"]
    unet.attn_processors = {
        "down_blocks.1.attentions.0.processor": IPAdapterAttnProcessor2_0([0.6]),
        "down_blocks.1.attentions.1.processor": IPAdapterAttnProcessor2_0([0.6]),
        "up_blocks.0.attentions.0.processor": IPAdapterAttnProcessor2_0([0.3]),
        "mid_block.attentions.0.processor": Plain(),
    }
    info = cm.get_model_info(f"unet_{id(unet)}")
    assert info["ip_adapter"] == {"down_blocks.1.attentions": [0.6], "up_blocks.0.attentions.0.processor": [0.3]}
    assert "\nunet:\n  IP-Adapter: Enabled\n" in repr(cm)


def test_remove_and_remove_from_collection(cm, caplog):
    vae = cm.objs["vae"]
    vid = f"vae_{id(vae)}"
    cm.add("vae", vae, collection="b")
    cm.remove_from_collection(vid, "a")
    assert vid in cm.components  # still in "b"
    cm.remove_from_collection(vid, "b")
    assert vid not in cm.components and vid not in cm.collections["a"] | cm.collections["b"]
    caplog.clear()
    cm.remove(vid)
    cm.remove_from_collection(vid, "zzz")
    cm.remove_from_collection(f"unet_{id(cm.objs['unet'])}", "b")
    assert cm_warnings(caplog) == [
        f"Component '{vid}' not found in ComponentsManager",
        "Collection 'zzz' not found in ComponentsManager",
        f"Component 'unet_{id(cm.objs['unet'])}' not found in collection 'b'",
    ]


def test_add_validates_input():
    comp = ComponentsManager()
    with pytest.raises(ValueError, match="`name` must be a non-empty str, got ''"):
        comp.add("", object())
    with pytest.raises(TypeError, match="`collection` must be a str or None, got int"):
        comp.add("x", object(), collection=3)
    with pytest.raises(TypeError, match="`reuse_by_load_id` must be True or False"):
        ComponentsManager(reuse_by_load_id="yes")


def test_lookup_load_id_for_reuse():
    comp = ComponentsManager()
    assert comp.reuse_by_load_id is True
    assert ComponentsManager(reuse_by_load_id=False).reuse_by_load_id is False
    fp32 = named_module("UNet2DConditionModel", seed=1)
    fp16 = named_module("UNet2DConditionModel", seed=1).to(torch.float16)
    tok = named_object("CLIPTokenizer")
    for obj in (fp32, fp16):
        obj._diffblocks_load_id = "repo|unet|null|null"
    tok._diffblocks_load_id = "repo|tokenizer|null|null"
    fp32.dtype = torch.float32  # ModelMixin/transformers models expose .dtype
    fp16.dtype = torch.float16
    comp.add("unet", fp32)
    comp.add("unet", fp16)
    comp.add("tokenizer", tok)
    assert comp._lookup_load_id("repo|unet|null|null") is fp32
    assert comp._lookup_load_id("repo|unet|null|null", torch_dtype=torch.float16) is fp16
    assert comp._lookup_load_id("repo|unet|null|null", torch_dtype="float16") is fp16
    assert comp._lookup_load_id("repo|unet|null|null", torch_dtype=torch.bfloat16) is None
    assert comp._lookup_load_id("repo|tokenizer|null|null", torch_dtype=torch.float16) is tok
    assert comp._lookup_load_id("other|unet|null|null") is None
    assert comp._lookup_load_id("null") is None
    # objects tagged by diffusers are recognised too
    foreign = named_module("AutoencoderKL")
    foreign._diffusers_load_id = "repo|vae|null|null"
    comp.add("vae", foreign)
    assert comp._lookup_load_id("repo|vae|null|null") is foreign
    with pytest.raises(ValueError, match="`torch_dtype` must be a torch.dtype"):
        comp._lookup_load_id("repo|unet|null|null", torch_dtype="float17")


def test_warnings_visible_by_default_and_not_doubled(capsys):
    """With no logging configured the warning reaches stderr; with a handler configured it is not printed twice."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        comp = ComponentsManager()
        obj = object()
        cid = comp.add("x", obj)
        comp.add("x", obj)
        err = capsys.readouterr().err
        assert err == f"ComponentsManager: component 'x' already exists as '{cid}'\n"

        seen = []

        class ListHandler(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())

        root.addHandler(ListHandler())
        comp.add("x", obj)
        assert capsys.readouterr().err == ""
        assert seen == [f"ComponentsManager: component 'x' already exists as '{cid}'"]
        # a user silencing the library's logger silences the warnings
        logging.getLogger("diffblocks").setLevel(logging.ERROR)
        root.handlers = []
        comp.add("x", obj)
        assert capsys.readouterr().err == ""
    finally:
        logging.getLogger("diffblocks").setLevel(logging.NOTSET)
        root.handlers = saved


def test_thread_safety_concurrent_add_remove():
    comp = ComponentsManager()
    errors = []
    objs = [[named_object("Thing") for _ in range(50)] for _ in range(4)]

    def worker(k):
        try:
            ids = [comp.add(f"item{k}", o, collection=f"c{k}_{i % 5}") for i, o in enumerate(objs[k])]
            for cid in ids[::2]:
                comp.remove(cid)
            repr(comp)
            assert list(comp.search_components(f"item{k}", collection=f"c{k}_2")) == [f"item{k}"]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    logging.getLogger(CM_LOGGER).disabled = True
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        logging.getLogger(CM_LOGGER).disabled = False
    assert errors == []
    # one item per name per collection: the last added (index 45 + j) survives unless removed (even index)
    expected = {f"item{k}_{id(objs[k][45 + j])}" for k in range(4) for j in (0, 2, 4)}
    assert set(comp.components) == expected
    for k in range(4):
        for j in range(5):
            assert comp.collections[f"c{k}_{j}"] == ({f"item{k}_{id(objs[k][45 + j])}"} if j % 2 == 0 else set())
    assert set(comp.added_time) == expected


@pytest.mark.parametrize(
    "value,expected",
    [("3GB", 3 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5GB", 1_500_000_000), (1024, 1024),
     ("0", 0), ("12 kb", 12_000)],
)
def test_parse_memory_size(value, expected):
    assert parse_memory_size(value) == expected


def test_parse_memory_size_errors():
    with pytest.raises(ValueError, match="`memory_reserve_margin`='3 parsecs' is not a memory size"):
        parse_memory_size("3 parsecs")
    with pytest.raises(ValueError, match="must be >= 0 bytes"):
        parse_memory_size(-1)
    with pytest.raises(TypeError, match="`memory_reserve` must be a number of bytes"):
        parse_memory_size([3], "memory_reserve")


def test_copies_of_holders_share_the_manager():
    import copy

    comp = ComponentsManager()
    comp.add("x", named_object("Thing"))
    holder = {"manager": comp, "other": [1, 2]}
    clone = copy.deepcopy(holder)
    assert clone["manager"] is comp and clone["other"] is not holder["other"]
    assert copy.copy(comp) is comp
