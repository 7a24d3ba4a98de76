"""Stable Diffusion 1.x/2.x block compositions: per-task presets (``ALL_BLOCKS``) and the auto blocks.

The stage layout follows the SDXL family: ``text_encoder``, ``vae_encoder``, ``denoise`` (``input``,
``before_denoise``, ``denoise``), ``decode``. Presets hold block *classes* (fresh instances per
``SequentialPipelineBlocks.from_blocks_dict``) and are never mutated by the library.
"""
from __future__ import annotations

from .. import AutoPipelineBlocks, InsertableDict, OutputParam, SequentialPipelineBlocks
from .before_denoise import (
    StableDiffusionImg2ImgPrepareLatentsStep,
    StableDiffusionImg2ImgSetTimestepsStep,
    StableDiffusionInpaintPrepareLatentsStep,
    StableDiffusionInpaintSetTimestepsStep,
    StableDiffusionInputStep,
    StableDiffusionPrepareLatentsStep,
    StableDiffusionSetTimestepsStep,
)
from .controlnet import (
    StableDiffusionControlNetDenoiseStep,
    StableDiffusionControlNetInputStep,
    StableDiffusionInpaintControlNetDenoiseStep,
)
from .decoders import StableDiffusionDecodeStep, StableDiffusionInpaintOverlayMaskStep
from .denoise import StableDiffusionDenoiseStep, StableDiffusionInpaintDenoiseStep
from .encoders import (
    MODEL_NAME,
    StableDiffusionInpaintVaeEncoderStep,
    StableDiffusionTextEncoderStep,
    StableDiffusionVaeEncoderStep,
)
from .ip_adapter import IP_ADAPTER_BLOCKS, StableDiffusionAutoIPAdapterStep


class StableDiffusionBeforeDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionSetTimestepsStep, StableDiffusionPrepareLatentsStep]
    block_names = ["set_timesteps", "prepare_latents"]

    @property
    def description(self) -> str:
        return "Before denoise (text-to-image): timesteps and initial noise latents."


class StableDiffusionImg2ImgBeforeDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionImg2ImgSetTimestepsStep, StableDiffusionImg2ImgPrepareLatentsStep]
    block_names = ["set_timesteps", "prepare_latents"]

    @property
    def description(self) -> str:
        return "Before denoise (image-to-image): strength-trimmed timesteps and noised image latents."


class StableDiffusionInpaintBeforeDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionInpaintSetTimestepsStep, StableDiffusionInpaintPrepareLatentsStep]
    block_names = ["set_timesteps", "prepare_latents"]

    @property
    def description(self) -> str:
        return "Before denoise (inpainting): timesteps, latents, mask and masked-image latents."


class StableDiffusionInpaintDecodeStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionDecodeStep, StableDiffusionInpaintOverlayMaskStep]
    block_names = ["decode", "mask_overlay"]

    @property
    def description(self) -> str:
        return "Decode, then paste the crop back when `padding_mask_crop` was used."


class StableDiffusionAutoVaeEncoderStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionInpaintVaeEncoderStep, StableDiffusionVaeEncoderStep]
    block_names = ["inpaint", "img2img"]
    block_trigger_inputs = ["mask_image", "image"]

    @property
    def description(self) -> str:
        return ("Image preparation: inpainting when `mask_image` is given, image-to-image when `image` is given, "
                "skipped otherwise.")


class StableDiffusionAutoBeforeDenoiseStep(AutoPipelineBlocks):
    block_classes = [
        StableDiffusionInpaintBeforeDenoiseStep,
        StableDiffusionImg2ImgBeforeDenoiseStep,
        StableDiffusionBeforeDenoiseStep,
    ]
    block_names = ["inpaint", "img2img", "text2img"]
    block_trigger_inputs = ["mask", "image_latents", None]

    @property
    def description(self) -> str:
        return "Before denoise: inpainting (`mask`), image-to-image (`image_latents`) or text-to-image (default)."


class StableDiffusionAutoControlNetInputStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionControlNetInputStep]
    block_names = ["controlnet"]
    block_trigger_inputs = ["control_image"]

    @property
    def description(self) -> str:
        return "ControlNet inputs when `control_image` is given, skipped otherwise."


class StableDiffusionAutoControlNetDenoiseStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionInpaintControlNetDenoiseStep, StableDiffusionControlNetDenoiseStep]
    block_names = ["inpaint_controlnet_denoise", "controlnet_denoise"]
    block_trigger_inputs = ["mask", "controlnet_cond"]

    @property
    def description(self) -> str:
        return "ControlNet denoise loop: the inpainting variant when `mask` is present."


class StableDiffusionAutoDenoiseStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionAutoControlNetDenoiseStep, StableDiffusionInpaintDenoiseStep,
                     StableDiffusionDenoiseStep]
    block_names = ["controlnet_denoise", "inpaint_denoise", "denoise"]
    block_trigger_inputs = ["controlnet_cond", "mask", None]

    @property
    def description(self) -> str:
        return ("Denoise loop: with ControlNet when `controlnet_cond` is present, the inpainting loop when `mask` is "
                "present, else the plain loop.")


class StableDiffusionAutoDecodeStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionInpaintDecodeStep, StableDiffusionDecodeStep]
    block_names = ["inpaint", "non-inpaint"]
    block_trigger_inputs = ["padding_mask_crop", None]

    @property
    def description(self) -> str:
        return "Decode (with the inpaint overlay when `padding_mask_crop` is set)."


class StableDiffusionCoreDenoiseStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionInputStep, StableDiffusionAutoBeforeDenoiseStep,
                     StableDiffusionAutoControlNetInputStep, StableDiffusionAutoDenoiseStep]
    block_names = ["input", "before_denoise", "controlnet_input", "denoise"]

    @property
    def description(self) -> str:
        return "Batch expansion, before-denoise preparation, ControlNet inputs (optional) and the denoise loop."


class StableDiffusionAutoBlocks(SequentialPipelineBlocks):
    block_classes = [
        StableDiffusionTextEncoderStep,
        StableDiffusionAutoIPAdapterStep,
        StableDiffusionAutoVaeEncoderStep,
        StableDiffusionCoreDenoiseStep,
        StableDiffusionAutoDecodeStep,
    ]
    block_names = ["text_encoder", "ip_adapter", "vae_encoder", "denoise", "decode"]
    _workflow_map = {
        "text2image": {"prompt": True},
        "image2image": {"prompt": True, "image": True},
        "inpainting": {"prompt": True, "image": True, "mask_image": True},
        "controlnet_text2image": {"prompt": True, "control_image": True},
        "controlnet_image2image": {"prompt": True, "image": True, "control_image": True},
        "controlnet_inpainting": {"prompt": True, "image": True, "mask_image": True, "control_image": True},
        "ip_adapter_text2image": {"ip_adapter_image": True, "prompt": True},
        "ip_adapter_image2image": {"ip_adapter_image": True, "prompt": True, "image": True},
        "ip_adapter_inpainting": {"ip_adapter_image": True, "prompt": True, "image": True, "mask_image": True},
        "ip_adapter_controlnet_text2image": {"ip_adapter_image": True, "prompt": True, "control_image": True},
        "ip_adapter_controlnet_image2image": {
            "ip_adapter_image": True,
            "prompt": True,
            "image": True,
            "control_image": True,
        },
        "ip_adapter_controlnet_inpainting": {
            "ip_adapter_image": True,
            "prompt": True,
            "image": True,
            "mask_image": True,
            "control_image": True,
        },
    }

    @property
    def description(self) -> str:
        return ("Auto modular pipeline for text-to-image, image-to-image, inpainting and ControlNet tasks with Stable "
                "Diffusion 1.x/2.x, with an optional IP-Adapter image prompt (`ip_adapter_image`).")

    @property
    def outputs(self):
        return [OutputParam("images", description="Generated images.")]


TEXT2IMAGE_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionTextEncoderStep),
        ("input", StableDiffusionInputStep),
        ("set_timesteps", StableDiffusionSetTimestepsStep),
        ("prepare_latents", StableDiffusionPrepareLatentsStep),
        ("denoise", StableDiffusionDenoiseStep),
        ("decode", StableDiffusionDecodeStep),
    ]
)

IMAGE2IMAGE_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionTextEncoderStep),
        ("vae_encoder", StableDiffusionVaeEncoderStep),
        ("input", StableDiffusionInputStep),
        ("set_timesteps", StableDiffusionImg2ImgSetTimestepsStep),
        ("prepare_latents", StableDiffusionImg2ImgPrepareLatentsStep),
        ("denoise", StableDiffusionDenoiseStep),
        ("decode", StableDiffusionDecodeStep),
    ]
)

INPAINT_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionTextEncoderStep),
        ("vae_encoder", StableDiffusionInpaintVaeEncoderStep),
        ("input", StableDiffusionInputStep),
        ("set_timesteps", StableDiffusionInpaintSetTimestepsStep),
        ("prepare_latents", StableDiffusionInpaintPrepareLatentsStep),
        ("denoise", StableDiffusionInpaintDenoiseStep),
        ("decode", StableDiffusionInpaintDecodeStep),
    ]
)


def with_controlnet(base: InsertableDict, input_step: type, denoise_step: type) -> InsertableDict:
    """``base`` with ``input_step`` (the ControlNet input step) before the denoise loop and ``denoise_step`` as the
    loop (the SDXL presets are built the same way)."""
    blocks = InsertableDict(base)
    blocks.insert("controlnet_input", input_step, list(blocks).index("denoise"))
    blocks["denoise"] = denoise_step
    return blocks


CONTROLNET_BLOCKS = with_controlnet(TEXT2IMAGE_BLOCKS, StableDiffusionControlNetInputStep,
                                    StableDiffusionControlNetDenoiseStep)
CONTROLNET_IMAGE2IMAGE_BLOCKS = with_controlnet(IMAGE2IMAGE_BLOCKS, StableDiffusionControlNetInputStep,
                                                StableDiffusionControlNetDenoiseStep)
CONTROLNET_INPAINT_BLOCKS = with_controlnet(INPAINT_BLOCKS, StableDiffusionControlNetInputStep,
                                            StableDiffusionInpaintControlNetDenoiseStep)

AUTO_BLOCKS = InsertableDict(
    [
        ("text_encoder", StableDiffusionTextEncoderStep),
        ("ip_adapter", StableDiffusionAutoIPAdapterStep),
        ("vae_encoder", StableDiffusionAutoVaeEncoderStep),
        ("denoise", StableDiffusionCoreDenoiseStep),
        ("decode", StableDiffusionAutoDecodeStep),
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

__all__ = [
    "ALL_BLOCKS",
    "AUTO_BLOCKS",
    "CONTROLNET_BLOCKS",
    "CONTROLNET_IMAGE2IMAGE_BLOCKS",
    "CONTROLNET_INPAINT_BLOCKS",
    "IMAGE2IMAGE_BLOCKS",
    "INPAINT_BLOCKS",
    "TEXT2IMAGE_BLOCKS",
    "StableDiffusionAutoBlocks",
    "StableDiffusionAutoBeforeDenoiseStep",
    "StableDiffusionAutoControlNetDenoiseStep",
    "StableDiffusionAutoControlNetInputStep",
    "StableDiffusionAutoDecodeStep",
    "StableDiffusionAutoDenoiseStep",
    "StableDiffusionAutoVaeEncoderStep",
    "StableDiffusionBeforeDenoiseStep",
    "StableDiffusionCoreDenoiseStep",
    "StableDiffusionImg2ImgBeforeDenoiseStep",
    "StableDiffusionInpaintBeforeDenoiseStep",
    "StableDiffusionInpaintDecodeStep",
]
