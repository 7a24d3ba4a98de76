"""Classic Stable Diffusion 1.x/2.x image-to-image pipeline (runs the ``img2img`` preset blocks)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch

from .pipeline_stable_diffusion import StableDiffusionPipelineBase


class StableDiffusionImg2ImgPipeline(StableDiffusionPipelineBase):
    """Image-to-image generation: noise ``image`` to ``strength`` and denoise it towards ``prompt``."""

    _preset_name = "img2img"

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        image=None,
        strength: float = 0.8,
        num_inference_steps: Optional[int] = 50,
        timesteps: List[int] = None,
        sigmas: List[float] = None,
        guidance_scale: Optional[float] = 7.5,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: Optional[int] = 1,
        eta: Optional[float] = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
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
        """Transform ``image`` guided by ``prompt`` (see diffusers' ``StableDiffusionImg2ImgPipeline.__call__``).

        Returns a ``StableDiffusionPipelineOutput`` or, with ``return_dict=False``, ``(images, nsfw_flags)``.
        """
        callback_on_step_end, callback_steps = self._legacy_callback(kwargs, callback_on_step_end)
        self.check_inputs(
            prompt, None, None, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
            ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs, strength=strength,
            output_type=output_type, num_inference_steps=None if timesteps or sigmas else num_inference_steps,
        )
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        self._prepare_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        state = self._run(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt,
            image=image,
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
            generator=generator,
            eta=eta,
            dtype=dtype,
            output_type=output_type,
        )
        return self._finish(state, return_dict)
