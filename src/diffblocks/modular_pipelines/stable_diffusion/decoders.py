"""Stable Diffusion 1.x/2.x decoding: VAE decode, optional safety checker, post-processing, inpaint overlay."""
from __future__ import annotations

import logging
from typing import Any, List, Optional

import torch

from .. import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam
from .encoders import MODEL_NAME, execution_device, image_processor_spec, vae_spec

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type: Any) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")


def decode_latents(vae, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
    """Decode scaled latents to pixels in [-1, 1]; an fp16 VAE with ``force_upcast`` decodes in float32."""
    dtype = latents.dtype
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
        latents = latents.to(torch.float32)
    else:
        latents = latents.to(vae.dtype)
    try:
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    return image.to(dtype) if upcast else image


def run_safety_checker(components: Any, image: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """``(image, has_nsfw_concept)``; the flags are None when the pipeline has no safety checker."""
    checker = getattr(components, "safety_checker", None)
    if checker is None:
        return image, None
    extractor = getattr(components, "feature_extractor", None)
    if extractor is None:
        raise ValueError("The safety checker needs the `feature_extractor` component, which is None.")
    pil = components.image_processor.postprocess(image, output_type="pil")
    clip_input = extractor(pil, return_tensors="pt").to(device)
    return checker(images=image, clip_input=clip_input.pixel_values.to(dtype))


class StableDiffusionDecodeStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Decode `latents` with the VAE (unless `output_type` is 'latent'), run the safety checker when the "
                "pipeline has one, and post-process to `output_type`.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [vae_spec(), image_processor_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("output_type", type_hint=str, default="pil", description="'pil', 'np', 'pt' or 'latent'."),
            InputParam("latents", type_hint=torch.Tensor, required=True),
            InputParam("generator"),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("images", description="Generated images (list of PIL, numpy array or tensor)."),
            OutputParam("nsfw_content_detected", type_hint=list, description="Safety checker flags or None."),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        check_output_type(bs.output_type)
        latents = bs.latents
        if bs.output_type == "latent":
            bs.images, bs.nsfw_content_detected = latents, None
            self.set_block_state(state, bs)
            return components, state
        image = decode_latents(components.vae, latents, bs.generator)
        image, flags = run_safety_checker(components, image, execution_device(components), latents.dtype)
        denormalize = None if flags is None else [not flag for flag in flags]
        bs.images = components.image_processor.postprocess(image, output_type=bs.output_type,
                                                           do_denormalize=denormalize)
        bs.nsfw_content_detected = flags
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionInpaintOverlayMaskStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("With `padding_mask_crop`, paste the generated crop back onto the original image "
                "(`images` is rewritten).")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [image_processor_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("image"),
            InputParam("mask_image"),
            InputParam("padding_mask_crop", type_hint=int),
            InputParam("images", required=True),
            InputParam("crops_coords"),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [OutputParam("images")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        if bs.padding_mask_crop is not None and bs.crops_coords is not None:
            bs.images = [
                components.image_processor.apply_overlay(bs.mask_image, bs.image, img, bs.crops_coords)
                for img in bs.images
            ]
        self.set_block_state(state, bs)
        return components, state
