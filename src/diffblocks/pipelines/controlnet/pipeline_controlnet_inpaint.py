"""Classic Stable Diffusion 1.x/2.x ControlNet inpainting pipeline (runs the ``controlnet_inpaint`` preset):
9-channel inpainting UNets, or plain 4-channel UNets with the known region reset after every step."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch

from ..stable_diffusion.pipeline_stable_diffusion_inpaint import check_mask_crop
from .pipeline_controlnet import StableDiffusionControlNetPipelineBase


class StableDiffusionControlNetInpaintPipeline(StableDiffusionControlNetPipelineBase):
    """Repaint the white area of ``mask_image`` in ``image`` guided by ``prompt`` and ControlNet(s)."""

    _preset_name = "controlnet_inpaint"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "control_image", "mask",
                               "masked_image_latents"]
    _callback_renames = {"control_image": "controlnet_cond"}

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        image=None,
        mask_image=None,
        control_image=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        padding_mask_crop: Optional[int] = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
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
        controlnet_conditioning_scale: Union[float, List[float]] = 0.5,
        guess_mode: bool = False,
        control_guidance_start: Union[float, List[float]] = 0.0,
        control_guidance_end: Union[float, List[float]] = 1.0,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Inpaint ``image`` where ``mask_image`` is white, following ``control_image`` (see diffusers'
        ``StableDiffusionControlNetInpaintPipeline.__call__``). The size defaults to ``image``'s.

        Returns a ``StableDiffusionPipelineOutput`` or, with ``return_dict=False``, ``(images, nsfw_flags)``.
        """
        callback_on_step_end, callback_steps = self._legacy_callback(kwargs, callback_on_step_end)
        self.check_inputs(
            prompt, height, width, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
            ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs, strength=strength,
            output_type=output_type, num_inference_steps=num_inference_steps,
        )
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if mask_image is None:
            raise ValueError("`mask_image` input cannot be undefined.")
        check_mask_crop(image, mask_image, output_type, padding_mask_crop)
        self.check_controlnet_inputs(prompt, prompt_embeds, control_image, controlnet_conditioning_scale,
                                     control_guidance_start, control_guidance_end, image_name="control_image")
        height, width = self._size_from(self.image_processor, image, height, width)
        self._prepare_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        state = self._run(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt,
            image=image,
            mask_image=mask_image,
            height=height,
            width=width,
            padding_mask_crop=padding_mask_crop,
            strength=strength,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            cross_attention_kwargs=cross_attention_kwargs,
            clip_skip=clip_skip,
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps,
            latents=latents,
            generator=generator,
            eta=eta,
            output_type=output_type,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            **self._controlnet_inputs(control_image, controlnet_conditioning_scale, guess_mode,
                                      control_guidance_start, control_guidance_end),
        )
        return self._finish(state, return_dict)
