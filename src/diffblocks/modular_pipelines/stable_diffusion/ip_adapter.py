"""IP-Adapter step for Stable Diffusion 1.x/2.x: encode the reference image(s) for the loaded IP-Adapter(s).

The step only prepares the embeddings (one tensor per adapter, one row per image set: the denoiser repeats them
to the latents' batch); the adapter weights go into the UNet through ``pipeline.load_ip_adapter(...)`` and its
strength through ``pipeline.set_ip_adapter_scale(...)``.
"""
from __future__ import annotations

from typing import List

import torch

from .. import AutoPipelineBlocks, ComponentSpec, InputParam, InsertableDict, ModularPipelineBlocks, OutputParam
from .encoders import DENOISER_FIELDS, MODEL_NAME, execution_device, guider_spec, unet_spec, uses_guidance_embedding


def image_encoder_spec() -> ComponentSpec:
    from transformers import CLIPVisionModelWithProjection

    return ComponentSpec("image_encoder", CLIPVisionModelWithProjection)


def feature_extractor_spec() -> ComponentSpec:
    from transformers import CLIPImageProcessor

    from ...configuration import FrozenDict

    return ComponentSpec(
        "feature_extractor",
        CLIPImageProcessor,
        config=FrozenDict({"size": 224, "crop_size": 224}),
        default_creation_method="from_config",
    )


class StableDiffusionIPAdapterStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("IP-Adapter step: encode `ip_adapter_image` (one image, or a list with one entry per loaded "
                "IP-Adapter) with the CLIP image encoder into `ip_adapter_embeds` (and the unconditional "
                "`negative_ip_adapter_embeds` when guidance is on). Load the adapter weights into the UNet with "
                "`pipeline.load_ip_adapter(...)` and set their strength with `pipeline.set_ip_adapter_scale(...)`.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [image_encoder_spec(), feature_extractor_spec(), unet_spec(), guider_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("ip_adapter_image", required=True,
                       description="Reference image(s) for the IP-Adapter(s): one per loaded adapter."),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("ip_adapter_embeds", type_hint=list, kwargs_type=DENOISER_FIELDS,
                        description="Image embeddings, one tensor per IP-Adapter."),
            OutputParam("negative_ip_adapter_embeds", type_hint=list, kwargs_type=DENOISER_FIELDS,
                        description="Unconditional image embeddings (None without guidance)."),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        from ...loaders.ip_adapter import split_ip_adapter_image_embeds

        bs = self.get_block_state(state)
        do_cfg = components.guider.num_conditions > 1 and not uses_guidance_embedding(components)
        bs.ip_adapter_embeds, bs.negative_ip_adapter_embeds = split_ip_adapter_image_embeds(
            components, bs.ip_adapter_image, bs.__dict__.get("ip_adapter_image_embeds"),
            execution_device(components), 1, do_cfg,
        )
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionIPAdapterEmbedsStep(StableDiffusionIPAdapterStep):
    """The classic pipelines' variant: ``ip_adapter_image`` or precomputed ``ip_adapter_image_embeds``."""

    @property
    def description(self) -> str:
        return ("IP-Adapter step of the classic pipelines: encode `ip_adapter_image`, or split precomputed "
                "`ip_adapter_image_embeds` (negative half first when guidance is on).")

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("ip_adapter_image", description="Reference image(s): one per loaded IP-Adapter."),
            InputParam("ip_adapter_image_embeds", type_hint=list,
                       description="Precomputed image embeddings, one tensor per IP-Adapter."),
        ]


class StableDiffusionAutoIPAdapterStep(AutoPipelineBlocks):
    """Runs the IP-Adapter step when ``ip_adapter_image`` is given; skipped otherwise."""

    block_classes = [StableDiffusionIPAdapterStep]
    block_names = ["ip_adapter"]
    block_trigger_inputs = ["ip_adapter_image"]

    @property
    def description(self) -> str:
        return ("IP-Adapter image encoding when `ip_adapter_image` is given (needs `load_ip_adapter` first); "
                "skipped otherwise.")


# preset to insert after the text encoder: ``blocks.sub_blocks.insert("ip_adapter", ..., 1)``
IP_ADAPTER_BLOCKS = InsertableDict([("ip_adapter", StableDiffusionAutoIPAdapterStep)])

__all__ = [
    "IP_ADAPTER_BLOCKS",
    "StableDiffusionAutoIPAdapterStep",
    "StableDiffusionIPAdapterEmbedsStep",
    "StableDiffusionIPAdapterStep",
]
