"""Stable Diffusion XL stages between encoding and the denoise loop: batch expansion of the four embeddings,
timesteps with ``strength`` / ``denoising_start`` / ``denoising_end``, initial latents and the micro-conditioning
(``add_time_ids``). Latent preparation reuses the Stable Diffusion 1.x/2.x blocks, which implement the same
algorithm."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import torch

from .. import ComponentSpec, ConfigSpec, InputParam, ModularPipelineBlocks, OutputParam
from ..stable_diffusion.before_denoise import (
    StableDiffusionImg2ImgPrepareLatentsStep,
    StableDiffusionInpaintPrepareLatentsStep,
    StableDiffusionPrepareLatentsStep,
    check_ip_adapter_embeds,
    check_strength,
    expand_image_latents,
    ip_adapter_embeds_inputs,
    ip_adapter_embeds_outputs,
    retrieve_timesteps,
)
from ..stable_diffusion.encoders import DENOISER_FIELDS, execution_device, guider_spec, unet_spec, vae_spec
from .encoders import MODEL_NAME, _config_value

logger = logging.getLogger(__name__)


def scheduler_spec() -> ComponentSpec:
    from ...schedulers import EulerDiscreteScheduler

    return ComponentSpec("scheduler", EulerDiscreteScheduler)


def valid_fraction(value: Any) -> bool:
    """``denoising_start``/``denoising_end`` take effect only as floats strictly between 0 and 1."""
    return isinstance(value, float) and 0.0 < value < 1.0


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(type(value))


class StableDiffusionXLInputStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Check the text embeddings, derive `batch_size` and `dtype`, and repeat the four embeddings "
                "`num_images_per_prompt` times.")

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
            InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor),
        ] + ip_adapter_embeds_inputs()

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("batch_size", type_hint=int, description="Number of prompts (before per-prompt repeats)."),
            OutputParam("dtype", type_hint=torch.dtype, description="Dtype of the model inputs."),
            OutputParam("prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("negative_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("pooled_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
        ] + ip_adapter_embeds_outputs()

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        check_ip_adapter_embeds(bs)
        n = bs.num_images_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {n!r}.")
        pe, npe = bs.prompt_embeds, bs.negative_prompt_embeds
        pooled, npooled = bs.pooled_prompt_embeds, bs.negative_pooled_prompt_embeds
        if not isinstance(pe, torch.Tensor) or pe.ndim != 3:
            raise ValueError(f"`prompt_embeds` must be a 3-D tensor (batch, tokens, dim), got {_describe(pe)}.")
        if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2:
            raise ValueError(
                "If `prompt_embeds` are provided, `pooled_prompt_embeds` also have to be passed (a 2-D tensor "
                f"(batch, dim)), got {_describe(pooled)}."
            )
        if npe is not None and npe.shape != pe.shape:
            raise ValueError(
                "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                f" got: `prompt_embeds` {pe.shape} != `negative_prompt_embeds` {npe.shape}."
            )
        if npe is not None and npooled is None:
            raise ValueError(
                "If `negative_prompt_embeds` are provided, `negative_pooled_prompt_embeds` also have to be passed."
            )
        bs.batch_size = pe.shape[0]
        bs.dtype = pe.dtype
        if n > 1:
            def rep(x):
                return None if x is None else x.repeat_interleave(n, dim=0)

            bs.prompt_embeds, bs.negative_prompt_embeds = rep(pe), rep(npe)
            bs.pooled_prompt_embeds, bs.negative_pooled_prompt_embeds = rep(pooled), rep(npooled)
        self.set_block_state(state, bs)
        return components, state


# ------------------------------------------------------------------------------------------------ timesteps
def check_denoising_range(denoising_start: Any, denoising_end: Any) -> None:
    if valid_fraction(denoising_start) and valid_fraction(denoising_end) and denoising_start >= denoising_end:
        raise ValueError(
            f"`denoising_start`: {denoising_start} cannot be larger than or equal to `denoising_end`: "
            f"{denoising_end} when using type float."
        )
    for name, value in (("denoising_start", denoising_start), ("denoising_end", denoising_end)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"`{name}` must be a float in (0, 1) or None, got {value!r}.")


def cut_at_denoising_end(scheduler, timesteps: torch.Tensor, num_inference_steps: int,
                         denoising_end: Any) -> Tuple[torch.Tensor, int]:
    """Keep the timesteps at or above the ``denoising_end`` fraction of the training schedule."""
    if not valid_fraction(denoising_end):
        return timesteps, num_inference_steps
    train = scheduler.config.num_train_timesteps
    cutoff = int(round(train - denoising_end * train))
    kept = int((timesteps >= cutoff).sum().item())
    return timesteps[:kept], kept


def strength_timesteps(scheduler, num_inference_steps: int, strength: float,
                       denoising_start: Optional[float] = None) -> Tuple[torch.Tensor, int]:
    """The tail of the schedule for image-to-image: the last ``strength`` fraction of the steps, or (with a valid
    ``denoising_start``) the timesteps below that fraction of the training schedule."""
    if denoising_start is None:
        init = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps, num_inference_steps - t_start
    train = scheduler.config.num_train_timesteps
    cutoff = int(round(train - denoising_start * train))
    steps = int((scheduler.timesteps < cutoff).sum().item())
    if scheduler.order == 2 and steps % 2 == 0:
        # second-order schedulers hold each timestep twice; start on a full step
        steps += 1
    t_start = len(scheduler.timesteps) - steps
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    return scheduler.timesteps[t_start:], steps


class StableDiffusionXLSetTimestepsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Set the scheduler's timesteps (`num_inference_steps`, or custom `timesteps`/`sigmas`); "
                "`denoising_end` stops the schedule early (base half of a base + refiner run).")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("num_inference_steps", type_hint=int, default=50),
            InputParam("timesteps", type_hint=List[int]),
            InputParam("sigmas", type_hint=List[float]),
            InputParam("denoising_end", type_hint=float),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("timesteps", type_hint=torch.Tensor, description="Timesteps of the denoise loop."),
            OutputParam("num_inference_steps", type_hint=int, description="Effective number of steps."),
        ]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        check_denoising_range(None, bs.denoising_end)
        scheduler = components.scheduler
        timesteps, steps = retrieve_timesteps(
            scheduler, bs.num_inference_steps, execution_device(components), bs.timesteps, bs.sigmas
        )
        bs.timesteps, bs.num_inference_steps = cut_at_denoising_end(scheduler, timesteps, steps, bs.denoising_end)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLImg2ImgSetTimestepsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME
    default_strength = 0.3

    @property
    def description(self) -> str:
        return ("Set the timesteps and keep the tail given by `strength` (or `denoising_start`), optionally cut at "
                "`denoising_end`; `latent_timestep` is the first kept timestep, one per image.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("num_inference_steps", type_hint=int, default=50),
            InputParam("timesteps", type_hint=List[int]),
            InputParam("sigmas", type_hint=List[float]),
            InputParam("denoising_end", type_hint=float),
            InputParam("strength", type_hint=float, default=self.default_strength),
            InputParam("denoising_start", type_hint=float),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("batch_size", type_hint=int, required=True),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("timesteps", type_hint=torch.Tensor),
            OutputParam("num_inference_steps", type_hint=int),
            OutputParam("latent_timestep", type_hint=torch.Tensor, description="Noise level of the initial latents."),
        ]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        check_strength(bs.strength)
        check_denoising_range(bs.denoising_start, bs.denoising_end)
        scheduler = components.scheduler
        _, steps = retrieve_timesteps(
            scheduler, bs.num_inference_steps, execution_device(components), bs.timesteps, bs.sigmas
        )
        start = bs.denoising_start if valid_fraction(bs.denoising_start) else None
        timesteps, steps = strength_timesteps(scheduler, steps, bs.strength, start)
        if steps < 1:
            raise ValueError(
                f"After adjusting the num_inference_steps by strength parameter: {bs.strength}, the number of pipeline"
                f"steps is {steps} which is < 1 and not appropriate for this pipeline."
            )
        bs.latent_timestep = timesteps[:1].repeat(bs.batch_size * bs.num_images_per_prompt)
        bs.timesteps, bs.num_inference_steps = cut_at_denoising_end(scheduler, timesteps, steps, bs.denoising_end)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLInpaintSetTimestepsStep(StableDiffusionXLImg2ImgSetTimestepsStep):
    default_strength = 0.9999


# ------------------------------------------------------------------------------------------------ latents
class StableDiffusionXLPrepareLatentsStep(StableDiffusionPrepareLatentsStep):
    model_name = MODEL_NAME

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec(), vae_spec()]


class StableDiffusionXLImg2ImgPrepareLatentsStep(StableDiffusionImg2ImgPrepareLatentsStep):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Noise `image_latents` to `latent_timestep` (image-to-image); with `denoising_start` (the refiner "
                "half of a base + refiner run) the latents are already noisy and are used as they are.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return super().inputs + [InputParam("denoising_start", type_hint=float)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        if bs.denoising_start is None or bs.latents is not None:
            return super().__call__(components, state)
        batch = bs.batch_size * bs.num_images_per_prompt
        dtype = bs.dtype if bs.dtype is not None else bs.image_latents.dtype
        bs.latents = expand_image_latents(bs.image_latents.to(dtype=dtype), batch)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLInpaintPrepareLatentsStep(StableDiffusionInpaintPrepareLatentsStep):
    model_name = MODEL_NAME

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [scheduler_spec(), vae_spec(), unet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        params = [p for p in super().inputs if p.name != "strength"]
        return params + [InputParam("strength", type_hint=float, default=0.9999),
                         InputParam("denoising_start", type_hint=float)]

    def __call__(self, components, state):
        start = state.get("denoising_start")
        given = state.get("latents")
        components, state = super().__call__(components, state)
        if start is not None and given is None:
            # the latents come from the base model's early stop: start from the clean image latents (the noise
            # was still drawn, keeping the random stream aligned with the reference implementation)
            image_latents = state.get("image_latents")
            if image_latents is None:
                raise ValueError("`denoising_start` needs the image latents, but none were computed; pass "
                                 "`strength` < 1.")
            state.set("latents", image_latents)
        return components, state


# ------------------------------------------------------------------------------------------------ micro-conditioning
def _size(value: Any, name: str) -> Tuple[int, ...]:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"`{name}` must be a (height, width) / (top, left) pair, got {value!r}.")
    return tuple(value)


def _projection_dim(components: Any, pooled: torch.Tensor) -> int:
    encoder = getattr(components, "text_encoder_2", None)
    if encoder is None:
        return int(pooled.shape[-1])
    return encoder.config.projection_dim


def _expected_dim(unet) -> int:
    return unet.add_embedding.linear_1.in_features


class StableDiffusionXLPrepareAdditionalConditioningStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Micro-conditioning of the SDXL UNet: `add_time_ids` = original size + crop top-left + target "
                "size (negative forms default to the positive ones), one row per image.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [unet_spec(), guider_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("original_size"),
            InputParam("target_size"),
            InputParam("negative_original_size"),
            InputParam("negative_target_size"),
            InputParam("crops_coords_top_left", default=(0, 0)),
            InputParam("negative_crops_coords_top_left", default=(0, 0)),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("latents", type_hint=torch.Tensor, required=True),
            InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("batch_size", type_hint=int, required=True),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("add_time_ids", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("negative_add_time_ids", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("timestep_cond", type_hint=torch.Tensor),
        ]

    def _time_ids(self, components, bs, size) -> Tuple[List[float], List[float]]:
        original = _size(bs.original_size, "original_size") or size
        target = _size(bs.target_size, "target_size") or size
        crops = _size(bs.crops_coords_top_left, "crops_coords_top_left")
        pos = list(original + crops + target)
        if bs.negative_original_size is not None and bs.negative_target_size is not None:
            neg = list(_size(bs.negative_original_size, "negative_original_size")
                       + _size(bs.negative_crops_coords_top_left, "negative_crops_coords_top_left")
                       + _size(bs.negative_target_size, "negative_target_size"))
        else:
            neg = pos
        passed = components.unet.config.addition_time_embed_dim * len(pos) + _projection_dim(
            components, bs.pooled_prompt_embeds)
        expected = _expected_dim(components.unet)
        if passed != expected:
            raise ValueError(
                f"Model expects an added time embedding vector of length {expected}, but a vector of {passed} was "
                "created. The model has an incorrect config. Please check `unet.config.time_embedding_type` and "
                "`text_encoder_2.config.projection_dim`."
            )
        return pos, neg

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        factor = components.vae_scale_factor
        size = (int(bs.latents.shape[-2]) * factor, int(bs.latents.shape[-1]) * factor)
        pos, neg = self._time_ids(components, bs, size)
        rows = bs.batch_size * bs.num_images_per_prompt
        dtype = bs.pooled_prompt_embeds.dtype
        device = bs.latents.device
        bs.add_time_ids = torch.tensor([pos], dtype=dtype, device=device).repeat(rows, 1)
        # a distinct tensor even when equal: the guider caches the concatenated pair between steps
        bs.negative_add_time_ids = torch.tensor([neg], dtype=dtype, device=device).repeat(rows, 1)
        bs.timestep_cond = None
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep(StableDiffusionXLPrepareAdditionalConditioningStep):
    @property
    def description(self) -> str:
        return ("Micro-conditioning for image-to-image and the refiner: with `requires_aesthetics_score` the time "
                "ids are original size + crop + aesthetic score, else original size + crop + target size.")

    @property
    def expected_configs(self) -> List[ConfigSpec]:
        return [ConfigSpec("requires_aesthetics_score", False)]

    @property
    def inputs(self) -> List[InputParam]:
        return super().inputs + [
            InputParam("aesthetic_score", type_hint=float, default=6.0),
            InputParam("negative_aesthetic_score", type_hint=float, default=2.0),
        ]

    def _time_ids(self, components, bs, size):
        original = _size(bs.original_size, "original_size") or size
        target = _size(bs.target_size, "target_size") or size
        neg_original = _size(bs.negative_original_size, "negative_original_size") or original
        neg_target = _size(bs.negative_target_size, "negative_target_size") or target
        crops = _size(bs.crops_coords_top_left, "crops_coords_top_left")
        neg_crops = _size(bs.negative_crops_coords_top_left, "negative_crops_coords_top_left")
        aesthetic = bool(_config_value(components, "requires_aesthetics_score", False))
        if aesthetic:
            pos = list(original + crops + (bs.aesthetic_score,))
            neg = list(neg_original + neg_crops + (bs.negative_aesthetic_score,))
        else:
            pos = list(original + crops + target)
            neg = list(neg_original + crops + neg_target)
        unit = components.unet.config.addition_time_embed_dim
        passed = unit * len(pos) + _projection_dim(components, bs.pooled_prompt_embeds)
        expected = _expected_dim(components.unet)
        if expected > passed and expected - passed == unit:
            raise ValueError(
                f"Model expects an added time embedding vector of length {expected}, but a vector of {passed} was "
                "created. Please make sure to enable `requires_aesthetics_score` with "
                "`pipe.register_to_config(requires_aesthetics_score=True)` to make sure `aesthetic_score` "
                f"{bs.aesthetic_score} and `negative_aesthetic_score` {bs.negative_aesthetic_score} is correctly "
                "used by the model."
            )
        if expected < passed and passed - expected == unit:
            raise ValueError(
                f"Model expects an added time embedding vector of length {expected}, but a vector of {passed} was "
                "created. Please make sure to disable `requires_aesthetics_score` with "
                "`pipe.register_to_config(requires_aesthetics_score=False)` to make sure `target_size` "
                f"{target} is correctly used by the model."
            )
        if expected != passed:
            raise ValueError(
                f"Model expects an added time embedding vector of length {expected}, but a vector of {passed} was "
                "created. The model has an incorrect config. Please check `unet.config.time_embedding_type` and "
                "`text_encoder_2.config.projection_dim`."
            )
        return pos, neg
