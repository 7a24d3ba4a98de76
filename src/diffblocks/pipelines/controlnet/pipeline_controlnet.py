"""Classic Stable Diffusion 1.x/2.x ControlNet text-to-image pipeline, and the ControlNet pieces every classic
ControlNet pipeline shares (``ControlNetPipelineMixin``).

The pipelines are the SD/SDXL classic pipelines plus a ``controlnet`` component; ``__call__`` checks the
arguments like diffusers does and runs the family's ControlNet preset blocks (``ALL_BLOCKS["controlnet"]``,
``["controlnet_img2img"]``, ``["controlnet_inpaint"]``) with the pipeline as the components holder.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch

from ...image_processor import VaeImageProcessor
from ..stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipelineBase

logger = logging.getLogger(__name__)


def _as_controlnet(controlnet: Any) -> Any:
    """A list/tuple of ControlNets becomes one ``MultiControlNetModel``; anything else is returned as is."""
    if isinstance(controlnet, (list, tuple)):
        from ...models import MultiControlNetModel

        return MultiControlNetModel(list(controlnet))
    return controlnet


class ControlNetPipelineMixin:
    """What the SD and SDXL ControlNet pipelines add to their base class: the ``controlnet`` component (a list is
    wrapped in a ``MultiControlNetModel``), the control image processor, the ControlNet checks and the default
    output size read from an image."""

    def _register_controlnet(self, controlnet: Any) -> None:
        self.register_modules(controlnet=_as_controlnet(controlnet))
        factor = self.vae_scale_factor
        object.__setattr__(self, "image_processor", VaeImageProcessor(vae_scale_factor=factor, do_convert_rgb=True))
        object.__setattr__(
            self,
            "control_image_processor",
            VaeImageProcessor(vae_scale_factor=factor, do_convert_rgb=True, do_normalize=False),
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "controlnet" and isinstance(value, (list, tuple)):
            value = _as_controlnet(value)
        super().__setattr__(name, value)

    @staticmethod
    def _prompt_batch(prompt: Any, prompt_embeds: Optional[torch.Tensor]) -> Optional[int]:
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            return len(prompt)
        if prompt_embeds is not None:
            return prompt_embeds.shape[0]
        return None

    def check_controlnet_inputs(self, prompt, prompt_embeds, image, controlnet_conditioning_scale,
                                control_guidance_start, control_guidance_end, image_name: str = "image") -> None:
        """The ControlNet argument checks of diffusers' ``check_inputs`` (errors name the argument)."""
        from ...modular_pipelines.stable_diffusion.controlnet import check_controlnet_inputs

        check_controlnet_inputs(
            getattr(self, "controlnet", None), image, self._prompt_batch(prompt, prompt_embeds),
            controlnet_conditioning_scale, control_guidance_start, control_guidance_end, image_name=image_name,
        )

    def _size_from(self, processor: VaeImageProcessor, image: Any, height: Optional[int], width: Optional[int],
                   per_net: bool = False) -> Tuple[int, int]:
        """``(height, width)``: the given values, else the size ``processor`` gives ``image`` (the first
        ControlNet's image when ``per_net``), rounded down to a multiple of the VAE scale factor."""
        if height is not None and width is not None:
            return height, width
        if per_net:
            from ...modular_pipelines.stable_diffusion.controlnet import split_control_images

            image = split_control_images(self.controlnet, image)[0]
        first = image[0] if isinstance(image, (list, tuple)) and image else image
        if isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim == 3:
            first = first[None]  # one image without its batch axis
        if isinstance(first, (PIL.Image.Image, torch.Tensor, np.ndarray)) and getattr(first, "ndim", 4) == 4:
            # the size preprocess would give, read from the first image without converting it
            return processor.get_default_height_width(first, height, width)
        shape = processor.preprocess(image, height=height, width=width).shape
        return int(shape[-2]), int(shape[-1])

    @staticmethod
    def _renamed_callback(callback: Callable, tensor_inputs: Optional[List[str]], renames: Dict[str, str]):
        """Wrap a step-end callback so it sees (and may return) the tensors under the names diffusers uses
        (``image``/``control_image`` are the prepared control image(s), one row per generated image)."""
        requested = list(tensor_inputs or [])
        names = [renames.get(n, n) for n in requested]
        if getattr(callback, "__name__", "") == "adapter" and "latents" not in names:
            names.append("latents")  # the deprecated `callback` adapter reads the latents

        def renamed(pipe, i, t, tensors):
            shown = dict(tensors)
            for theirs, ours in renames.items():
                if theirs in requested and ours in shown:
                    shown[theirs] = shown.pop(ours)
            out = callback(pipe, i, t, shown) or {}
            return {renames.get(k, k): v for k, v in out.items()}

        renamed.tensor_inputs = names
        return renamed

    @staticmethod
    def _controlnet_inputs(image, controlnet_conditioning_scale, guess_mode, control_guidance_start,
                           control_guidance_end) -> Dict[str, Any]:
        return dict(
            control_image=image,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            guess_mode=guess_mode,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )


class StableDiffusionControlNetPipelineBase(ControlNetPipelineMixin, StableDiffusionPipelineBase):
    """Constructor shared by the SD 1.x/2.x ControlNet pipelines."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "image"]
    _callback_renames = {"image": "controlnet_cond"}

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        controlnet,
        scheduler,
        safety_checker,
        feature_extractor,
        image_encoder=None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=safety_checker, feature_extractor=feature_extractor, image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self._register_controlnet(controlnet)

    def _run(self, callback_on_step_end, tensor_inputs, **inputs):
        if callback_on_step_end is not None:
            callback_on_step_end = self._renamed_callback(callback_on_step_end, tensor_inputs, self._callback_renames)
        return super()._run(callback_on_step_end, tensor_inputs, **inputs)


class StableDiffusionControlNetPipeline(StableDiffusionControlNetPipelineBase):
    """Text-to-image generation with Stable Diffusion 1.x/2.x guided by one or several ControlNets."""

    _preset_name = "controlnet"

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        image=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
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
        controlnet_conditioning_scale: Union[float, List[float]] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: Union[float, List[float]] = 0.0,
        control_guidance_end: Union[float, List[float]] = 1.0,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Generate images from ``prompt`` following the ControlNet condition ``image`` (see diffusers'
        ``StableDiffusionControlNetPipeline.__call__``). The output size defaults to the control image's.

        Returns a ``StableDiffusionPipelineOutput`` or, with ``return_dict=False``, ``(images, nsfw_flags)``.
        """
        callback_on_step_end, callback_steps = self._legacy_callback(kwargs, callback_on_step_end)
        self.check_inputs(
            prompt, None, None, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
            ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs,
            output_type=output_type, num_inference_steps=None if timesteps or sigmas else num_inference_steps,
        )
        self.check_controlnet_inputs(prompt, prompt_embeds, image, controlnet_conditioning_scale,
                                     control_guidance_start, control_guidance_end)
        height, width = self._size_from(self.control_image_processor, image, height, width, per_net=True)
        self._prepare_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        state = self._run(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            cross_attention_kwargs=cross_attention_kwargs,
            clip_skip=clip_skip,
            num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            height=height,
            width=width,
            latents=latents,
            generator=generator,
            eta=eta,
            output_type=output_type,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            **self._controlnet_inputs(image, controlnet_conditioning_scale, guess_mode, control_guidance_start,
                                      control_guidance_end),
        )
        return self._finish(state, return_dict)
