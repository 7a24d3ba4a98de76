"""Classic Stable Diffusion 1.x/2.x text-to-image pipeline (and the base shared with img2img / inpaint).

One algorithm, two front doors: ``__call__`` checks its arguments like diffusers does, then runs the family's
preset blocks (``diffblocks.modular_pipelines.stable_diffusion``) with this pipeline as the components holder.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Dict, List, Optional, Union

import torch

from ...configuration import FrozenDict
from ...image_processor import VaeImageProcessor
from ...loaders.ip_adapter import IPAdapterMixin, check_ip_adapter_inputs
from ...loaders.lora import StableDiffusionLoraLoaderMixin
from ..pipeline_utils import SAFETY_CHECKER_WARNING, DiffusionPipeline
from .pipeline_output import StableDiffusionPipelineOutput

logger = logging.getLogger(__name__)

_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _version_tuple(version: Any) -> tuple:
    parts = []
    for piece in str(version or "0").split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class StableDiffusionPipelineBase(StableDiffusionLoraLoaderMixin, IPAdapterMixin, DiffusionPipeline):
    """Shared constructor, properties, checks and block runner of the SD 1.x/2.x classic pipelines."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _preset_name = "text2img"
    #: the modular family whose presets the classic classes run, and its IP-Adapter step for precomputed inputs
    _family = "stable_diffusion"
    _ip_adapter_step = "StableDiffusionIPAdapterEmbedsStep"
    _blocks_cache: Dict[Any, Any] = {}  # (family, preset, with IP-Adapter) -> blocks, shared by every subclass

    # flags read by the shared blocks
    _guider_managed = True
    _callback_merges_embeds = True

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        safety_checker,
        feature_extractor,
        image_encoder=None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        if scheduler is not None:
            self._fix_scheduler_config(scheduler)
        if safety_checker is None and requires_safety_checker:
            logger.warning(SAFETY_CHECKER_WARNING.format(cls=self.__class__))
        if safety_checker is not None and feature_extractor is None:
            raise ValueError(
                f"Make sure to define a feature extractor when loading {self.__class__} if you want to use the safety"
                " checker. If you do not want to use the safety checker, you can pass `'safety_checker=None'` instead."
            )
        if unet is not None:
            self._fix_unet_sample_size(unet)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        object.__setattr__(self, "vae_scale_factor", 2 ** (len(vae.config.block_out_channels) - 1) if vae else 8)
        object.__setattr__(self, "image_processor", VaeImageProcessor(vae_scale_factor=self.vae_scale_factor))
        object.__setattr__(
            self,
            "mask_processor",
            VaeImageProcessor(
                vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
            ),
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self._init_call_state()

    def _init_call_state(self) -> None:
        from ...guiders import ClassifierFreeGuidance

        for name, value in (
            ("_guidance_scale", 7.5),
            ("_guidance_rescale", 0.0),
            ("_clip_skip", None),
            ("_cross_attention_kwargs", None),
            ("_num_timesteps", 0),
            ("_interrupt", False),
            # an instance attribute, not a property: the denoise loop reads it every step
            ("guider", ClassifierFreeGuidance()),
        ):
            object.__setattr__(self, name, value)

    # -------------------------------------------------------------------------------- legacy config fixes
    @staticmethod
    def _fix_scheduler_config(scheduler) -> None:
        config = dict(scheduler.config)
        changed = []
        if config.get("steps_offset", 1) != 1:
            changed.append(f"`steps_offset` {config['steps_offset']} -> 1")
            config["steps_offset"] = 1
        if config.get("clip_sample") is True:
            changed.append("`clip_sample` True -> False")
            config["clip_sample"] = False
        if changed:
            warnings.warn(
                f"The configuration file of the scheduler {scheduler.__class__.__name__} is outdated "
                f"({', '.join(changed)}); it has been updated for this run. Please update the `scheduler_config.json`"
                " of the checkpoint.",
                FutureWarning,
                stacklevel=4,
            )
            object.__setattr__(scheduler, "_internal_dict", FrozenDict(config))

    @staticmethod
    def _fix_unet_sample_size(unet) -> None:
        config = unet.config
        old = _version_tuple(config.get("_diffusers_version", "0.9.0")) < (0, 9, 0)
        size = config.get("sample_size")
        if old and isinstance(size, int) and size < 64:
            warnings.warn(
                "The UNet config has `sample_size` < 64 and was written by diffusers < 0.9.0: `sample_size` is set to "
                "64 for this run. Please update the checkpoint's `unet/config.json`.",
                FutureWarning,
                stacklevel=4,
            )
            new = dict(config)
            new["sample_size"] = 64
            object.__setattr__(unet, "_internal_dict", FrozenDict(new))

    # -------------------------------------------------------------------------------- run-time properties
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> Optional[int]:
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self) -> bool:
        unet = getattr(self, "unet", None)
        lcm = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
        return self._guidance_scale > 1 and not lcm

    @property
    def cross_attention_kwargs(self) -> Optional[Dict[str, Any]]:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # values the shared blocks read from their components holder
    @property
    def default_sample_size(self):
        return self.unet.config.sample_size if getattr(self, "unet", None) is not None else 64

    @property
    def default_height(self) -> int:
        size = self.default_sample_size
        return (size[0] if isinstance(size, (list, tuple)) else size) * self.vae_scale_factor

    @property
    def default_width(self) -> int:
        size = self.default_sample_size
        return (size[1] if isinstance(size, (list, tuple)) else size) * self.vae_scale_factor

    @property
    def num_channels_latents(self) -> int:
        return self.vae.config.latent_channels if getattr(self, "vae", None) is not None else 4

    @property
    def num_channels_unet(self) -> int:
        return self.unet.config.in_channels

    def _sync_guider(self) -> None:
        guider = self.guider
        guider.guidance_scale = float(self._guidance_scale)
        guider.guidance_rescale = float(self._guidance_rescale)
        if self.do_classifier_free_guidance:
            guider.enable()
        else:
            guider.disable()

    def _after_step_callback(self) -> None:
        # a step-end callback may change `_guidance_scale` (e.g. switch guidance off after some steps)
        if self.guider.guidance_scale != self._guidance_scale:
            self._sync_guider()

    # -------------------------------------------------------------------------------- prompt encoding
    def encode_prompt(
        self,
        prompt: Union[str, List[str], None],
        device: Optional[torch.device],
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: Union[str, List[str], None] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        lora_scale: Optional[float] = None,
        clip_skip: Optional[int] = None,
    ):
        """``(prompt_embeds, negative_prompt_embeds)`` repeated ``num_images_per_prompt`` times; the negative is
        None without classifier-free guidance."""
        from ...modular_pipelines.stable_diffusion.encoders import encode_prompt

        device = device if device is not None else self._execution_device
        with torch.no_grad():
            return encode_prompt(
                self,
                prompt,
                device,
                num_images_per_prompt,
                do_classifier_free_guidance,
                negative_prompt,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                clip_skip=clip_skip,
                lora_scale=lora_scale,
            )

    # -------------------------------------------------------------------------------- checks
    def check_inputs(
        self,
        prompt,
        height,
        width,
        callback_steps=None,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        ip_adapter_image=None,
        ip_adapter_image_embeds=None,
        callback_on_step_end_tensor_inputs=None,
        strength=None,
        output_type="pil",
        num_inference_steps=None,
    ) -> None:
        if height is not None and width is not None:
            if (not isinstance(height, int) or not isinstance(width, int) or height % 8 != 0 or width % 8 != 0):
                raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        if strength is not None and (
            not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength < 0 or strength > 1
        ):
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")
        if callback_steps is not None and (not isinstance(callback_steps, int) or callback_steps <= 0):
            raise ValueError(
                f"`callback_steps` has to be a positive integer but is {callback_steps} of type"
                f" {type(callback_steps)}."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found {bad}"
            )
        if prompt is not None and prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please make sure to"
                " only forward one of the two."
            )
        if prompt is None and prompt_embeds is None:
            raise ValueError(
                "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
            )
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`:"
                f" {negative_prompt_embeds}. Please make sure to only forward one of the two."
            )
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {prompt_embeds.shape} != `negative_prompt_embeds`"
                    f" {negative_prompt_embeds.shape}."
                )
        check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(_OUTPUT_TYPES)}, got {output_type!r}.")
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")

    # -------------------------------------------------------------------------------- running the blocks
    @classmethod
    def _preset_blocks(cls, ip_adapter: bool = False):
        key = (cls._family, cls._preset_name, ip_adapter)
        blocks = StableDiffusionPipelineBase._blocks_cache.get(key)
        if blocks is None:
            import importlib

            from ...modular_pipelines import SequentialPipelineBlocks

            family = f"diffblocks.modular_pipelines.{cls._family}"
            preset = importlib.import_module(f"{family}.modular_blocks").ALL_BLOCKS[cls._preset_name]
            if ip_adapter:
                step = getattr(importlib.import_module(f"{family}.ip_adapter"), cls._ip_adapter_step)
                preset = preset.copy()
                preset.insert("ip_adapter", step, 1)
            blocks = SequentialPipelineBlocks.from_blocks_dict(preset)
            StableDiffusionPipelineBase._blocks_cache[key] = blocks
        return blocks

    def _prepare_call(self, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs) -> None:
        object.__setattr__(self, "_guidance_scale", guidance_scale)
        object.__setattr__(self, "_guidance_rescale", guidance_rescale)
        object.__setattr__(self, "_clip_skip", clip_skip)
        object.__setattr__(self, "_cross_attention_kwargs", cross_attention_kwargs)
        object.__setattr__(self, "_interrupt", False)
        self._sync_guider()

    @staticmethod
    def _legacy_callback(kwargs: Dict[str, Any], callback_on_step_end):
        callback = kwargs.pop("callback", None)
        callback_steps = kwargs.pop("callback_steps", None)
        if kwargs:
            raise TypeError(f"__call__() got unexpected keyword argument(s) {sorted(kwargs)}")
        if callback is None:
            return callback_on_step_end, callback_steps
        warnings.warn(
            "Passing `callback` as an input argument to `__call__` is deprecated; use `callback_on_step_end`.",
            FutureWarning,
            stacklevel=3,
        )
        every = callback_steps or 1
        user_step_end = callback_on_step_end

        def adapter(pipe, i, t, tensors):
            out = user_step_end(pipe, i, t, tensors) if user_step_end is not None else {}
            order = getattr(pipe.scheduler, "order", 1)
            if i % every == 0:
                callback(i // order, t, (out or {}).get("latents", tensors.get("latents")))
            return out

        return adapter, callback_steps

    def _run(self, callback_on_step_end, tensor_inputs, **inputs):
        # the IP-Adapter step runs (right after the text encoder) only when an image prompt is given
        ip_image = inputs.pop("ip_adapter_image", None)
        ip_embeds = inputs.pop("ip_adapter_image_embeds", None)
        use_ip = ip_image is not None or ip_embeds is not None
        if use_ip:
            inputs["ip_adapter_image"], inputs["ip_adapter_image_embeds"] = ip_image, ip_embeds
        if callback_on_step_end is not None:
            names = list(tensor_inputs or [])
            if "latents" not in names and getattr(callback_on_step_end, "__name__", "") == "adapter":
                names.append("latents")
            inputs["callback_on_step_end"] = callback_on_step_end
            inputs["callback_on_step_end_tensor_inputs"] = names
        state = self.run_blocks(self._preset_blocks(use_ip), **inputs)
        timesteps = state.get("timesteps")
        object.__setattr__(self, "_num_timesteps", len(timesteps) if timesteps is not None else 0)
        return state

    def _finish(self, state, return_dict: bool):
        images = state.get("images")
        nsfw = state.get("nsfw_content_detected")
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, nsfw)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=nsfw)


class StableDiffusionPipeline(StableDiffusionPipelineBase):
    """Text-to-image generation with Stable Diffusion 1.x/2.x."""

    _preset_name = "text2img"

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
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
        guidance_rescale: float = 0.0,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        **kwargs: Any,
    ):
        """Generate images from ``prompt`` (see diffusers' ``StableDiffusionPipeline.__call__``).

        Returns a ``StableDiffusionPipelineOutput`` or, with ``return_dict=False``, ``(images, nsfw_flags)``.
        """
        callback_on_step_end, callback_steps = self._legacy_callback(kwargs, callback_on_step_end)
        height = height or self.default_height
        width = width or self.default_width
        self.check_inputs(
            prompt, height, width, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
            ip_adapter_image, ip_adapter_image_embeds, callback_on_step_end_tensor_inputs,
            output_type=output_type, num_inference_steps=None if timesteps or sigmas else num_inference_steps,
        )
        self._prepare_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        state = self._run(
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            prompt=prompt,
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
            height=height,
            width=width,
            latents=latents,
            generator=generator,
            eta=eta,
            output_type=output_type,
        )
        return self._finish(state, return_dict)
