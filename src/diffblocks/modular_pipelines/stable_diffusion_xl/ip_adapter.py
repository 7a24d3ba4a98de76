"""IP-Adapter step for Stable Diffusion XL: the Stable Diffusion step (same image encoding and outputs) under the
SDXL model name. It runs right after the text encoder in the SDXL auto blocks (trigger input ``ip_adapter_image``).
"""
from __future__ import annotations

from ..stable_diffusion.ip_adapter import StableDiffusionIPAdapterEmbedsStep, StableDiffusionIPAdapterStep
from .encoders import MODEL_NAME


class StableDiffusionXLIPAdapterStep(StableDiffusionIPAdapterStep):
    model_name = MODEL_NAME


class StableDiffusionXLIPAdapterEmbedsStep(StableDiffusionIPAdapterEmbedsStep):
    """The classic SDXL pipelines' variant: ``ip_adapter_image`` or precomputed ``ip_adapter_image_embeds``."""

    model_name = MODEL_NAME


__all__ = ["StableDiffusionXLIPAdapterEmbedsStep", "StableDiffusionXLIPAdapterStep"]
