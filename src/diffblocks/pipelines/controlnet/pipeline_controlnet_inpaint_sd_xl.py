"""Classic Stable Diffusion XL ControlNet inpainting pipeline (runs the SDXL ``controlnet_inpaint`` preset)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..stable_diffusion.pipeline_stable_diffusion_inpaint import check_mask_crop
from .pipeline_controlnet_sd_xl_img2img import StableDiffusionXLControlNetImg2ImgPipeline


class StableDiffusionXLControlNetInpaintPipeline(StableDiffusionXLControlNetImg2ImgPipeline):
    """Repaint the white area of ``mask_image`` in ``image`` with SDXL, guided by ``prompt`` and ControlNet(s)."""

    _preset_name = "controlnet_inpaint"
    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _callback_tensor_inputs = [
        "latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds", "add_time_ids",
        "negative_pooled_prompt_embeds", "add_neg_time_ids", "mask", "masked_image_latents", "control_image",
    ]

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        prompt_2: Optional[Union[str, List[str]]] = None,
        image=None,
        mask_image=None,
        control_image=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        padding_mask_crop: Optional[int] = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
        denoising_start: Optional[float] = None,
        denoising_end: Optional[float] = None,
        guidance_scale: float = 5.0,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        negative_prompt_2: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: Optional[int] = 1,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: Optional[str] = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        controlnet_conditioning_scale: Union[float, List[float]] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: Union[float, List[float]] = 0.0,
        control_guidance_end: Union[float, List[float]] = 1.0,
        guidance_rescale: float = 0.0,
        original_size: Tuple[int, int] = None,
        crops_coords_top_left: Tuple[int, int] = (0, 0),
        target_size: Tuple[int, int] = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Inpaint ``image`` where ``mask_image`` is white, following ``control_image`` (see diffusers'
        ``StableDiffusionXLControlNetInpaintPipeline.__call__``). The size defaults to ``image``'s.

        Returns a ``StableDiffusionXLPipelineOutput`` or, with ``return_dict=False``, ``(images,)``.
        """
        callback_on_step_end, _ = self._legacy_callback(kwargs, callback_on_step_end)
        self.check_inputs_xl(
            prompt, prompt_2, height, width, negative_prompt, negative_prompt_2, prompt_embeds,
            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, ip_adapter_image,
            ip_adapter_image_embeds, callback_on_step_end_tensor_inputs, strength=strength,
            num_inference_steps=num_inference_steps, output_type=output_type, denoising_start=denoising_start,
            denoising_end=denoising_end,
        )
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if mask_image is None:
            raise ValueError("`mask_image` input cannot be undefined.")
        check_mask_crop(image, mask_image, output_type, padding_mask_crop)
        self.check_controlnet_inputs(prompt, prompt_embeds, control_image, controlnet_conditioning_scale,
                                     control_guidance_start, control_guidance_end, image_name="control_image")
        height, width = self._size_from(self.image_processor, image, height, width)
        self._prepare_call_xl(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs, denoising_end,
                              denoising_start)
        state = self._run_xl(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            cross_attention_kwargs=cross_attention_kwargs, clip_skip=clip_skip, image=image, mask_image=mask_image,
            height=height, width=width, padding_mask_crop=padding_mask_crop, strength=strength,
            num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
            denoising_start=denoising_start, denoising_end=denoising_end, latents=latents, generator=generator,
            eta=eta, output_type=output_type, dtype=self._embeds_dtype(), original_size=original_size,
            target_size=target_size, crops_coords_top_left=crops_coords_top_left,
            aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            **self._controlnet_inputs(control_image, controlnet_conditioning_scale, guess_mode,
                                      control_guidance_start, control_guidance_end),
        )
        return self._finish(state, return_dict)
