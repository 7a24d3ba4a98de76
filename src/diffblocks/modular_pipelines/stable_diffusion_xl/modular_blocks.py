"""Stable Diffusion XL block compositions: the auto blocks (``StableDiffusionXLAutoBlocks``, with named
workflows) and the per-task presets ``ALL_BLOCKS`` ("text2img", "img2img", "inpaint", "auto").

Presets hold block *classes* (fresh instances per ``SequentialPipelineBlocks.from_blocks_dict``) and are never
mutated by the library. The image-to-image preset names its VAE encoder ``image_encoder`` (the name the Modular
Diffusers docs pop); the inpaint and auto presets call theirs ``vae_encoder``.
"""
from __future__ import annotations

from .. import AutoPipelineBlocks, InsertableDict, OutputParam, SequentialPipelineBlocks
from ..stable_diffusion.modular_blocks import with_controlnet
from .before_denoise import (
    StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep,
    StableDiffusionXLImg2ImgPrepareLatentsStep,
    StableDiffusionXLImg2ImgSetTimestepsStep,
    StableDiffusionXLInpaintPrepareLatentsStep,
    StableDiffusionXLInpaintSetTimestepsStep,
    StableDiffusionXLInputStep,
    StableDiffusionXLPrepareAdditionalConditioningStep,
    StableDiffusionXLPrepareLatentsStep,
    StableDiffusionXLSetTimestepsStep,
)
from .controlnet import (
    StableDiffusionXLControlNetDenoiseStep,
    StableDiffusionXLControlNetInputStep,
    StableDiffusionXLInpaintControlNetDenoiseStep,
)
from .decoders import StableDiffusionXLDecodeStep, StableDiffusionXLInpaintDecodeStep
from .denoise import StableDiffusionXLDenoiseStep, StableDiffusionXLInpaintDenoiseStep
from .encoders import (
    StableDiffusionXLInpaintVaeEncoderStep,
    StableDiffusionXLTextEncoderStep,
    StableDiffusionXLVaeEncoderStep,
)
from .ip_adapter import IP_ADAPTER_BLOCKS, StableDiffusionXLAutoIPAdapterStep


class StableDiffusionXLBeforeDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionXLSetTimestepsStep, StableDiffusionXLPrepareLatentsStep,
                     StableDiffusionXLPrepareAdditionalConditioningStep]
    block_names = ["set_timesteps", "prepare_latents", "prepare_add_cond"]

    @property
    def description(self) -> str:
        return "Before denoise (text-to-image): timesteps, initial noise latents and micro-conditioning."


class StableDiffusionXLImg2ImgBeforeDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionXLImg2ImgSetTimestepsStep, StableDiffusionXLImg2ImgPrepareLatentsStep,
                     StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep]
    block_names = ["set_timesteps", "prepare_latents", "prepare_add_cond"]

    @property
    def description(self) -> str:
        return "Before denoise (image-to-image): trimmed timesteps, noised image latents and micro-conditioning."


class StableDiffusionXLInpaintBeforeDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionXLInpaintSetTimestepsStep, StableDiffusionXLInpaintPrepareLatentsStep,
                     StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep]
    block_names = ["set_timesteps", "prepare_latents", "prepare_add_cond"]

    @property
    def description(self) -> str:
        return "Before denoise (inpainting): timesteps, latents, mask and masked-image latents, micro-conditioning."


class StableDiffusionXLAutoVaeEncoderStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLInpaintVaeEncoderStep, StableDiffusionXLVaeEncoderStep]
    block_names = ["inpaint", "img2img"]
    block_trigger_inputs = ["mask_image", "image"]

    @property
    def description(self) -> str:
        return ("Image preparation: inpainting when `mask_image` is given, image-to-image when `image` is given, "
                "skipped otherwise.")


class StableDiffusionXLAutoBeforeDenoiseStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLInpaintBeforeDenoiseStep, StableDiffusionXLImg2ImgBeforeDenoiseStep,
                     StableDiffusionXLBeforeDenoiseStep]
    block_names = ["inpaint", "img2img", "text2img"]
    block_trigger_inputs = ["mask", "image_latents", None]

    @property
    def description(self) -> str:
        return "Before denoise: inpainting (`mask`), image-to-image (`image_latents`) or text-to-image (default)."


class StableDiffusionXLAutoControlNetInputStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLControlNetInputStep]
    block_names = ["controlnet"]
    block_trigger_inputs = ["control_image"]

    @property
    def description(self) -> str:
        return "ControlNet inputs when `control_image` is given, skipped otherwise."


class StableDiffusionXLAutoControlNetDenoiseStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLInpaintControlNetDenoiseStep, StableDiffusionXLControlNetDenoiseStep]
    block_names = ["inpaint_controlnet_denoise", "controlnet_denoise"]
    block_trigger_inputs = ["mask", "controlnet_cond"]

    @property
    def description(self) -> str:
        return "ControlNet denoise loop: the inpainting variant when `mask` is present."


class StableDiffusionXLAutoDenoiseStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLAutoControlNetDenoiseStep, StableDiffusionXLInpaintDenoiseStep,
                     StableDiffusionXLDenoiseStep]
    block_names = ["controlnet_denoise", "inpaint_denoise", "denoise"]
    block_trigger_inputs = ["controlnet_cond", "mask", None]

    @property
    def description(self) -> str:
        return ("Denoise loop: with ControlNet when `controlnet_cond` is present, the inpainting loop when `mask` is "
                "present, else the plain loop.")


class StableDiffusionXLAutoDecodeStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLInpaintDecodeStep, StableDiffusionXLDecodeStep]
    block_names = ["inpaint", "non-inpaint"]
    block_trigger_inputs = ["padding_mask_crop", None]

    @property
    def description(self) -> str:
        return "Decode (with the inpaint overlay when `padding_mask_crop` is set)."


class StableDiffusionXLCoreDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionXLInputStep, StableDiffusionXLAutoBeforeDenoiseStep,
                     StableDiffusionXLAutoControlNetInputStep, StableDiffusionXLAutoDenoiseStep]
    block_names = ["input", "before_denoise", "controlnet_input", "denoise"]

    @property
    def description(self) -> str:
        return "Batch expansion, before-denoise preparation, ControlNet inputs (optional) and the denoise loop."


class StableDiffusionXLAutoBlocks(SequentialPipelineBlocks):
    block_classes = [
        StableDiffusionXLTextEncoderStep,
        StableDiffusionXLAutoIPAdapterStep,
        StableDiffusionXLAutoVaeEncoderStep,
        StableDiffusionXLCoreDenoiseStep,
        StableDiffusionXLAutoDecodeStep,
    ]
    block_names = ["text_encoder", "ip_adapter", "vae_encoder", "denoise", "decode"]
    _workflow_map = {
        "text2image": {"prompt": True},
        "image2image": {"prompt": True, "image": True},
        "inpainting": {"prompt": True, "mask_image": True, "image": True},
        "controlnet_text2image": {"prompt": True, "control_image": True},
        "controlnet_image2image": {"prompt": True, "control_image": True, "image": True},
        "controlnet_inpainting": {"prompt": True, "control_image": True, "mask_image": True, "image": True},
        "ip_adapter_text2image": {"ip_adapter_image": True, "prompt": True},
        "ip_adapter_image2image": {"ip_adapter_image": True, "prompt": True, "image": True},
        "ip_adapter_inpainting": {"ip_adapter_image": True, "prompt": True, "mask_image": True, "image": True},
        "ip_adapter_controlnet_text2image": {"ip_adapter_image": True, "prompt": True, "control_image": True},
        "ip_adapter_controlnet_image2image": {
            "ip_adapter_image": True,
            "prompt": True,
            "control_image": True,
            "image": True,
        },
        "ip_adapter_controlnet_inpainting": {
            "ip_adapter_image": True,
            "prompt": True,
            "control_image": True,
            "mask_image": True,
            "image": True,
        },
    }

    @property
    def description(self) -> str:
        return ("Auto Modular pipeline for text-to-image, image-to-image, inpainting, and controlnet tasks using "
                "Stable Diffusion XL, with an optional IP-Adapter image prompt (`ip_adapter_image`).")

    @property
    def outputs(self):
        return [OutputParam("images", description="Generated images.")]


TEXT2IMAGE_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionXLTextEncoderStep),
        ("input", StableDiffusionXLInputStep),
        ("set_timesteps", StableDiffusionXLSetTimestepsStep),
        ("prepare_latents", StableDiffusionXLPrepareLatentsStep),
        ("prepare_add_cond", StableDiffusionXLPrepareAdditionalConditioningStep),
        ("denoise", StableDiffusionXLDenoiseStep),
        ("decode", StableDiffusionXLDecodeStep),
    ]
)

IMAGE2IMAGE_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionXLTextEncoderStep),
        ("image_encoder", StableDiffusionXLVaeEncoderStep),
        ("input", StableDiffusionXLInputStep),
        ("set_timesteps", StableDiffusionXLImg2ImgSetTimestepsStep),
        ("prepare_latents", StableDiffusionXLImg2ImgPrepareLatentsStep),
        ("prepare_add_cond", StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep),
        ("denoise", StableDiffusionXLDenoiseStep),
        ("decode", StableDiffusionXLDecodeStep),
    ]
)

INPAINT_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionXLTextEncoderStep),
        ("vae_encoder", StableDiffusionXLInpaintVaeEncoderStep),
        ("input", StableDiffusionXLInputStep),
        ("set_timesteps", StableDiffusionXLInpaintSetTimestepsStep),
        ("prepare_latents", StableDiffusionXLInpaintPrepareLatentsStep),
        ("prepare_add_cond", StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep),
        ("denoise", StableDiffusionXLInpaintDenoiseStep),
        ("decode", StableDiffusionXLInpaintDecodeStep),
    ]
)


CONTROLNET_BLOCKS = with_controlnet(TEXT2IMAGE_BLOCKS, StableDiffusionXLControlNetInputStep,
                                    StableDiffusionXLControlNetDenoiseStep)
CONTROLNET_IMAGE2IMAGE_BLOCKS = with_controlnet(IMAGE2IMAGE_BLOCKS, StableDiffusionXLControlNetInputStep,
                                                StableDiffusionXLControlNetDenoiseStep)
# the plain image-to-image preset calls its VAE step `image_encoder` (the name the docs pop); this one keeps
# the auto blocks' name
CONTROLNET_IMAGE2IMAGE_BLOCKS.insert("vae_encoder", CONTROLNET_IMAGE2IMAGE_BLOCKS.pop("image_encoder"), 1)
CONTROLNET_INPAINT_BLOCKS = with_controlnet(INPAINT_BLOCKS, StableDiffusionXLControlNetInputStep,
                                            StableDiffusionXLInpaintControlNetDenoiseStep)

AUTO_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionXLTextEncoderStep),
        ("ip_adapter", StableDiffusionXLAutoIPAdapterStep),
        ("vae_encoder", StableDiffusionXLAutoVaeEncoderStep),
        ("denoise", StableDiffusionXLCoreDenoiseStep),
        ("decode", StableDiffusionXLAutoDecodeStep),
    ]
)

ALL_BLOCKS = {
    "text2img": TEXT2IMAGE_BLOCKS,
    "img2img": IMAGE2IMAGE_BLOCKS,
    "inpaint": INPAINT_BLOCKS,
    "controlnet": CONTROLNET_BLOCKS,
    "controlnet_img2img": CONTROLNET_IMAGE2IMAGE_BLOCKS,
    "controlnet_inpaint": CONTROLNET_INPAINT_BLOCKS,
    "ip_adapter": IP_ADAPTER_BLOCKS,
    "auto": AUTO_BLOCKS,
}
