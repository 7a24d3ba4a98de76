"""ControlNet for Stable Diffusion XL: the SD blocks (``stable_diffusion/controlnet.py``) with the SDXL
micro-conditioning. The ControlNet receives the pooled ``text_embeds`` and ``time_ids`` as ``added_cond_kwargs``
(the conditional rows only in ``guess_mode``), the UNet receives them plus the optional IP-Adapter embeddings."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .. import InputParam
from ..stable_diffusion.controlnet import StableDiffusionControlNetInputStep, StableDiffusionControlNetLoopDenoiser
from .denoise import (
    StableDiffusionXLDenoiseLoopWrapper,
    StableDiffusionXLInpaintLoopAfterDenoiser,
    StableDiffusionXLInpaintLoopBeforeDenoiser,
    StableDiffusionXLLoopAfterDenoiser,
    StableDiffusionXLLoopBeforeDenoiser,
)
from .before_denoise import valid_fraction
from .encoders import MODEL_NAME


class StableDiffusionXLControlNetInputStep(StableDiffusionControlNetInputStep):
    model_name = MODEL_NAME

    @property
    def inputs(self) -> List[InputParam]:
        return super().inputs + [InputParam("denoising_end", type_hint=float)]

    def _schedule_length(self, components, bs) -> int:
        # with `denoising_end` the window is measured on the schedule before it was cut short (as diffusers does):
        # the scheduler's timesteps from the first one used
        if not valid_fraction(bs.denoising_end):
            return len(bs.timesteps)
        scheduler = components.scheduler
        begin = getattr(scheduler, "_begin_index", None) or 0
        return len(scheduler.timesteps) - begin


class StableDiffusionXLControlNetLoopDenoiser(StableDiffusionControlNetLoopDenoiser):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step 2 (ControlNet): run the ControlNet (conditioned on `text_embeds`/`time_ids` too), then "
                "the UNet with its residuals; the guider batches the conditional and unconditional rows.")

    def _fields(self, bs) -> Dict[str, Tuple[Any, Any]]:
        get = bs.__dict__.get
        fields = super()._fields(bs)
        fields["text_embeds"] = (bs.pooled_prompt_embeds, get("negative_pooled_prompt_embeds"))
        fields["time_ids"] = (bs.add_time_ids, get("negative_add_time_ids"))
        return fields

    def _controlnet_added(self, values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return {"text_embeds": values["text_embeds"], "time_ids": values["time_ids"]}

    def _unet_added(self, values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        added = {"text_embeds": values["text_embeds"], "time_ids": values["time_ids"]}
        if values.get("image_embeds") is not None:
            added["image_embeds"] = values["image_embeds"]
        return added


class StableDiffusionXLControlNetDenoiseStep(StableDiffusionXLDenoiseLoopWrapper):
    block_classes = [StableDiffusionXLLoopBeforeDenoiser, StableDiffusionXLControlNetLoopDenoiser,
                     StableDiffusionXLLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop with ControlNet (text-to-image and image-to-image)."


class StableDiffusionXLInpaintControlNetDenoiseStep(StableDiffusionXLDenoiseLoopWrapper):
    block_classes = [StableDiffusionXLInpaintLoopBeforeDenoiser, StableDiffusionXLControlNetLoopDenoiser,
                     StableDiffusionXLInpaintLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop with ControlNet (inpainting: 9-channel inputs or the 4-channel known-region blend)."


__all__ = [
    "StableDiffusionXLControlNetDenoiseStep",
    "StableDiffusionXLControlNetInputStep",
    "StableDiffusionXLControlNetLoopDenoiser",
    "StableDiffusionXLInpaintControlNetDenoiseStep",
]
