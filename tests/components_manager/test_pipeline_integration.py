"""The seed's ModularPipeline examples with a ComponentsManager, on tiny local checkpoints.

The seed's Hub repos become a tiny SD checkpoint placed in an offline Hugging Face cache under the seed's repo id
(so load ids read exactly like the seed's), or plain local folders for the t2i/refiner workflow.
"""
from __future__ import annotations

import logging

import pytest
import torch

from diffblocks.modular_pipelines import ComponentsManager, ModularPipeline, SequentialPipelineBlocks

from ._helpers import cm_warnings, normalize_table, rule_lengths, substitute_ids
from .test_seed_examples import SDXL_TE, SEED_COLLECTION, SEED_LOAD_ID, SEED_REPLACED, assert_matches_seed

REPO = "SG161222/RealVisXL_V4.0"

SEED_UNET_ONLY = """Components:
==============================================================================================================================================================
Models:
--------------------------------------------------------------------------------------------------------------------------------------------------------------
Name_ID | Class | Device: act(exec) | Dtype | Size (GB) | Load ID | Collection
--------------------------------------------------------------------------------------------------------------------------------------------------------------
unet_139917726686304 | UNet2DConditionModel | cpu | torch.float32 | 9.56 | SG161222/RealVisXL_V4.0|unet|null|null | test1
--------------------------------------------------------------------------------------------------------------------------------------------------------------
Additional Component Info:
=================================================="""


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_sd_folder):
    from tests.fixtures.tiny import fill_hf_cache

    cache = str(tmp_path_factory.mktemp("cm-hub-cache"))
    fill_hf_cache(cache, REPO, tiny_sd_folder)
    return cache


@pytest.fixture(scope="module")
def refiner_folder(tmp_path_factory):
    from tests.fixtures.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(str(tmp_path_factory.mktemp("cm-refiner") / "refiner"), kind="sd", seed=7)


@pytest.fixture(scope="module")
def spec_cache(tmp_path_factory, tiny_sd_folder):
    """The seed's ComponentSpec repos: SDXL base (text_encoder, unet) and Juggernaut with an fp16 variant."""
    from tests.fixtures.tiny import build_tiny_sd_folder, fill_hf_cache

    cache = str(tmp_path_factory.mktemp("cm-spec-cache"))
    fill_hf_cache(cache, "stabilityai/stable-diffusion-xl-base-1.0", tiny_sd_folder)
    jug = build_tiny_sd_folder(str(tmp_path_factory.mktemp("cm-jug") / "jug"), kind="sd", variant="fp16", seed=3)
    fill_hf_cache(cache, "RunDiffusion/Juggernaut-XL-v9", jug)
    return cache


def test_component_spec_duplicate_load_id(spec_cache, caplog):
    """The seed's ComponentSpec example, with diffblocks' ComponentSpec and AutoModel."""
    from transformers import CLIPTextModel

    from diffblocks import AutoModel, ComponentSpec

    comp = ComponentsManager()
    spec = ComponentSpec(name="text_encoder", repo="stabilityai/stable-diffusion-xl-base-1.0",
                         subfolder="text_encoder", type_hint=AutoModel)
    spec_duplicated = ComponentSpec(name="text_encoder_duplicated", repo="stabilityai/stable-diffusion-xl-base-1.0",
                                    subfolder="text_encoder", type_hint=CLIPTextModel)
    id1 = comp.add("text_encoder", spec.load(cache_dir=spec_cache))
    caplog.clear()
    id2 = comp.add("text_encoder_duplicated", spec_duplicated.load(cache_dir=spec_cache))
    assert cm_warnings(caplog) == [
        f"ComponentsManager: adding component '{id2}', but it has duplicate load_id '{SDXL_TE}' with existing "
        f"components: {id1}. To remove a duplicate, call `components_manager.remove('<component_id>')`."
    ]
    assert_matches_seed(comp, SEED_LOAD_ID, [id1, id2], exact_widths=False)


def test_component_spec_collection_replacement(spec_cache, caplog):
    from diffblocks import AutoModel, ComponentSpec

    comp = ComponentsManager()
    spec = ComponentSpec(name="unet", repo="stabilityai/stable-diffusion-xl-base-1.0", subfolder="unet",
                         type_hint=AutoModel)
    spec2 = ComponentSpec(name="unet", repo="RunDiffusion/Juggernaut-XL-v9", subfolder="unet", type_hint=AutoModel,
                          variant="fp16")
    id1 = comp.add("unet", spec.load(cache_dir=spec_cache), collection="sdxl")
    caplog.clear()
    id2 = comp.add("unet", spec2.load(cache_dir=spec_cache), collection="sdxl")
    assert cm_warnings(caplog) == [SEED_REPLACED.replace("unet_139917723891888", id1)]
    assert list(comp.components) == [id2]
    assert_matches_seed(comp, SEED_COLLECTION, [id2])


def test_two_pipelines_share_everything(hub_cache, caplog):
    comp = ComponentsManager()
    pipe = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="test1", cache_dir=hub_cache)
    assert repr(comp) == "Components:\n" + "=" * 50 + "\nNo components registered.\n" + "=" * 50

    pipe.load_components(names="unet", cache_dir=hub_cache)
    uid = f"unet_{id(pipe.unet)}"
    text = repr(comp)
    assert normalize_table(substitute_ids(text, {uid: "unet_139917726686304"})) == normalize_table(SEED_UNET_ONLY)
    if len(str(id(pipe.unet))) == 15:
        assert rule_lengths(text) == rule_lengths(SEED_UNET_ONLY)

    pipe.load_default_components(cache_dir=hub_cache)
    # the auto blocks' IP-Adapter and ControlNet branches expect an `image_encoder` and a `controlnet` the folder
    # does not have (diffusers lists them too)
    assert pipe.null_component_names == ["image_encoder", "controlnet"]
    registered = dict(comp.components)
    # every loaded from_pretrained component is registered under test1, nothing else
    loaded_names = [n for n in pipe.pretrained_component_names if n not in ("image_encoder", "controlnet")]
    assert sorted(comp._id_to_name(i) for i in registered) == sorted(loaded_names)
    assert all(comp.collections["test1"] == set(registered) for _ in [0])

    pipe2 = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="test2", cache_dir=hub_cache)
    assert sorted(pipe2.null_component_names) == sorted(pipe.pretrained_component_names)
    needed = [n for n in pipe2.null_component_names if n not in ("image_encoder", "controlnet")]
    comp_dict = comp.get_components_by_names(names=needed)
    caplog.clear()
    pipe2.update_components(**comp_dict)
    assert cm_warnings(caplog) == [
        f"ComponentsManager: component '{n}' already exists as '{n}_{id(getattr(pipe, n))}'" for n in needed
    ]
    assert pipe2.null_component_names == ["image_encoder", "controlnet"]
    assert dict(comp.components) == registered  # no new registrations
    for n in needed:
        assert getattr(pipe2, n) is getattr(pipe, n)
        assert comp.get_model_info(f"{n}_{id(getattr(pipe, n))}", "collection") == {"collection": "test1, test2"}
    lines = normalize_table(repr(comp))
    assert lines.count("| | | | | | test2") == len(pipe._modules())
    assert lines.count("| | test2") == len(needed) - len(pipe._modules())
    assert "Other Components:" in lines


def test_loading_reuses_registered_components_by_load_id(hub_cache, caplog):
    comp = ComponentsManager()
    pipe = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="a", cache_dir=hub_cache)
    pipe.load_components(cache_dir=hub_cache)
    before = dict(comp.components)
    caplog.set_level(logging.INFO)
    pipe2 = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="b", cache_dir=hub_cache)
    pipe2.load_components(cache_dir=hub_cache)
    for n in pipe.pretrained_component_names:
        assert getattr(pipe2, n) is getattr(pipe, n), n  # no second copy
    assert dict(comp.components) == before
    assert any("Reusing unet" in r.getMessage() for r in caplog.records)

    # another dtype is another identity: models load again, tokenizers (no dtype) are shared
    pipe3 = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="c", cache_dir=hub_cache)
    pipe3.load_components(names=["unet", "tokenizer"], torch_dtype=torch.float16, cache_dir=hub_cache)
    assert pipe3.unet is not pipe.unet and pipe3.unet.dtype == torch.float16
    assert pipe3.tokenizer is pipe.tokenizer


def test_opt_out_loads_separate_copies_and_warns(hub_cache, caplog):
    comp = ComponentsManager(reuse_by_load_id=False)
    pipe = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="a", cache_dir=hub_cache)
    pipe.load_components(names="unet", cache_dir=hub_cache)
    pipe2 = ModularPipeline.from_pretrained(REPO, components_manager=comp, collection="b", cache_dir=hub_cache)
    caplog.clear()
    pipe2.load_components(names="unet", cache_dir=hub_cache)
    assert pipe2.unet is not pipe.unet
    id1, id2 = f"unet_{id(pipe.unet)}", f"unet_{id(pipe2.unet)}"
    assert cm_warnings(caplog) == [
        f"ComponentsManager: adding component '{id2}', but it has duplicate load_id '{REPO}|unet|null|null' with "
        f"existing components: {id1}. To remove a duplicate, call `components_manager.remove('<component_id>')`."
    ]


def test_t2i_refiner_workflow_with_auto_offload(tiny_sd_folder, refiner_folder):
    """The seed's practical example (SD family, local folders, device="cpu"), checked against one plain run."""
    from diffblocks.modular_pipelines.stable_diffusion import ALL_BLOCKS

    t2i_blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    text_blocks = t2i_blocks.sub_blocks.pop("text_encoder")
    decoder_blocks = t2i_blocks.sub_blocks.pop("decode")

    components = ComponentsManager()
    components.enable_auto_cpu_offload(device="cpu")
    t2i_repo = tiny_sd_folder
    t2i_loader_pipe = ModularPipeline.from_pretrained(t2i_repo, components_manager=components, collection="t2i")
    text_node = text_blocks.init_pipeline(t2i_repo, components_manager=components)
    decoder_node = decoder_blocks.init_pipeline(t2i_repo, components_manager=components)
    t2i_pipe = t2i_blocks.init_pipeline(t2i_repo, components_manager=components)
    t2i_loader_pipe.load_components()
    # the auto blocks' IP-Adapter and ControlNet branches
    assert t2i_loader_pipe.null_component_names == ["image_encoder", "controlnet"]
    assert {components._id_to_name(i) for i in components.collections["t2i"]} == set(
        t2i_loader_pipe.pretrained_component_names
    ) - {"image_encoder", "controlnet"}

    vae = components.get_one(load_id=f"{t2i_repo}|vae|null|null")
    assert vae is t2i_loader_pipe.vae
    decoder_node.update_components(vae=vae)
    text_node.update_components(**components.get_components_by_names(text_node.null_component_names))
    t2i_pipe.update_components(**components.get_components_by_names(t2i_pipe.null_component_names))
    assert text_node.null_component_names == [] and t2i_pipe.null_component_names == []
    n_registered = len(components.components)

    prompt = "an astronaut"
    embeds = text_node(prompt=prompt, output=["prompt_embeds", "negative_prompt_embeds"])
    gen = torch.Generator().manual_seed(0)
    latents = t2i_pipe(**embeds, num_inference_steps=2, height=32, width=32, generator=gen, output="latents")
    image = decoder_node(latents=latents, output="images", output_type="pt")
    # the split workflow equals one plain pipeline run
    reference = ModularPipeline.from_pretrained(t2i_repo)
    reference.load_components()
    gen = torch.Generator().manual_seed(0)
    expected = reference(prompt=prompt, num_inference_steps=2, height=32, width=32, generator=gen,
                         output="images", output_type="pt")
    torch.testing.assert_close(image, expected, atol=1e-5, rtol=1e-4)
    hooks = {components._id_to_name(h.model_id): h for h in components.model_hooks}
    assert set(hooks) == {"text_encoder", "unet", "vae"} and all(h.in_use == 0 for h in hooks.values())
    assert all(h.last_used > 0 for h in hooks.values())  # each model went through its hook

    # refiner: another repo and collection, reusing the t2i components by pattern
    refiner_blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["img2img"])
    refiner_blocks.sub_blocks.pop("vae_encoder")  # we pass latents (SDXL's seed pops its image encoder here)
    refiner_blocks.sub_blocks.pop("decode")
    refiner_pipe = refiner_blocks.init_pipeline(refiner_folder, components_manager=components, collection="refiner")
    refiner_pipe.load_components(names="unet")
    reuse_components = components.search_components("text_encoder|scheduler|vae|tokenizer")
    assert set(reuse_components) == {"text_encoder", "scheduler", "vae", "tokenizer"}
    refiner_pipe.update_components(**reuse_components)
    assert refiner_pipe.null_component_names == []
    assert len(components.components) == n_registered + 1  # only the refiner unet is new
    refiner_unet_id = f"unet_{id(refiner_pipe.unet)}"
    # the SD refiner gets latents, so it declares no vae (update_components warns and ignores it)
    shared = {n: o for n, o in reuse_components.items() if n in refiner_pipe.component_names}
    assert set(shared) == {"text_encoder", "scheduler", "tokenizer"}
    assert components.collections["refiner"] == {refiner_unet_id} | {f"{n}_{id(o)}" for n, o in shared.items()}
    te = reuse_components["text_encoder"]
    assert components.get_model_info(f"text_encoder_{id(te)}", "collection") == {"collection": "t2i, refiner"}
    assert components.get_model_info(f"vae_{id(vae)}", "collection") == {"collection": "t2i"}
    assert components.get_model_info(refiner_unet_id, "collection") == {"collection": "refiner"}
    assert components.get_model_info(refiner_unet_id, "has_hook") == {"has_hook": True}  # hooked when added

    refined = refiner_pipe(image_latents=latents, prompt=prompt, num_inference_steps=2, strength=0.5,
                           output="latents")
    assert refined.shape == latents.shape and torch.isfinite(refined).all()
    assert not torch.equal(refined, latents)
    components.disable_auto_cpu_offload()
