"""Classic Stable Diffusion XL text-to-image pipeline (and the base shared with img2img / inpaint).

One algorithm, two front doors: ``__call__`` checks its arguments like diffusers does, then runs the SDXL preset
blocks (``diffblocks.modular_pipelines.stable_diffusion_xl``) with this pipeline as the components holder.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ...image_processor import VaeImageProcessor
from ..pipeline_utils import DiffusionPipeline
from ..stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipelineBase
from .pipeline_output import StableDiffusionXLPipelineOutput
from ...loaders.ip_adapter import check_ip_adapter_inputs
from ...loaders.lora import StableDiffusionXLLoraLoaderMixin

logger = logging.getLogger(__name__)

_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _check_watermarker(add_watermarker: Optional[bool]) -> None:
    if add_watermarker:
        try:
            import imwatermark  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "`add_watermarker=True` needs the `invisible-watermark` package, which is not installed; pass "
                "`add_watermarker=False` or install it."
            ) from err
        logger.warning("`add_watermarker=True`: diffblocks does not apply the invisible watermark; images are "
                       "returned without it.")


class StableDiffusionXLPipelineBase(StableDiffusionXLLoraLoaderMixin, StableDiffusionPipelineBase):
    """Shared constructor, checks and block runner of the SDXL classic pipelines."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = [
        "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder", "feature_extractor",
    ]
    _exclude_from_cpu_offload: List[str] = []
    _callback_tensor_inputs = [
        "latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds", "add_time_ids",
        "negative_pooled_prompt_embeds", "negative_add_time_ids",
    ]
    _family = "stable_diffusion_xl"
    _ip_adapter_step = "StableDiffusionXLIPAdapterEmbedsStep"
    _callback_renames = {"add_text_embeds": "pooled_prompt_embeds"}

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: Optional[bool] = None,
    ) -> None:
        DiffusionPipeline.__init__(self)
        self._register_xl(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                          feature_extractor, add_watermarker)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)

    def _register_xl(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                     image_encoder, feature_extractor, add_watermarker) -> None:
        _check_watermarker(add_watermarker)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        object.__setattr__(self, "vae_scale_factor", factor)
        object.__setattr__(self, "image_processor", VaeImageProcessor(vae_scale_factor=factor))
        object.__setattr__(
            self,
            "mask_processor",
            VaeImageProcessor(vae_scale_factor=factor, do_normalize=False, do_binarize=True,
                              do_convert_grayscale=True),
        )
        self._init_call_state()
        for name, value in (("_denoising_end", None), ("_denoising_start", None)):
            object.__setattr__(self, name, value)

    # -------------------------------------------------------------------------------- properties
    @property
    def default_sample_size(self):
        unet = getattr(self, "unet", None)
        return unet.config.sample_size if unet is not None else 128

    @property
    def denoising_end(self) -> Optional[float]:
        return self._denoising_end

    @property
    def denoising_start(self) -> Optional[float]:
        return self._denoising_start

    @property
    def do_classifier_free_guidance(self) -> bool:
        unet = getattr(self, "unet", None)
        lcm = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
        return self._guidance_scale > 1 and not lcm

    def _embeds_dtype(self) -> torch.dtype:
        encoder = getattr(self, "text_encoder_2", None)
        return encoder.dtype if encoder is not None else self.unet.dtype

    # -------------------------------------------------------------------------------- prompt encoding
    def encode_prompt(
        self,
        prompt: Union[str, List[str], None],
        prompt_2: Union[str, List[str], None] = None,
        device: Optional[torch.device] = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Union[str, List[str], None] = None,
        negative_prompt_2: Union[str, List[str], None] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        lora_scale: Optional[float] = None,
        clip_skip: Optional[int] = None,
    ):
        """``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)``
        repeated ``num_images_per_prompt`` times; the negatives are None without classifier-free guidance."""
        from ...modular_pipelines.stable_diffusion_xl.encoders import encode_prompt_xl

        device = device if device is not None else self._execution_device
        with torch.no_grad():
            return encode_prompt_xl(
                self, prompt, prompt_2, device, num_images_per_prompt, do_classifier_free_guidance,
                negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                negative_pooled_prompt_embeds, clip_skip=clip_skip,
                force_zeros_for_empty_prompt=bool(self.config.get("force_zeros_for_empty_prompt", True)),
                lora_scale=lora_scale,
            )

    # -------------------------------------------------------------------------------- checks
    def check_inputs_xl(
        self,
        prompt,
        prompt_2,
        height,
        width,
        negative_prompt=None,
        negative_prompt_2=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        pooled_prompt_embeds=None,
        negative_pooled_prompt_embeds=None,
        ip_adapter_image=None,
        ip_adapter_image_embeds=None,
        callback_on_step_end_tensor_inputs=None,
        strength=None,
        num_inference_steps=None,
        output_type="pil",
        denoising_start=None,
        denoising_end=None,
    ) -> None:
        from ...modular_pipelines.stable_diffusion_xl.before_denoise import check_denoising_range
        from ...modular_pipelines.stable_diffusion_xl.encoders import check_prompt_inputs

        if height is not None and width is not None and (
            not isinstance(height, int) or not isinstance(width, int) or height % 8 or width % 8
        ):
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        if strength is not None and (
            not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength < 0 or strength > 1
        ):
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1
        ):
            raise ValueError(
                f"`num_inference_steps` has to be a positive integer but is {num_inference_steps} of type"
                f" {type(num_inference_steps)}."
            )
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found "
                    f"{bad}"
                )
        check_prompt_inputs(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)
        check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(_OUTPUT_TYPES)}, got {output_type!r}.")
        check_denoising_range(denoising_start, denoising_end)

    # -------------------------------------------------------------------------------- running the blocks
    def _run_xl(self, callback_on_step_end, tensor_inputs, **inputs):
        if callback_on_step_end is not None:
            renames = self._callback_renames
            names = [renames.get(n, n) for n in (tensor_inputs or [])]
            user = callback_on_step_end

            def callback(pipe, i, t, tensors):
                shown = dict(tensors)
                for ours, theirs in ((v, k) for k, v in renames.items()):
                    if ours in shown and theirs in (tensor_inputs or []):
                        shown[theirs] = shown.pop(ours)
                out = user(pipe, i, t, shown) or {}
                return {renames.get(k, k): v for k, v in out.items()}

            callback.tensor_inputs = names
            callback_on_step_end = callback
        return self._run(callback_on_step_end, tensor_inputs, **inputs)

    def _finish(self, state, return_dict: bool):
        images = state.get("images")
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return StableDiffusionXLPipelineOutput(images=images)

    def _prepare_call_xl(self, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs,
                         denoising_end=None, denoising_start=None) -> None:
        self._prepare_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        object.__setattr__(self, "_denoising_end", denoising_end)
        object.__setattr__(self, "_denoising_start", denoising_start)


class StableDiffusionXLPipeline(StableDiffusionXLPipelineBase):
    """Text-to-image generation with Stable Diffusion XL."""

    _preset_name = "text2img"

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        prompt_2: Optional[Union[str, List[str]]] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        timesteps: List[int] = None,
        sigmas: List[float] = None,
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
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
        output_type: Optional[str] = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        guidance_rescale: float = 0.0,
        original_size: Optional[Tuple[int, int]] = None,
        crops_coords_top_left: Tuple[int, int] = (0, 0),
        target_size: Optional[Tuple[int, int]] = None,
        negative_original_size: Optional[Tuple[int, int]] = None,
        negative_crops_coords_top_left: Tuple[int, int] = (0, 0),
        negative_target_size: Optional[Tuple[int, int]] = None,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Generate images from ``prompt`` (see diffusers' ``StableDiffusionXLPipeline.__call__``).

        Returns a ``StableDiffusionXLPipelineOutput`` or, with ``return_dict=False``, ``(images,)``.
        """
        callback_on_step_end, _ = self._legacy_callback(kwargs, callback_on_step_end)
        height = height or self.default_height
        width = width or self.default_width
        self.check_inputs_xl(
            prompt, prompt_2, height, width, negative_prompt, negative_prompt_2, prompt_embeds,
            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, ip_adapter_image,
            ip_adapter_image_embeds, callback_on_step_end_tensor_inputs,
            num_inference_steps=None if timesteps or sigmas else num_inference_steps, output_type=output_type,
            denoising_end=denoising_end,
        )
        self._prepare_call_xl(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs, denoising_end)
        state = self._run_xl(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            ip_adapter_image=ip_adapter_image, ip_adapter_image_embeds=ip_adapter_image_embeds,
            cross_attention_kwargs=cross_attention_kwargs, clip_skip=clip_skip,
            num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
            timesteps=timesteps, sigmas=sigmas, denoising_end=denoising_end, height=height, width=width,
            latents=latents, generator=generator, eta=eta, output_type=output_type,
            original_size=original_size or (height, width), target_size=target_size or (height, width),
            crops_coords_top_left=crops_coords_top_left, negative_original_size=negative_original_size,
            negative_crops_coords_top_left=negative_crops_coords_top_left, negative_target_size=negative_target_size,
        )
        return self._finish(state, return_dict)
