"""The examples of seeds/components_manager.md, one test each: returned ids, warning texts and the table text.

The seed shows tables with runs of spaces collapsed and blank lines dropped (the rule widths prove the real
output is padded); we compare after the same normalisation, and compare the rule widths exactly.
"""
from __future__ import annotations

import re

import pytest

from diffblocks.modular_pipelines import ComponentsManager

from ._helpers import (
    cm_warnings,
    named_module,
    named_object,
    normalize_table,
    rule_lengths,
    substitute_ids,
    tiny_clip_text_model,
)

SDXL_TE = "stabilityai/stable-diffusion-xl-base-1.0|text_encoder|null|null"

SEED_BASIC = """Components:
===============================================================================================================================================
Models:
-----------------------------------------------------------------------------------------------------------------------------------------------
Name_ID | Class | Device: act(exec) | Dtype | Size (GB) | Load ID | Collection
-----------------------------------------------------------------------------------------------------------------------------------------------
text_encoder_139917733042864 | CLIPTextModel | cpu | torch.float32 | 0.46 | N/A | N/A
-----------------------------------------------------------------------------------------------------------------------------------------------
Additional Component Info:
=================================================="""

SEED_THREE_COPIES = """Components:
===============================================================================================================================================
Models:
-----------------------------------------------------------------------------------------------------------------------------------------------
Name_ID | Class | Device: act(exec) | Dtype | Size (GB) | Load ID | Collection
-----------------------------------------------------------------------------------------------------------------------------------------------
text_encoder_139917733042864 | CLIPTextModel | cpu | torch.float32 | 0.46 | N/A | N/A
clip_139917733042864 | CLIPTextModel | cpu | torch.float32 | 0.46 | N/A | N/A
text_encoder_139917732983664 | CLIPTextModel | cpu | torch.float32 | 0.46 | N/A | N/A
-----------------------------------------------------------------------------------------------------------------------------------------------
Additional Component Info:
=================================================="""

SEED_LOAD_ID = """Components:
======================================================================================================================================================================================================
Models:
------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
Name_ID | Class | Device: act(exec) | Dtype | Size (GB) | Load ID | Collection
------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
text_encoder_139918506246832 | CLIPTextModel | cpu | torch.float32 | 0.46 | stabilityai/stable-diffusion-xl-base-1.0|text_encoder|null|null | N/A
text_encoder_duplicated_139917580682672 | CLIPTextModel | cpu | torch.float32 | 0.46 | stabilityai/stable-diffusion-xl-base-1.0|text_encoder|null|null | N/A
------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
Additional Component Info:
=================================================="""

SEED_COLLECTION = """Components:
====================================================================================================================================================================
Models:
--------------------------------------------------------------------------------------------------------------------------------------------------------------------
Name_ID | Class | Device: act(exec) | Dtype | Size (GB) | Load ID | Collection
--------------------------------------------------------------------------------------------------------------------------------------------------------------------
unet_139917723893136 | UNet2DConditionModel | cpu | torch.float32 | 9.56 | RunDiffusion/Juggernaut-XL-v9|unet|fp16|null | sdxl
--------------------------------------------------------------------------------------------------------------------------------------------------------------------
Additional Component Info:
=================================================="""

SEED_EMPTY = """Components:
==================================================
No components registered.
=================================================="""

SEED_SHARED = """Components:
========================================================================================================================================================================================
Models:
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
Name_ID | Class | Device: act(exec) | Dtype | Size (GB) | Load ID | Collection
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
text_encoder_139917586016400 | CLIPTextModel | cpu | torch.float32 | 0.46 | SG161222/RealVisXL_V4.0|text_encoder|null|null | test1
| | | | | | test2
text_encoder_2_139917699973424 | CLIPTextModelWithProjection | cpu | torch.float32 | 2.59 | SG161222/RealVisXL_V4.0|text_encoder_2|null|null | test1
| | | | | | test2
unet_139917580609632 | UNet2DConditionModel | cpu | torch.float32 | 9.56 | SG161222/RealVisXL_V4.0|unet|null|null | test1
| | | | | | test2
controlnet_139917722454432 | ControlNetModel | cpu | torch.float32 | 4.66 | diffusers/controlnet-canny-sdxl-1.0|null|null|null | test1
| | | | | | test2
vae_139917722459040 | AutoencoderKL | cpu | torch.float32 | 0.31 | SG161222/RealVisXL_V4.0|vae|null|null | test1
| | | | | | test2
image_encoder_139917722468304 | CLIPVisionModelWithProjection | cpu | torch.float32 | 6.87 | h94/IP-Adapter|sdxl_models/image_encoder|null|null | test1
| | | | | | test2
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
Other Components:
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
ID | Class | Collection
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
tokenizer_139917580599504 | CLIPTokenizer | test1
| | test2
scheduler_139916266559408 | EulerDiscreteScheduler | test1
| | test2
tokenizer_2_139915763443904 | CLIPTokenizer | test1
| | test2
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
Additional Component Info:
=================================================="""

SEED_REPLACED = "ComponentsManager: removing existing unet from collection 'sdxl': unet_139917723891888"


def _seed_id_mapping(seed_text: str, ours: list) -> dict:
    """Map our ids (in order of appearance) onto the seed's ids of the same names."""
    seed_ids = []
    for m in re.finditer(r"\b([a-z_0-9]+?)_(1\d{14})\b", seed_text):
        if m.group(0) not in seed_ids:
            seed_ids.append(m.group(0))
    assert len(seed_ids) == len(ours), (seed_ids, ours)
    mapping = {}
    for o, s in zip(ours, seed_ids):
        assert o.rsplit("_", 1)[0] == s.rsplit("_", 1)[0]
        mapping[o] = s
    return mapping


def assert_matches_seed(cm: ComponentsManager, seed_text: str, ids: list, exact_widths: bool = True) -> None:
    text = repr(cm)
    mapping = _seed_id_mapping(seed_text, ids)
    assert normalize_table(substitute_ids(text, mapping)) == normalize_table(seed_text)
    # widths: the seed's ids have 15 digits; CPython's id() on 64-bit Linux too (checked, then compared exactly)
    if exact_widths and all(len(i.rsplit("_", 1)[1]) == 15 for i in ids):
        assert rule_lengths(text) == rule_lengths(seed_text)   # same rules, same widths
    # padded columns: every data row of the Models table has its separators at the header's positions
    lines = text.splitlines()
    if "Models:" in lines:
        header = lines[lines.index("Models:") + 2]
        cols = [m.start() for m in re.finditer(r" \| ", header)]
        start = lines.index("Models:") + 4
        for line in lines[start:]:
            if set(line) == {"-"}:
                break
            assert [m.start() for m in re.finditer(r" \| ", line)] == cols, line


def test_basic_operations(caplog):
    comp = ComponentsManager()
    text_encoder = tiny_clip_text_model()
    component_id = comp.add("text_encoder", text_encoder)
    assert component_id == f"text_encoder_{id(text_encoder)}"
    assert comp.components[component_id] is text_encoder
    assert_matches_seed(comp, SEED_BASIC, [component_id])
    assert cm_warnings(caplog) == []
    comp.remove(component_id)
    assert component_id not in comp.components
    assert repr(comp) == SEED_EMPTY


def test_duplicate_same_object(caplog):
    comp = ComponentsManager()
    text_encoder = tiny_clip_text_model()
    first = comp.add("text_encoder", text_encoder)
    assert cm_warnings(caplog) == []
    again = comp.add("text_encoder", text_encoder)
    assert again == first
    assert cm_warnings(caplog) == [f"ComponentsManager: component 'text_encoder' already exists as '{first}'"]
    assert list(comp.components) == [first]

    caplog.clear()
    clip_id = comp.add("clip", text_encoder)
    assert clip_id == f"clip_{id(text_encoder)}"
    assert cm_warnings(caplog) == [
        f"ComponentsManager: adding component 'clip' as '{clip_id}', but it is duplicate of '{first}'\n"
        "To remove a duplicate, call `components_manager.remove('<component_id>')`."
    ]

    # a second object loaded from the same checkpoint without a load id: not detectable, no warning
    caplog.clear()
    text_encoder_2 = tiny_clip_text_model()
    third = comp.add("text_encoder", text_encoder_2)
    assert third == f"text_encoder_{id(text_encoder_2)}" and third != first
    assert cm_warnings(caplog) == []
    assert_matches_seed(comp, SEED_THREE_COPIES, [first, clip_id, third])


def test_duplicate_by_load_id(caplog):
    comp = ComponentsManager()
    te1, te2 = tiny_clip_text_model(), tiny_clip_text_model()
    te1._diffblocks_load_id = SDXL_TE  # what ComponentSpec.load / AutoModel set
    te2._diffblocks_load_id = SDXL_TE
    id1 = comp.add("text_encoder", te1)
    assert cm_warnings(caplog) == []
    id2 = comp.add("text_encoder_duplicated", te2)
    assert id2 == f"text_encoder_duplicated_{id(te2)}"
    assert cm_warnings(caplog) == [
        f"ComponentsManager: adding component '{id2}', but it has duplicate load_id '{SDXL_TE}' with existing "
        f"components: {id1}. To remove a duplicate, call `components_manager.remove('<component_id>')`."
    ]
    # This one seed table is 4 characters narrower than its own content (39-char id + 63-char load id give 202
    # with the widths that reproduce the seed's other tables exactly): the doc was edited by hand. Same text.
    assert_matches_seed(comp, SEED_LOAD_ID, [id1, id2], exact_widths=False)
    assert rule_lengths(repr(comp))[0] == len(id2) + 25 + 20 + 15 + 10 + len(SDXL_TE) + 10 + 7 * 3 - 1


def test_collection_replacement(caplog):
    comp = ComponentsManager()
    unet1 = named_module("UNet2DConditionModel", seed=1)
    unet1._diffblocks_load_id = "stabilityai/stable-diffusion-xl-base-1.0|unet|null|null"
    unet2 = named_module("UNet2DConditionModel", seed=2)
    unet2._diffblocks_load_id = "RunDiffusion/Juggernaut-XL-v9|unet|fp16|null"
    id1 = comp.add("unet", unet1, collection="sdxl")
    caplog.clear()
    id2 = comp.add("unet", unet2, collection="sdxl")
    assert id2 == f"unet_{id(unet2)}"
    assert cm_warnings(caplog) == [SEED_REPLACED.replace("unet_139917723891888", id1)]
    assert list(comp.components) == [id2]
    assert comp.collections["sdxl"] == {id2}
    assert_matches_seed(comp, SEED_COLLECTION, [id2])


def test_collection_replacement_keeps_object_held_by_another_collection(caplog):
    comp = ComponentsManager()
    vae_a, vae_b = named_module("AutoencoderKL", seed=1), named_module("AutoencoderKL", seed=2)
    id_a = comp.add("vae", vae_a, collection="t2i")
    comp.add("vae", vae_a, collection="refiner")  # one object, two collections
    id_b = comp.add("vae", vae_b, collection="t2i")
    assert comp.collections["t2i"] == {id_b}
    assert comp.collections["refiner"] == {id_a}
    assert set(comp.components) == {id_a, id_b}
    assert comp.get_model_info(id_a, "collection") == {"collection": "refiner"}


def test_get_one_patterns():
    comp = ComponentsManager()
    unet, unet_copy, vae = named_module("UNet2DConditionModel"), named_module("Other"), named_module("AutoencoderKL")
    comp.add("unet", unet, collection="sdxl")
    comp.add("unet_refiner", unet_copy, collection="refiner")
    comp.add("vae", vae, collection="sdxl")
    assert comp.get_one(name="unet") is unet  # exact: never "unet_refiner"
    assert comp.get_one(name="unet", collection="sdxl") is unet
    assert comp.get_one(name="unet*", collection="refiner") is unet_copy
    assert comp.get_one(name="!unet*") is vae
    with pytest.raises(ValueError, match=r"Multiple components found matching 'unet\|vae': \['unet', 'vae'\]"):
        comp.get_one(name="unet|vae")
    with pytest.raises(ValueError, match=r"Multiple components found matching 'unet\*'"):
        comp.get_one(name="unet*")
    with pytest.raises(ValueError, match="Multiple components found matching '!unet'"):
        comp.get_one(name="!unet")
    assert comp.get_one(name="!unet", collection="sdxl") is vae
    assert comp.get_one(name="unet*|vae", collection="refiner") is unet_copy
    assert comp.get_one(component_id=f"vae_{id(vae)}") is vae
    with pytest.raises(ValueError, match="Component or pattern 'text_encoder' not found in ComponentsManager"):
        comp.get_one(name="text_encoder")
    with pytest.raises(ValueError, match="No components found matching pattern 'unet\\|vae'"):
        comp.get_one(name="unet|vae", collection="nope")
    with pytest.raises(ValueError, match="If searching by component_id, do not pass name, collection, or load_id"):
        comp.get_one(component_id="x", name="unet")
    with pytest.raises(ValueError, match="Component 'vae_1' not found in ComponentsManager"):
        comp.get_one(component_id="vae_1")


def test_get_components_by_names():
    comp = ComponentsManager()
    te, unet, vae = tiny_clip_text_model(), named_module("UNet2DConditionModel"), named_module("AutoencoderKL")
    for name, obj in (("text_encoder", te), ("unet", unet), ("vae", vae)):
        comp.add(name, obj)
    component_dict = comp.get_components_by_names(names=["text_encoder", "unet", "vae"])
    assert component_dict == {"text_encoder": te, "unet": unet, "vae": vae}
    assert list(component_dict) == ["text_encoder", "unet", "vae"]
    assert comp.get_components_by_names(["unet", "missing"]) == {"unet": unet}  # missing names left out
    comp.add("unet", named_module("UNet2DConditionModel", seed=3))
    with pytest.raises(ValueError, match="Duplicate component names found in the search results: unet"):
        comp.get_components_by_names(["unet"])


def test_shared_table_two_collections_standalone(caplog):
    """The table of the test1/test2 example, built by registering what two pipelines would register."""
    comp = ComponentsManager()
    specs = [
        ("text_encoder", "CLIPTextModel", "SG161222/RealVisXL_V4.0|text_encoder|null|null"),
        ("text_encoder_2", "CLIPTextModelWithProjection", "SG161222/RealVisXL_V4.0|text_encoder_2|null|null"),
        ("tokenizer", "CLIPTokenizer", None),
        ("unet", "UNet2DConditionModel", "SG161222/RealVisXL_V4.0|unet|null|null"),
        ("controlnet", "ControlNetModel", "diffusers/controlnet-canny-sdxl-1.0|null|null|null"),
        ("scheduler", "EulerDiscreteScheduler", None),
        ("vae", "AutoencoderKL", "SG161222/RealVisXL_V4.0|vae|null|null"),
        ("tokenizer_2", "CLIPTokenizer", None),
        ("image_encoder", "CLIPVisionModelWithProjection", "h94/IP-Adapter|sdxl_models/image_encoder|null|null"),
    ]
    objs = {}
    for name, cls, load_id in specs:
        obj = named_module(cls) if load_id else named_object(cls)
        if load_id:
            obj._diffblocks_load_id = load_id
        objs[name] = obj
        comp.add(name, obj, collection="test1")
    caplog.clear()
    order = ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "image_encoder", "unet", "vae",
             "scheduler", "controlnet"]
    got = comp.get_components_by_names(order)
    ids = {}
    for name in order:
        ids[name] = comp.add(name, got[name], collection="test2")
    assert cm_warnings(caplog) == [
        f"ComponentsManager: component '{n}' already exists as '{n}_{id(objs[n])}'" for n in order
    ]
    assert len(comp.components) == 9
    shown = [ids[n] for n in ("text_encoder", "text_encoder_2", "unet", "controlnet", "vae", "image_encoder",
                              "tokenizer", "scheduler", "tokenizer_2")]
    assert_matches_seed(comp, SEED_SHARED, shown)


def test_additional_info_lists_lora_adapters():
    from peft import LoraConfig, inject_adapter_in_model

    comp = ComponentsManager()
    unet = tiny_clip_text_model()
    # peft's own injection (what our LoRA loader does), independent of transformers' peft integration
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), unet, adapter_name="toy_face")
    uid = comp.add("unet", unet, collection="t2i")
    comp.add("text_encoder", tiny_clip_text_model(seed=1), collection="t2i")
    text = repr(comp)
    tail = text.split("Additional Component Info:\n")[1]
    assert tail == "=" * 50 + "\n\nunet:\n  Adapters: ['toy_face']\n"
    assert comp.get_model_info(uid, fields=["adapters"]) == {"adapters": ["toy_face"]}
    assert normalize_table(tail)[-2:] == ["unet:", "Adapters: ['toy_face']"]  # the seed's LoRA example
