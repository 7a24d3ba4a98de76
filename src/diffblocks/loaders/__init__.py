"""Weight loaders for pipelines (LoRA, IP-Adapter)."""
from .ip_adapter import IPAdapterMixin, ModularIPAdapterMixin
from .lora import (
    LoraLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
    convert_lora_state_dict,
)

__all__ = [
    "IPAdapterMixin",
    "LoraLoaderMixin",
    "ModularIPAdapterMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "convert_lora_state_dict",
]
