"""``StableDiffusionXLModularPipeline``: the executor for Stable Diffusion XL blocks, registered for
``model_name = "stable-diffusion-xl"``. Its derived sizes work before the components are loaded."""
from __future__ import annotations

from typing import Any

from ..stable_diffusion.modular_pipeline import StableDiffusionModularPipeline
from .encoders import MODEL_NAME
from ...loaders.lora import StableDiffusionXLLoraLoaderMixin


class StableDiffusionXLModularPipeline(StableDiffusionXLLoraLoaderMixin, StableDiffusionModularPipeline):
    """Modular pipeline for Stable Diffusion XL (base and refiner)."""

    default_blocks_name = "StableDiffusionXLAutoBlocks"
    model_name = MODEL_NAME

    @property
    def default_sample_size(self) -> int:
        unet = self._component("unet")
        return unet.config.sample_size if unet is not None else 128

    @property
    def requires_aesthetics_score(self) -> bool:
        return bool(self._config.get("requires_aesthetics_score") or False)

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        value = self._config.get("force_zeros_for_empty_prompt")
        return True if value is None else bool(value)


def _register() -> None:
    from .. import modular_pipeline as core

    register = getattr(core, "register_modular_pipeline", None)
    if register is not None:
        register(MODEL_NAME, StableDiffusionXLModularPipeline)


_register()
