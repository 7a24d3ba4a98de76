"""Classic Stable Diffusion 1.x/2.x ControlNet image-to-image pipeline (runs the ``controlnet_img2img`` preset)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch

from .pipeline_controlnet import StableDiffusionControlNetPipelineBase


class StableDiffusionControlNetImg2ImgPipeline(StableDiffusionControlNetPipelineBase):
    """Image-to-image generation guided by ``prompt`` and one or several ControlNets (``control_image``)."""

    _preset_name = "controlnet_img2img"
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "control_image"]
    _callback_renames = {"control_image": "controlnet_cond"}

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        image=None,
        control_image=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        strength: float = 0.8,
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
        controlnet_conditioning_scale: Union[float, List[float]] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: Union[float, List[float]] = 0.0,
        control_guidance_end: Union[float, List[float]] = 1.0,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Transform ``image`` guided by ``prompt`` and ``control_image`` (see diffusers'
        ``StableDiffusionControlNetImg2ImgPipeline.__call__``).

        Returns a ``StableDiffusionPipelineOutput`` or, with ``return_dict=False``, ``(images, nsfw_flags)``.
        """
        callback_on_step_end, callback_steps = self._legacy_callback(kwargs, callback_on_step_end)
        self.check_inputs(
            prompt, None, None, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
            ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs, strength=strength,
            output_type=output_type, num_inference_steps=num_inference_steps,
        )
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        self.check_controlnet_inputs(prompt, prompt_embeds, control_image, controlnet_conditioning_scale,
                                     control_guidance_start, control_guidance_end, image_name="control_image")
        self._prepare_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        state = self._run(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt,
            image=image,
            height=height,
            width=width,
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
            dtype=dtype,
            output_type=output_type,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            **self._controlnet_inputs(control_image, controlnet_conditioning_scale, guess_mode,
                                      control_guidance_start, control_guidance_end),
        )
        return self._finish(state, return_dict)
