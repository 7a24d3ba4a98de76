"""The Stable Diffusion XL denoise loop: the Stable Diffusion loop (same wrapper, scaling and scheduler steps)
with a denoiser that passes the pooled text embeddings and ``add_time_ids`` to the UNet as ``added_cond_kwargs``.
Conditional and unconditional rows go through the UNet in one batched call (see ``diffblocks.guiders``)."""
from __future__ import annotations

import logging
from typing import Any, List

import torch

from .. import ComponentSpec, InputParam, ModularPipelineBlocks
from ..stable_diffusion.denoise import (
    StableDiffusionDenoiseLoopWrapper,
    StableDiffusionInpaintLoopAfterDenoiser,
    StableDiffusionInpaintLoopBeforeDenoiser,
    StableDiffusionLoopAfterDenoiser,
    StableDiffusionLoopBeforeDenoiser,
    denoiser_plan,
    ip_adapter_fields,
)
from ..stable_diffusion.encoders import DENOISER_FIELDS, guider_spec, unet_spec
from .before_denoise import scheduler_spec
from .encoders import MODEL_NAME

logger = logging.getLogger(__name__)


class StableDiffusionXLLoopBeforeDenoiser(StableDiffusionLoopBeforeDenoiser):
    model_name = MODEL_NAME

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec()]


class StableDiffusionXLInpaintLoopBeforeDenoiser(StableDiffusionInpaintLoopBeforeDenoiser):
    model_name = MODEL_NAME

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec(), unet_spec()]


class StableDiffusionXLLoopDenoiser(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step 2: predict the noise with the UNet, conditioned on the token embeddings and on "
                "`added_cond_kwargs` (pooled `text_embeds`, `time_ids`); the guider combines the branches.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [guider_spec(), unet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("cross_attention_kwargs", type_hint=dict),
            InputParam("num_inference_steps", type_hint=int, required=True),
            InputParam("timestep_cond", type_hint=torch.Tensor),
            InputParam(kwargs_type=DENOISER_FIELDS,
                       description="prompt_embeds, pooled_prompt_embeds, add_time_ids and their negative forms"),
        ]

    def __call__(self, components, block_state, i: int, t: Any):
        values = block_state.__dict__
        x = values["scaled_latents"]
        get = values.get
        fields = {
            "sample": (x, x),
            "encoder_hidden_states": (values["prompt_embeds"], get("negative_prompt_embeds")),
            "text_embeds": (values["pooled_prompt_embeds"], get("negative_pooled_prompt_embeds")),
            "time_ids": (values["add_time_ids"], get("negative_add_time_ids")),
        }
        ip = ip_adapter_fields(block_state, x.shape[0]) if "ip_adapter_embeds" in values else None
        if ip is not None:
            fields["image_embeds"] = ip
        unet = components.unet
        guide, extra = values.get("_denoiser_plan") or denoiser_plan(components, values)

        def predict(batch, identifier):
            added = {"text_embeds": batch["text_embeds"], "time_ids": batch["time_ids"]}
            if ip is not None:
                added["image_embeds"] = batch["image_embeds"]
            return unet(batch["sample"], t, encoder_hidden_states=batch["encoder_hidden_states"],
                        added_cond_kwargs=added, return_dict=False, **extra)[0]

        block_state.noise_pred = guide(predict, fields, i, values["num_inference_steps"], t, unet)
        return components, block_state


class StableDiffusionXLLoopAfterDenoiser(StableDiffusionLoopAfterDenoiser):
    model_name = MODEL_NAME

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec()]


class StableDiffusionXLInpaintLoopAfterDenoiser(StableDiffusionInpaintLoopAfterDenoiser):
    model_name = MODEL_NAME

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec(), unet_spec()]


class StableDiffusionXLDenoiseLoopWrapper(StableDiffusionDenoiseLoopWrapper):
    model_name = MODEL_NAME

    @property
    def loop_expected_components(self) -> List[ComponentSpec]:
        return [guider_spec(), scheduler_spec(), unet_spec()]


class StableDiffusionXLDenoiseStep(StableDiffusionXLDenoiseLoopWrapper):
    block_classes = [StableDiffusionXLLoopBeforeDenoiser, StableDiffusionXLLoopDenoiser,
                     StableDiffusionXLLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop (text-to-image and image-to-image): scale, UNet with guidance, scheduler step."


class StableDiffusionXLInpaintDenoiseStep(StableDiffusionXLDenoiseLoopWrapper):
    block_classes = [StableDiffusionXLInpaintLoopBeforeDenoiser, StableDiffusionXLLoopDenoiser,
                     StableDiffusionXLInpaintLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop (inpainting): 9-channel inputs or the 4-channel known-region blend."
