"""Classic Stable Diffusion 1.x/2.x inpainting pipeline (runs the ``inpaint`` preset blocks).

Works with 9-channel inpainting UNets (latents + mask + masked-image latents as input) and with plain 4-channel
UNets (the known region is reset to the noised image latents after every step).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import PIL.Image
import torch

from .pipeline_stable_diffusion import StableDiffusionPipelineBase



def check_mask_crop(image, mask_image, output_type, padding_mask_crop) -> None:
    """With ``padding_mask_crop``, the image and mask must be PIL images and the output PIL (diffusers' rule)."""
    if padding_mask_crop is None:
        return
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"The image should be a PIL image when inpainting mask crop, but is of type {type(image)}.")
    if not isinstance(mask_image, PIL.Image.Image):
        raise ValueError(
            f"The mask image should be a PIL image when inpainting mask crop, but is of type {type(mask_image)}."
        )
    if output_type != "pil":
        raise ValueError(f"The output type should be PIL when inpainting mask crop, but is {output_type}.")

class StableDiffusionInpaintPipeline(StableDiffusionPipelineBase):
    """Repaint the white area of ``mask_image`` in ``image`` guided by ``prompt``."""

    _preset_name = "inpaint"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        image=None,
        mask_image=None,
        masked_image_latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        padding_mask_crop: Optional[int] = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        timesteps: List[int] = None,
        sigmas: List[float] = None,
        guidance_scale: float = 7.5,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: Optional[int] = 1,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
        output_type: Optional[str] = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        clip_skip: int = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Inpaint ``image`` where ``mask_image`` is white (see diffusers' ``StableDiffusionInpaintPipeline``).

        Returns a ``StableDiffusionPipelineOutput`` or, with ``return_dict=False``, ``(images, nsfw_flags)``.
        """
        callback_on_step_end, callback_steps = self._legacy_callback(kwargs, callback_on_step_end)
        height = height or self.default_height
        width = width or self.default_width
        self.check_inputs(
            prompt, height, width, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
            ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs, strength=strength,
            output_type=output_type, num_inference_steps=None if timesteps or sigmas else num_inference_steps,
        )
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if mask_image is None:
            raise ValueError("`mask_image` input cannot be undefined.")
        check_mask_crop(image, mask_image, output_type, padding_mask_crop)
        self._prepare_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        state = self._run(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt,
            image=image,
            mask_image=mask_image,
            masked_image_latents=masked_image_latents,
            height=height,
            width=width,
            padding_mask_crop=padding_mask_crop,
            strength=strength,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            cross_attention_kwargs=cross_attention_kwargs,
            clip_skip=clip_skip,
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            latents=latents,
            generator=generator,
            eta=eta,
            output_type=output_type,
        )
        return self._finish(state, return_dict)
