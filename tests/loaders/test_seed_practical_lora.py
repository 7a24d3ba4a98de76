"""components_manager.md "Practical Example", LoRA part: a LoRA loaded into the modular *loader* pipeline reaches
the t2i pipeline that shares its UNet, latents regenerated from the same text embeddings change and equal the
classic SDXL pipeline's (ours and diffusers') with the same LoRA, and the manager's table lists the adapter."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from tests.fixtures.tiny import build_tiny_sdxl_folder
from tests.loaders.test_lora_sdxl import make_sdxl_lora
from tests.stable_diffusion_xl.conftest import write_modular_repo

SIZE = dict(height=32, width=32)
STEPS = 3


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed_lora")
    base = build_tiny_sdxl_folder(str(root / "base"))
    t2i = write_modular_repo(
        str(root / "modular-demo-auto"), base,
        ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler"],
        {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False},
    )
    return {"base": base, "t2i": t2i, "root": str(root)}


@pytest.fixture(scope="module")
def toy_face(repo):
    """A UNet-only kohya SDXL LoRA with the original (SGM) block numbering, like CiroN2022/toy-face's file."""
    from diffblocks import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(repo["base"])
    sd = {k: v for k, v in make_sdxl_lora(pipe, "sgm", seed=21, alpha=2.0).items() if k.startswith("lora_unet_")}
    assert any("input_blocks" in k for k in sd)
    folder = os.path.join(repo["root"], "toy-face")
    os.makedirs(folder)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(folder, "toy_face_sdxl.safetensors"))
    return folder


def test_seed_practical_example_with_lora(repo, toy_face, tmp_path):
    # --- seed code (imports changed, local folders, CPU, 3 steps, 32x32) -----------------------------------------
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion_xl import ALL_BLOCKS

    t2i_blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    text_blocks = t2i_blocks.sub_blocks.pop("text_encoder")
    decoder_blocks = t2i_blocks.sub_blocks.pop("decode")

    from diffblocks import ComponentsManager, ModularPipeline

    components = ComponentsManager()
    components.enable_auto_cpu_offload(device="cpu")
    t2i_repo = repo["t2i"]
    t2i_loader_pipe = ModularPipeline.from_pretrained(t2i_repo, components_manager=components, collection="t2i")
    text_node = text_blocks.init_pipeline(t2i_repo, components_manager=components)
    decoder_node = decoder_blocks.init_pipeline(t2i_repo, components_manager=components)
    t2i_pipe = t2i_blocks.init_pipeline(t2i_repo, components_manager=components)
    t2i_loader_pipe.load_default_components(torch_dtype=torch.float32)

    vae = components.get_one(load_id=f"{repo['base']}|vae|null|null")
    decoder_node.update_components(vae=vae)
    text_components = components.get_components_by_names(text_node.null_component_names)
    text_node.update_components(**text_components)
    t2i_components = components.get_components_by_names(t2i_pipe.null_component_names)
    t2i_pipe.update_components(**t2i_components)

    prompt = "an astronaut"
    text_embeddings = text_node(prompt=prompt, output=["prompt_embeds", "negative_prompt_embeds",
                                                       "pooled_prompt_embeds", "negative_pooled_prompt_embeds"])
    generator = torch.Generator(device="cpu").manual_seed(0)
    latents_t2i = t2i_pipe(**text_embeddings, num_inference_steps=STEPS, generator=generator, output="latents",
                           **SIZE)
    before_lora = repr(components)

    t2i_loader_pipe.load_lora_weights(toy_face, weight_name="toy_face_sdxl.safetensors", adapter_name="toy_face")
    table = repr(components)

    generator = torch.Generator(device="cpu").manual_seed(0)
    latents_lora = t2i_pipe(**text_embeddings, num_inference_steps=STEPS, generator=generator, output="latents",
                            **SIZE)
    image = decoder_node(latents=latents_lora, output="images")[0]
    image.save(str(tmp_path / "modular_part2_lora.png"))
    # --- checks --------------------------------------------------------------------------------------------------
    # the manager lists the adapter on the UNet only (the text encoders are untouched, so the embeddings are reused)
    assert "Adapters:" not in before_lora
    tail = table.split("Additional Component Info:\n")[1]
    assert tail == "=" * 50 + "\n\nunet:\n  Adapters: ['toy_face']\n", tail
    assert t2i_loader_pipe.get_list_adapters() == {"unet": ["toy_face"]}
    assert t2i_pipe.unet is t2i_loader_pipe.unet  # shared through the manager, so the t2i pipeline has the LoRA
    assert image.size == (32, 32)
    assert tuple(latents_lora.shape) == tuple(latents_t2i.shape) == (1, 4, 16, 16)
    assert float((latents_lora - latents_t2i).abs().max()) > 1e-3

    # the classic SDXL pipelines with the same LoRA give the same latents
    from diffblocks import StableDiffusionXLPipeline

    guidance = t2i_pipe.guider.guidance_scale
    classic = StableDiffusionXLPipeline.from_pretrained(repo["base"])
    classic.set_progress_bar_config(disable=True)
    classic.load_lora_weights(toy_face, weight_name="toy_face_sdxl.safetensors", adapter_name="toy_face")
    ours = classic(prompt=prompt, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                   generator=torch.Generator().manual_seed(0), **SIZE).images
    assert float((ours - latents_lora).abs().max()) <= 1e-5

    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(repo["base"])
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(toy_face, weight_name="toy_face_sdxl.safetensors", adapter_name="toy_face")
    theirs = ref(prompt=prompt, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                 generator=torch.Generator().manual_seed(0), **SIZE).images
    assert float((theirs - latents_lora).abs().max()) <= 1e-4

    # unloading through the loader pipeline takes the LoRA out of the shared UNet and out of the table
    t2i_loader_pipe.unload_lora_weights()
    assert "Adapters:" not in repr(components)
    again = t2i_pipe(**text_embeddings, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                     output="latents", **SIZE)
    assert torch.equal(again, latents_t2i)
