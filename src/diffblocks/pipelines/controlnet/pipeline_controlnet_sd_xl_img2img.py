"""Classic Stable Diffusion XL ControlNet image-to-image pipeline (runs the SDXL ``controlnet_img2img`` preset)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .pipeline_controlnet_sd_xl import StableDiffusionXLControlNetPipelineBase


class StableDiffusionXLControlNetImg2ImgPipeline(StableDiffusionXLControlNetPipelineBase):
    """Image-to-image generation with SDXL guided by ``prompt`` and one or several ControlNets."""

    _preset_name = "controlnet_img2img"
    _callback_tensor_inputs = [
        "latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds", "add_time_ids",
        "negative_pooled_prompt_embeds", "add_neg_time_ids", "control_image",
    ]
    _callback_renames = {"add_text_embeds": "pooled_prompt_embeds", "add_neg_time_ids": "negative_add_time_ids",
                         "control_image": "controlnet_cond"}

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        controlnet,
        scheduler,
        requires_aesthetics_score: bool = False,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: Optional[bool] = None,
        feature_extractor=None,
        image_encoder=None,
    ) -> None:
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
                         force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=add_watermarker,
                         feature_extractor=feature_extractor, image_encoder=image_encoder)
        self.register_to_config(requires_aesthetics_score=requires_aesthetics_score)

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        prompt_2: Optional[Union[str, List[str]]] = None,
        image=None,
        control_image=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        negative_prompt_2: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: Optional[int] = 1,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
        output_type: Optional[str] = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        controlnet_conditioning_scale: Union[float, List[float]] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: Union[float, List[float]] = 0.0,
        control_guidance_end: Union[float, List[float]] = 1.0,
        original_size: Tuple[int, int] = None,
        crops_coords_top_left: Tuple[int, int] = (0, 0),
        target_size: Tuple[int, int] = None,
        negative_original_size: Optional[Tuple[int, int]] = None,
        negative_crops_coords_top_left: Tuple[int, int] = (0, 0),
        negative_target_size: Optional[Tuple[int, int]] = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Transform ``image`` guided by ``prompt`` and ``control_image`` (see diffusers'
        ``StableDiffusionXLControlNetImg2ImgPipeline.__call__``).

        Returns a ``StableDiffusionXLPipelineOutput`` or, with ``return_dict=False``, ``(images,)``.
        """
        callback_on_step_end, _ = self._legacy_callback(kwargs, callback_on_step_end)
        self.check_inputs_xl(
            prompt, prompt_2, None, None, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
            pooled_prompt_embeds, negative_pooled_prompt_embeds, ip_adapter_image, ip_adapter_image_embeds,
            callback_on_step_end_tensor_inputs, strength=strength, num_inference_steps=num_inference_steps,
            output_type=output_type,
        )
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        self.check_controlnet_inputs(prompt, prompt_embeds, control_image, controlnet_conditioning_scale,
                                     control_guidance_start, control_guidance_end, image_name="control_image")
        size = self._size_from(self.control_image_processor, control_image, height, width, per_net=True)
        self._prepare_call_xl(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        state = self._run_xl(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            cross_attention_kwargs=cross_attention_kwargs, clip_skip=clip_skip, image=image, height=height,
            width=width, strength=strength, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps, latents=latents, generator=generator, eta=eta,
            output_type=output_type, dtype=self._embeds_dtype(), original_size=original_size or size,
            target_size=target_size or size, crops_coords_top_left=crops_coords_top_left,
            negative_original_size=negative_original_size,
            negative_crops_coords_top_left=negative_crops_coords_top_left, negative_target_size=negative_target_size,
            aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            **self._controlnet_inputs(control_image, controlnet_conditioning_scale, guess_mode,
                                      control_guidance_start, control_guidance_end),
        )
        return self._finish(state, return_dict)
