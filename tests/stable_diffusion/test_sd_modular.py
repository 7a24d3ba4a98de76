"""The modular SD pipeline (auto blocks and presets) gives the classic pipeline's images; guider and safety checker."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

SIZE = dict(height=32, width=32)
IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
_m = np.zeros((32, 32), dtype=np.uint8)
_m[8:24, 8:24] = 255
MASK = PIL.Image.fromarray(_m)


@pytest.fixture(scope="module")
def modular(sd_folders):
    from diffblocks.modular_pipelines import ModularPipeline

    pipes = {}
    for kind in ("sd", "inpaint"):
        pipe = ModularPipeline.from_pretrained(sd_folders[kind])
        pipe.load_components(names=["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
        pipe.set_progress_bar_config(disable=True)
        pipes[kind] = pipe
    return pipes


def test_modular_class_and_blocks(modular):
    from diffblocks.modular_pipelines.stable_diffusion import StableDiffusionModularPipeline

    pipe = modular["sd"]
    assert type(pipe) is StableDiffusionModularPipeline
    assert type(pipe.blocks).__name__ == "StableDiffusionAutoBlocks"
    assert pipe.vae_scale_factor == 2 and pipe.default_height == 64 and pipe.num_channels_unet == 4
    base = ["text2image", "image2image", "inpainting", "controlnet_text2image", "controlnet_image2image",
            "controlnet_inpainting"]
    assert pipe.blocks.available_workflows == base + [f"ip_adapter_{w}" for w in base]
    ip_t2i = pipe.blocks.get_workflow("ip_adapter_text2image")
    assert list(ip_t2i.sub_blocks)[:2] == ["text_encoder", "ip_adapter"]
    assert "ip_adapter" not in pipe.blocks.get_workflow("text2image").sub_blocks
    inpaint = pipe.blocks.get_workflow("inpainting")
    assert [type(b).__name__ for b in inpaint.sub_blocks.values()] == [
        "StableDiffusionTextEncoderStep", "StableDiffusionInpaintVaeEncoderStep", "StableDiffusionInputStep",
        "StableDiffusionInpaintSetTimestepsStep", "StableDiffusionInpaintPrepareLatentsStep",
        "StableDiffusionInpaintDenoiseStep", "StableDiffusionDecodeStep",
    ]


@pytest.mark.parametrize(
    "kind, cls_name, kwargs",
    [
        ("sd", "StableDiffusionPipeline", dict(prompt=["a cat", "a dog"], negative_prompt=["x", "y"], **SIZE)),
        ("sd", "StableDiffusionImg2ImgPipeline", dict(prompt="a cat", image=IMAGE, strength=0.7)),
        ("inpaint", "StableDiffusionInpaintPipeline", dict(prompt="a cat", image=IMAGE, mask_image=MASK,
                                                          strength=0.8, **SIZE)),
    ],
)
def test_modular_matches_classic(modular, loaded, kind, cls_name, kwargs):
    import diffblocks

    classic = getattr(diffblocks, cls_name)(**loaded("ours", kind).components)
    classic.set_progress_bar_config(disable=True)
    steps = 3
    ref = classic(num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(0),
                  **kwargs).images
    got = modular[kind](num_inference_steps=steps, output_type="np", generator=torch.Generator().manual_seed(0),
                        output="images", **kwargs)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-5


def test_presets_are_classes_and_build(sd_folders):
    from diffblocks.modular_pipelines import SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion import ALL_BLOCKS

    assert set(ALL_BLOCKS) == {"text2img", "img2img", "inpaint", "controlnet", "controlnet_img2img",
                               "controlnet_inpaint", "ip_adapter", "auto"}
    assert all(isinstance(v, type) for preset in ALL_BLOCKS.values() for v in preset.values())
    blocks = SequentialPipelineBlocks.from_blocks_dict(ALL_BLOCKS["text2img"])
    names = [p.name for p in blocks.inputs]
    assert names[:4] == ["prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds"]
    assert "latents" in names and "guidance_scale" not in names
    assert [o.name for o in blocks.intermediate_outputs][-2:] == ["images", "nsfw_content_detected"]


def test_guider_scale_changes_output_and_batches_once(modular):
    pipe = modular["sd"]
    calls = []
    unet = pipe.unet
    forward = unet.forward

    def counting(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    unet.forward = counting
    try:
        out = {}
        for scale in (1.0, 7.5):
            pipe.update_components(guider=pipe.guider.new(guidance_scale=scale))
            out[scale] = pipe(prompt="a", num_inference_steps=2, output_type="np", output="images",
                              generator=torch.Generator().manual_seed(0), **SIZE)
    finally:
        del unet.forward
    # guidance off: one UNet call per step at batch 1; on: ONE call per step at batch 2 (cond + uncond)
    n = len(pipe.scheduler.timesteps)  # PNDM: 2 steps -> 3 timesteps
    assert calls == [1] * n + [2] * n
    assert float(np.abs(out[1.0] - out[7.5]).max()) > 1e-3


def test_guider_contract():
    from diffblocks.guiders import ClassifierFreeGuidance

    g = ClassifierFreeGuidance(guidance_scale=3.0, guidance_rescale=0.5)
    cond, uncond, x = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 5)
    g.set_state(0, 10, 999)
    assert g.num_conditions == 2
    # spec 1.18: CFG yields the conditional batch, then the unconditional one
    batches = g.prepare_inputs({"sample": (x, x), "emb": (cond, uncond), "shared": 7})
    assert [b.identifier for b in batches] == ["pred_cond", "pred_uncond"]
    assert batches[0].emb is cond and batches[1].emb is uncond and batches[0].sample is x and batches[1].shared == 7
    assert batches[0].as_dict() == {"sample": x, "emb": cond, "shared": 7}
    pred_u, pred_c = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    batches[0].noise_pred, batches[1].noise_pred = pred_c, pred_u
    guided = pred_u + 3.0 * (pred_c - pred_u)
    dims = [1, 2]
    rescaled = guided * (pred_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    expected = 0.5 * rescaled + 0.5 * guided
    assert torch.allclose(g(batches)[0], expected, atol=1e-5)
    separate = ClassifierFreeGuidance(guidance_scale=3.0, batch_conditions=False)  # batch_conditions is for run()
    assert [b.identifier for b in separate.prepare_inputs({"emb": (cond, uncond)})] == ["pred_cond", "pred_uncond"]
    separate.disable()
    assert separate.num_conditions == 1 and len(separate.prepare_inputs({"emb": (cond, uncond)})) == 1
    window = ClassifierFreeGuidance(guidance_scale=3.0, start=0.5)
    window.set_state(1, 10, 0)
    assert window.num_conditions == 1
    window.set_state(5, 10, 0)
    assert window.num_conditions == 2
    with pytest.raises(ValueError, match="`guidance_rescale` must be a number in"):
        ClassifierFreeGuidance(guidance_rescale=2.0)


def test_safety_checker_loads_diffusers_weights_and_blacks_out(tmp_path, loaded):
    import diffusers.pipelines.stable_diffusion.safety_checker as theirs_mod
    from transformers import CLIPConfig, CLIPImageProcessor

    import diffblocks
    from diffblocks import StableDiffusionSafetyChecker

    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=100),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    theirs = theirs_mod.StableDiffusionSafetyChecker(cfg).eval()
    with torch.no_grad():
        theirs.concept_embeds.normal_()
        theirs.special_care_embeds.normal_()
        theirs.concept_embeds_weights.fill_(-1.0)  # every image is flagged
    theirs.save_pretrained(str(tmp_path / "sc"))
    ours = StableDiffusionSafetyChecker.from_pretrained(str(tmp_path / "sc")).eval()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    clip_input = torch.randn(2, 3, 32, 32)
    images = torch.rand(2, 3, 8, 8)
    out, flags = ours(clip_input=clip_input, images=images.clone())
    _, ref_flags = theirs(clip_input=clip_input, images=images.clone())
    assert flags == ref_flags == [True, True] and float(out.abs().max()) == 0.0

    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    base = loaded("ours", "sd")
    pipe = diffblocks.StableDiffusionPipeline(**{**base.components, "safety_checker": ours,
                                                 "feature_extractor": extractor})
    pipe.set_progress_bar_config(disable=True)
    result = pipe("a", num_inference_steps=1, output_type="np", **SIZE)
    assert result.nsfw_content_detected == [True]
    assert float(np.abs(result.images).max()) == 0.0


def test_folder_with_safety_checker_loads_and_matches_diffusers(tmp_path, loaded, sd_folders):
    """A diffusers folder holding ["stable_diffusion", "StableDiffusionSafetyChecker"] + a CLIP feature extractor."""
    import json

    import diffusers
    import diffusers.pipelines.stable_diffusion.safety_checker as theirs_mod
    from transformers import CLIPConfig, CLIPImageProcessor

    import diffblocks

    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=100),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=4),
        projection_dim=16,
    )
    torch.manual_seed(1)
    checker = theirs_mod.StableDiffusionSafetyChecker(cfg).eval()
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    base = diffusers.StableDiffusionPipeline.from_pretrained(sd_folders["sd"])
    folder = str(tmp_path / "with_checker")
    diffusers.StableDiffusionPipeline(**{**base.components, "safety_checker": checker,
                                         "feature_extractor": extractor}).save_pretrained(folder)
    with open(f"{folder}/model_index.json") as f:
        assert json.load(f)["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]

    ours = diffblocks.StableDiffusionPipeline.from_pretrained(folder)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    assert type(ours.safety_checker) is diffblocks.StableDiffusionSafetyChecker
    outs = []
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
        outs.append(pipe(["a", "b"], num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(0), **SIZE))
    assert outs[0].nsfw_content_detected == outs[1].nsfw_content_detected
    assert len(outs[0].nsfw_content_detected) == 2
    assert float(np.abs(outs[0].images - outs[1].images).max()) <= 1e-4


def test_custom_guiders_through_the_contract_give_the_same_image(modular):
    """Denoisers call ``guider.run``: a subclass overriding a contract method, a subclass whose ``run`` is the base
    one, and a guider that only implements diffusers' interface (no ``run``) all give the default guider's image
    (through the contract: a conditional and an unconditional UNet call per step)."""
    from diffblocks.configuration import ConfigMixin, register_to_config
    from diffblocks.guiders import BaseGuidance, ClassifierFreeGuidance, GuiderBatch

    pipe = modular["sd"]
    default_guider = pipe.guider
    events = []

    class Hooked(ClassifierFreeGuidance):
        def prepare_models(self, model):
            events.append(type(model).__name__)

    class ContractOnly(ClassifierFreeGuidance):
        run = BaseGuidance.run

    class Duck(ConfigMixin):  # diffusers' guider interface and a config, no run()
        config_name = "guider_config.json"

        @register_to_config
        def __init__(self, scale=1.0):
            self.scale = scale

        num_conditions = 2

        def set_state(self, step, num_inference_steps, timestep=None):
            pass

        def prepare_inputs(self, data):
            return [GuiderBatch(ident, {k: (v[idx] if isinstance(v, tuple) else v) for k, v in data.items()})
                    for idx, ident in enumerate(("pred_cond", "pred_uncond"))]

        def prepare_models(self, model):
            pass

        def cleanup_models(self, model):
            pass

        def __call__(self, batches):
            cond, uncond = batches[0].noise_pred, batches[1].noise_pred
            return (uncond.add(cond.add(uncond, alpha=-1.0), alpha=self.scale),)

        def enable(self):
            pass

    def run():
        return pipe(prompt="a cat", num_inference_steps=3, output_type="np", output="images",
                    generator=torch.Generator().manual_seed(0), **SIZE)

    try:
        pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=6.0))
        reference = run()
        for guider in (Hooked(guidance_scale=6.0), ContractOnly(guidance_scale=6.0), Duck(6.0)):
            pipe.update_components(guider=guider)
            # the contract runs the UNet twice at batch 1 instead of once at batch 2: equal up to float rounding
            np.testing.assert_allclose(run(), reference, rtol=0, atol=1e-5)
    finally:
        pipe.update_components(guider=default_guider)
    assert events and set(events) == {"UNet2DConditionModel"}


def test_a_denoiser_written_like_diffusers_runs_in_our_loop(sd_folders):
    """A loop denoiser in the style of diffusers' modular SDXL one (latents passed outside the guider, one UNet call
    per guider batch, ``guider(batches)[0]``) works with our guider and loop, and gives our denoiser's image."""
    from diffblocks.modular_pipelines import InputParam, ModularPipelineBlocks, SequentialPipelineBlocks
    from diffblocks.modular_pipelines.stable_diffusion import ALL_BLOCKS
    from diffblocks.modular_pipelines.stable_diffusion.denoise import StableDiffusionDenoiseStep

    class DiffusersStyleDenoiser(ModularPipelineBlocks):
        model_name = "stable-diffusion"

        @property
        def inputs(self):
            return [InputParam("num_inference_steps", required=True), InputParam("scaled_latents"),
                    InputParam("prompt_embeds"), InputParam("negative_prompt_embeds")]

        def __call__(self, components, block_state, i, t):
            guider_inputs = {"prompt_embeds": (getattr(block_state, "prompt_embeds", None),
                                               getattr(block_state, "negative_prompt_embeds", None))}
            components.guider.set_state(step=i, num_inference_steps=block_state.num_inference_steps, timestep=t)
            guider_state = components.guider.prepare_inputs(guider_inputs)
            for batch in guider_state:
                components.guider.prepare_models(components.unet)
                cond_kwargs = {name: getattr(batch, name) for name in guider_inputs}
                batch.noise_pred = components.unet(block_state.scaled_latents, t,
                                                   encoder_hidden_states=cond_kwargs["prompt_embeds"],
                                                   return_dict=False)[0]
                components.guider.cleanup_models(components.unet)
            block_state.noise_pred = components.guider(guider_state)[0]
            return components, block_state

    class Loop(StableDiffusionDenoiseStep):
        block_classes = [StableDiffusionDenoiseStep.block_classes[0], DiffusersStyleDenoiser,
                         StableDiffusionDenoiseStep.block_classes[2]]

    images = []
    for denoise in (StableDiffusionDenoiseStep, Loop):
        preset = dict(ALL_BLOCKS["text2img"], denoise=denoise)
        pipe = SequentialPipelineBlocks.from_blocks_dict(preset).init_pipeline(sd_folders["sd"])
        pipe.load_components()
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe(prompt="a cat", negative_prompt="blur", num_inference_steps=3, output_type="np",
                           output="images", generator=torch.Generator().manual_seed(0), **SIZE))
    np.testing.assert_allclose(images[1], images[0], rtol=0, atol=1e-5)
