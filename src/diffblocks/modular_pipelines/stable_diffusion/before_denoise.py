"""Stable Diffusion 1.x/2.x stages between encoding and the denoise loop: batch expansion, timesteps, latents."""
from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any, List, Optional, Tuple

import torch

from .. import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam
from .encoders import (
    DENOISER_FIELDS,
    MODEL_NAME,
    check_generators,
    execution_device,
    sample_vae_latents,
    skip_vae_sample,
    unet_spec,
    vae_spec,
)

logger = logging.getLogger(__name__)


def _scheduler_spec() -> ComponentSpec:
    from ...schedulers import PNDMScheduler

    return ComponentSpec("scheduler", PNDMScheduler)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def retrieve_timesteps(
    scheduler,
    num_inference_steps: Optional[int] = None,
    device=None,
    timesteps: Optional[List[int]] = None,
    sigmas: Optional[List[float]] = None,
    **kwargs: Any,
) -> Tuple[torch.Tensor, int]:
    """Set the scheduler's timesteps (from a step count, or custom ``timesteps`` or ``sigmas``) and return
    ``(scheduler.timesteps, num_inference_steps)``."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None or sigmas is not None:
        key, values = ("timesteps", timesteps) if timesteps is not None else ("sigmas", sigmas)
        if not _accepts(scheduler.set_timesteps, key):
            kind = "timestep" if key == "timesteps" else "sigmas"
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" {kind} schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(**{key: values}, device=device, **kwargs)
        return scheduler.timesteps, len(scheduler.timesteps)
    if num_inference_steps is None or isinstance(num_inference_steps, bool) or not isinstance(
        num_inference_steps, int
    ) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
    scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
    return scheduler.timesteps, num_inference_steps


def apply_strength(scheduler, num_inference_steps: int, strength: float) -> Tuple[torch.Tensor, int]:
    """Keep the last ``strength`` fraction of the schedule (image-to-image); returns (timesteps, steps left)."""
    init = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, num_inference_steps - t_start


def check_strength(strength: Any) -> None:
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength < 0 or strength > 1:
        raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")


class StableDiffusionInputStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Check the text embeddings, derive `batch_size` and `dtype`, and repeat the embeddings "
                "`num_images_per_prompt` times.")

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
        ] + ip_adapter_embeds_inputs()

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("batch_size", type_hint=int, description="Number of prompts (before per-prompt repeats)."),
            OutputParam("dtype", type_hint=torch.dtype, description="Dtype of the model inputs."),
            OutputParam("prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("negative_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
        ] + ip_adapter_embeds_outputs()

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        check_ip_adapter_embeds(bs)
        n = bs.num_images_per_prompt
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {n!r}.")
        pe, npe = bs.prompt_embeds, bs.negative_prompt_embeds
        if not isinstance(pe, torch.Tensor) or pe.ndim != 3:
            raise ValueError(f"`prompt_embeds` must be a 3-D tensor (batch, tokens, dim), got {_describe(pe)}.")
        if npe is not None and npe.shape != pe.shape:
            raise ValueError(
                "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                f" got: `prompt_embeds` {pe.shape} != `negative_prompt_embeds` {npe.shape}."
            )
        bs.batch_size = pe.shape[0]
        bs.dtype = pe.dtype
        if n > 1:
            bs.prompt_embeds = pe.repeat_interleave(n, dim=0)
            bs.negative_prompt_embeds = npe.repeat_interleave(n, dim=0) if npe is not None else None
        self.set_block_state(state, bs)
        return components, state


def ip_adapter_embeds_inputs() -> List[InputParam]:
    """Precomputed IP-Adapter embeddings a user may pass straight to a modular pipeline (no IP-Adapter step)."""
    return [
        InputParam("ip_adapter_embeds", type_hint=list,
                   description="IP-Adapter image embeddings, one tensor per loaded adapter."),
        InputParam("negative_ip_adapter_embeds", type_hint=list,
                   description="Unconditional IP-Adapter image embeddings, one tensor per loaded adapter."),
    ]


def ip_adapter_embeds_outputs() -> List[OutputParam]:
    """The same embeddings handed on to the denoiser (tagged as denoiser inputs; the denoiser repeats rows)."""
    return [
        OutputParam("ip_adapter_embeds", type_hint=list, kwargs_type=DENOISER_FIELDS),
        OutputParam("negative_ip_adapter_embeds", type_hint=list, kwargs_type=DENOISER_FIELDS),
    ]


def check_ip_adapter_embeds(bs) -> None:
    for name in ("ip_adapter_embeds", "negative_ip_adapter_embeds"):
        value = getattr(bs, name, None)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, torch.Tensor) for v in value):
            raise ValueError(f"`{name}` must be a list of tensors (one per IP-Adapter), got {_describe(value)}.")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(type(value))


class StableDiffusionSetTimestepsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Set the scheduler's timesteps from `num_inference_steps`, or custom `timesteps` / `sigmas`."

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("num_inference_steps", type_hint=int, default=50),
            InputParam("timesteps", type_hint=List[int]),
            InputParam("sigmas", type_hint=List[float]),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("timesteps", type_hint=torch.Tensor, description="Timesteps of the denoise loop."),
            OutputParam("num_inference_steps", type_hint=int, description="Effective number of steps."),
        ]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.timesteps, bs.num_inference_steps = retrieve_timesteps(
            components.scheduler, bs.num_inference_steps, execution_device(components), bs.timesteps, bs.sigmas
        )
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionImg2ImgSetTimestepsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME
    default_strength = 0.8

    @property
    def description(self) -> str:
        return ("Set the timesteps and keep the last `strength` fraction of them; `latent_timestep` is the first "
                "kept timestep, one per image.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("num_inference_steps", type_hint=int, default=50),
            InputParam("timesteps", type_hint=List[int]),
            InputParam("sigmas", type_hint=List[float]),
            InputParam("strength", type_hint=float, default=self.default_strength),
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
        scheduler = components.scheduler
        _, steps = retrieve_timesteps(
            scheduler, bs.num_inference_steps, execution_device(components), bs.timesteps, bs.sigmas
        )
        bs.timesteps, bs.num_inference_steps = apply_strength(scheduler, steps, bs.strength)
        if bs.num_inference_steps < 1:
            raise ValueError(
                f"After adjusting the num_inference_steps by strength parameter: {bs.strength}, the number of pipeline"
                f"steps is {bs.num_inference_steps} which is < 1 and not appropriate for this pipeline."
            )
        bs.latent_timestep = bs.timesteps[:1].repeat(bs.batch_size * bs.num_images_per_prompt)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionInpaintSetTimestepsStep(StableDiffusionImg2ImgSetTimestepsStep):
    default_strength = 1.0


class StableDiffusionPrepareLatentsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Draw the initial noise latents (or take `latents`) scaled by the scheduler's `init_noise_sigma`."

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec(), vae_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
            InputParam("latents", type_hint=torch.Tensor),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("generator"),
            InputParam("batch_size", type_hint=int, required=True),
            InputParam("dtype", type_hint=torch.dtype),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor, description="Initial latents of the denoise loop.")]

    def __call__(self, components, state):
        from ...utils.torch_utils import randn_tensor

        bs = self.get_block_state(state)
        factor = components.vae_scale_factor
        height = bs.height if bs.height is not None else components.default_height
        width = bs.width if bs.width is not None else components.default_width
        check_size(height, width, factor)
        batch = bs.batch_size * bs.num_images_per_prompt
        dtype = bs.dtype if bs.dtype is not None else torch.float32
        device = execution_device(components)
        shape = (batch, components.num_channels_latents, int(height) // factor, int(width) // factor)
        check_generators(bs.generator, batch)
        if bs.latents is None:
            latents = randn_tensor(shape, generator=bs.generator, device=device, dtype=dtype)
        else:
            if tuple(bs.latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape} but has shape {tuple(bs.latents.shape)}.")
            latents = bs.latents.to(device)
        bs.latents = latents * components.scheduler.init_noise_sigma
        self.set_block_state(state, bs)
        return components, state


def check_size(height: Any, width: Any, factor: int = 8) -> None:
    if not isinstance(height, int) or not isinstance(width, int) or height % factor or width % factor:
        raise ValueError(f"`height` and `width` have to be divisible by {factor} but are {height} and {width}.")


def expand_image_latents(image_latents: torch.Tensor, batch: int) -> torch.Tensor:
    rows = image_latents.shape[0]
    if batch > rows and batch % rows == 0:
        warnings.warn(
            f"You have passed {batch} text prompts (`prompt`), but only {rows} initial images (`image`). Initial "
            "images are duplicated to match the number of text prompts; pass as many images as prompts to silence "
            "this warning.",
            FutureWarning,
            stacklevel=3,
        )
        return torch.cat([image_latents] * (batch // rows))
    if batch > rows:
        raise ValueError(f"Cannot duplicate `image` of batch size {rows} to {batch} text prompts.")
    return image_latents


class StableDiffusionImg2ImgPrepareLatentsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Noise `image_latents` to `latent_timestep` (image-to-image)."

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("latents", type_hint=torch.Tensor),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("generator"),
            InputParam("latent_timestep", type_hint=torch.Tensor, required=True),
            InputParam("image_latents", type_hint=torch.Tensor, required=True),
            InputParam("batch_size", type_hint=int, required=True),
            InputParam("dtype", type_hint=torch.dtype),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        from ...utils.torch_utils import randn_tensor

        bs = self.get_block_state(state)
        if bs.latents is not None:
            self.set_block_state(state, bs)
            return components, state
        batch = bs.batch_size * bs.num_images_per_prompt
        dtype = bs.dtype if bs.dtype is not None else bs.image_latents.dtype
        init = expand_image_latents(bs.image_latents.to(dtype=dtype), batch)
        noise = randn_tensor(init.shape, generator=bs.generator, device=init.device, dtype=dtype)
        bs.latents = components.scheduler.add_noise(init, noise, bs.latent_timestep)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionInpaintPrepareLatentsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return (
            "Inpainting latents: encode the image when needed (4-channel UNets, or strength < 1), draw the noise, "
            "start from pure noise (strength 1) or the noised image, then resize the mask to latent size and encode "
            "the masked image (9-channel UNets)."
        )

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec(), vae_spec(), unet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("latents", type_hint=torch.Tensor),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("strength", type_hint=float, default=1.0),
            InputParam("generator"),
            InputParam("batch_size", type_hint=int, required=True),
            InputParam("latent_timestep", type_hint=torch.Tensor, required=True),
            InputParam("init_image", type_hint=torch.Tensor, required=True),
            InputParam("mask", type_hint=torch.Tensor, required=True),
            InputParam("masked_image", type_hint=torch.Tensor),
            InputParam("masked_image_latents", type_hint=torch.Tensor),
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
            InputParam("dtype", type_hint=torch.dtype),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("latents", type_hint=torch.Tensor),
            OutputParam("noise", type_hint=torch.Tensor, description="The noise drawn for the initial latents."),
            OutputParam("image_latents", type_hint=torch.Tensor, description="Clean image latents (4-channel UNets)."),
            OutputParam("mask", type_hint=torch.Tensor, description="Mask at latent resolution, one row per image."),
            OutputParam("masked_image_latents", type_hint=torch.Tensor),
        ]

    def __call__(self, components, state):
        from ...utils.torch_utils import randn_tensor

        bs = self.get_block_state(state)
        vae, unet, scheduler = components.vae, components.unet, components.scheduler
        device = execution_device(components)
        dtype = bs.dtype if bs.dtype is not None else unet.dtype
        factor = components.vae_scale_factor
        height = bs.height if bs.height is not None else components.default_height
        width = bs.width if bs.width is not None else components.default_width
        check_size(height, width, factor)
        batch = bs.batch_size * bs.num_images_per_prompt
        check_strength(bs.strength)
        unet_channels = unet.config.in_channels
        latent_channels = vae.config.latent_channels
        if unet_channels not in (latent_channels, 9):
            raise ValueError(
                f"The unet {unet.__class__} should have either 4 or 9 input channels, not {unet_channels}."
            )
        strength_max = bs.strength == 1.0
        generator = bs.generator
        check_generators(generator, batch)
        shape = (batch, latent_channels, int(height) // factor, int(width) // factor)

        image_latents = None
        need_image = unet_channels == latent_channels or (bs.latents is None and not strength_max)
        if need_image:
            image = bs.init_image.to(device=device, dtype=dtype)
            image_latents = image if image.shape[1] == latent_channels else sample_vae_latents(vae, image, generator)
            image_latents = image_latents.repeat(batch // image_latents.shape[0], 1, 1, 1)
        if bs.latents is None:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            if strength_max:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, bs.latent_timestep)
        else:
            noise = bs.latents.to(device)
            latents = noise * scheduler.init_noise_sigma

        # mask at latent size, masked image latents (drawn after the noise, as the classic pipeline does)
        mask = torch.nn.functional.interpolate(bs.mask, size=(height // factor, width // factor))
        mask = mask.to(device=device, dtype=dtype)
        masked = bs.masked_image_latents if bs.masked_image_latents is not None else bs.masked_image
        masked = masked.to(device=device, dtype=dtype) if masked is not None else None
        if masked is None:
            # the image was given as latents: there is no masked pixel image to encode
            if unet_channels == 9:
                raise ValueError("A 9-channel inpainting UNet needs `masked_image_latents` when `image` is given as "
                                 "latents.")
            masked_latents = None
        elif masked.shape[1] == latent_channels:
            masked_latents = masked
        elif unet_channels == 9:
            masked_latents = sample_vae_latents(vae, masked, generator)
        else:
            skip_vae_sample(vae, masked, generator)
            masked_latents = None
        mask = _repeat_rows(mask, batch, "mask")
        if masked_latents is not None:
            masked_latents = _repeat_rows(masked_latents, batch, "image")
            if unet_channels == 9:
                total = latent_channels + mask.shape[1] + masked_latents.shape[1]
                if total != unet_channels:
                    raise ValueError(
                        f"Incorrect configuration settings! The config of `pipeline.unet`: {unet.config} expects"
                        f" {unet_channels} but received `num_channels_latents`: {latent_channels} +"
                        f" `num_channels_mask`: {mask.shape[1]} + `num_channels_masked_image`: "
                        f"{masked_latents.shape[1]} = {total}. Please verify the config of `pipeline.unet` or your "
                        "`mask_image` or `image` input."
                    )
        bs.latents, bs.noise, bs.image_latents = latents, noise, image_latents
        bs.mask, bs.masked_image_latents = mask, masked_latents
        self.set_block_state(state, bs)
        return components, state


def _repeat_rows(x: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if x.shape[0] >= batch:
        return x
    if batch % x.shape[0]:
        kind = "masks" if what == "mask" else "images"
        raise ValueError(
            f"The passed {what} and the required batch size don't match. {kind.capitalize()} are supposed to be "
            f"duplicated to a total batch size of {batch}, but {x.shape[0]} {kind} were passed. Make sure the number "
            f"of {kind} that you pass is divisible by the total requested batch size."
        )
    return x.repeat(batch // x.shape[0], 1, 1, 1)
