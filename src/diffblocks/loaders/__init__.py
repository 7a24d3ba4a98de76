"""Weight loaders for pipelines (LoRA)."""
from .lora import (
    LoraLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
    convert_lora_state_dict,
)

__all__ = [
    "LoraLoaderMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "convert_lora_state_dict",
]
