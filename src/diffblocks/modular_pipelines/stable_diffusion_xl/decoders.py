"""Stable Diffusion XL decoding: VAE decode (fp16 VAEs with ``force_upcast`` decode in float32), post-processing
to ``output_type``, and the inpaint crop overlay. Same algorithm as the Stable Diffusion 1.x/2.x blocks (SDXL
folders have no safety checker, so that step is a no-op here)."""
from __future__ import annotations

from .. import SequentialPipelineBlocks
from ..stable_diffusion.decoders import StableDiffusionDecodeStep, StableDiffusionInpaintOverlayMaskStep
from .encoders import MODEL_NAME


class StableDiffusionXLDecodeStep(StableDiffusionDecodeStep):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Decode `latents` with the VAE (unless `output_type` is 'latent') and post-process to `output_type`."


class StableDiffusionXLInpaintOverlayMaskStep(StableDiffusionInpaintOverlayMaskStep):
    model_name = MODEL_NAME


class StableDiffusionXLInpaintDecodeStep(SequentialPipelineBlocks):
    block_classes = [StableDiffusionXLDecodeStep, StableDiffusionXLInpaintOverlayMaskStep]
    block_names = ["decode", "mask_overlay"]

    @property
    def description(self) -> str:
        return "Decode, then paste the crop back when `padding_mask_crop` was used."
