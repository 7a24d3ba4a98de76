"""``StableDiffusionModularPipeline``: the executor for Stable Diffusion 1.x/2.x blocks.

Registered for ``model_name = "stable-diffusion"`` so ``blocks.init_pipeline(...)`` and
``ModularPipeline.from_pretrained(...)`` on an SD 1.x/2.x folder pick it.
"""
from __future__ import annotations

from typing import Any

from ...loaders.ip_adapter import ModularIPAdapterMixin
from ...loaders.lora import StableDiffusionLoraLoaderMixin
from .. import ModularPipeline
from .encoders import MODEL_NAME


class StableDiffusionModularPipeline(StableDiffusionLoraLoaderMixin, ModularIPAdapterMixin, ModularPipeline):
    """Modular pipeline for Stable Diffusion 1.x/2.x; the derived sizes work before components are loaded."""

    default_blocks_name = "StableDiffusionAutoBlocks"
    model_name = MODEL_NAME

    def _component(self, name: str) -> Any:
        return getattr(self, name, None)

    @property
    def vae_scale_factor(self) -> int:
        vae = self._component("vae")
        if vae is not None:
            return 2 ** (len(vae.config.block_out_channels) - 1)
        return 8

    @property
    def default_sample_size(self) -> int:
        unet = self._component("unet")
        if unet is not None:
            return unet.config.sample_size
        return 64

    @property
    def default_height(self) -> int:
        size = self.default_sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return size * self.vae_scale_factor

    @property
    def default_width(self) -> int:
        size = self.default_sample_size
        size = size[1] if isinstance(size, (list, tuple)) else size
        return size * self.vae_scale_factor

    @property
    def num_channels_unet(self) -> int:
        unet = self._component("unet")
        return unet.config.in_channels if unet is not None else 4

    @property
    def num_channels_latents(self) -> int:
        vae = self._component("vae")
        return vae.config.latent_channels if vae is not None else 4


def _register() -> None:
    from .. import modular_pipeline as core

    register = getattr(core, "register_modular_pipeline", None)
    if register is not None:
        register(MODEL_NAME, StableDiffusionModularPipeline)


_register()
