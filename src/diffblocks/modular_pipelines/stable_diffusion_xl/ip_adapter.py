"""IP-Adapter step for Stable Diffusion XL: the Stable Diffusion step (same image encoding and outputs) under the
SDXL model name. It runs right after the text encoder in the SDXL auto blocks (trigger input ``ip_adapter_image``).
"""
from __future__ import annotations

from .. import AutoPipelineBlocks, InsertableDict
from ..stable_diffusion.ip_adapter import StableDiffusionIPAdapterEmbedsStep, StableDiffusionIPAdapterStep
from .encoders import MODEL_NAME


class StableDiffusionXLIPAdapterStep(StableDiffusionIPAdapterStep):
    model_name = MODEL_NAME


class StableDiffusionXLIPAdapterEmbedsStep(StableDiffusionIPAdapterEmbedsStep):
    """The classic SDXL pipelines' variant: ``ip_adapter_image`` or precomputed ``ip_adapter_image_embeds``."""

    model_name = MODEL_NAME


class StableDiffusionXLAutoIPAdapterStep(AutoPipelineBlocks):
    """Runs the SDXL IP-Adapter step when ``ip_adapter_image`` is given; skipped otherwise (the auto blocks'
    ``ip_adapter`` entry, right after ``text_encoder``)."""

    block_classes = [StableDiffusionXLIPAdapterStep]
    block_names = ["ip_adapter"]
    block_trigger_inputs = ["ip_adapter_image"]

    @property
    def description(self) -> str:
        return ("IP-Adapter image encoding when `ip_adapter_image` is given (needs `load_ip_adapter` first); "
                "skipped otherwise.")


# the legacy ``ALL_BLOCKS["ip_adapter"]`` preset (meant to be inserted after the text encoder)
IP_ADAPTER_BLOCKS = InsertableDict([("ip_adapter", StableDiffusionXLAutoIPAdapterStep)])

__all__ = [
    "IP_ADAPTER_BLOCKS",
    "StableDiffusionXLAutoIPAdapterStep",
    "StableDiffusionXLIPAdapterEmbedsStep",
    "StableDiffusionXLIPAdapterStep",
]
