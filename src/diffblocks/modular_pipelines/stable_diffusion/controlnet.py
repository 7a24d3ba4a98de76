"""ControlNet for Stable Diffusion 1.x/2.x as blocks: the input step (control images, scales, guidance window)
and the loop denoiser that adds the ControlNet residuals to the UNet.

The input step turns ``control_image`` (one image or batch per ControlNet; a list of them for a
``MultiControlNetModel``) into tensors at the latents' pixel size, repeated per prompt and per image, and turns
``control_guidance_start``/``control_guidance_end`` into a per-step keep factor (1.0 while a net is active).
The denoiser runs the ControlNet on the same batched rows as the UNet (the guider doubles the control image for
classifier-free guidance); in ``guess_mode`` the ControlNet sees the conditional rows only and the unconditional
rows get zero residuals. SDXL subclasses the denoiser to add ``text_embeds``/``time_ids``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .. import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam
from .denoise import (
    StableDiffusionDenoiseLoopWrapper,
    StableDiffusionInpaintLoopAfterDenoiser,
    StableDiffusionInpaintLoopBeforeDenoiser,
    StableDiffusionLoopAfterDenoiser,
    StableDiffusionLoopBeforeDenoiser,
    denoiser_plan,
    ip_adapter_fields,
)
from .encoders import DENOISER_FIELDS, MODEL_NAME, execution_device, guider_spec, unet_spec

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ specs
def controlnet_spec() -> ComponentSpec:
    from ...models import ControlNetModel

    return ComponentSpec("controlnet", ControlNetModel)


def control_image_processor_spec() -> ComponentSpec:
    from ...configuration import FrozenDict
    from ...image_processor import VaeImageProcessor

    return ComponentSpec(
        "control_image_processor",
        VaeImageProcessor,
        config=FrozenDict({"do_convert_rgb": True, "do_normalize": False}),
        default_creation_method="from_config",
    )


# ------------------------------------------------------------------------------------------------ helpers
def controlnet_nets(controlnet: Any) -> List[Any]:
    """The ControlNets of ``controlnet``: ``[controlnet]`` or the nets of a ``MultiControlNetModel``."""
    nets = getattr(controlnet, "nets", None)
    return list(nets) if nets is not None else [controlnet]


def is_multi(controlnet: Any) -> bool:
    return getattr(controlnet, "nets", None) is not None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def align_control_guidance(start: Any, end: Any, num_nets: int) -> Tuple[List[float], List[float]]:
    """``control_guidance_start``/``end`` as two lists of the same length (a scalar is repeated to match the other
    list, or to the number of nets when both are scalars)."""
    start_list = isinstance(start, (list, tuple))
    end_list = isinstance(end, (list, tuple))
    if not start_list and end_list:
        start = [start] * len(end)
    elif start_list and not end_list:
        end = [end] * len(start)
    elif not start_list and not end_list:
        start, end = [start] * num_nets, [end] * num_nets
    return list(start), list(end)


def _check_one_image(image: Any, prompt_batch: Optional[int], name: str) -> None:
    import numpy as np
    import PIL.Image

    kinds = (PIL.Image.Image, torch.Tensor, np.ndarray)
    ok = isinstance(image, kinds) or (
        isinstance(image, list) and len(image) > 0 and isinstance(image[0], kinds)
    )
    if not ok:
        raise TypeError(
            f"`{name}` must be a PIL image, numpy array, torch tensor, or a list of PIL images, numpy arrays or torch"
            f" tensors, but is {type(image)}"
        )
    count = 1 if isinstance(image, PIL.Image.Image) else len(image)
    if prompt_batch is not None and count != 1 and count != prompt_batch:
        raise ValueError(
            f"If `{name}` batch size is not 1, it must be the same as the prompt batch size. `{name}` batch size: "
            f"{count}, prompt batch size: {prompt_batch}"
        )


def split_control_images(controlnet: Any, image: Any) -> List[Any]:
    """One entry per ControlNet: ``[image]`` for a single net; for several nets the list as given, or the
    transposed list when ``image`` is a list of per-prompt lists (``[[canny_1, pose_1], [canny_2, pose_2]]``)."""
    if not is_multi(controlnet):
        return [image]
    if isinstance(image, list) and any(isinstance(i, list) for i in image):
        return [list(group) for group in zip(*image)]
    return list(image)


def check_controlnet_inputs(
    controlnet: Any,
    image: Any,
    prompt_batch: Optional[int],
    controlnet_conditioning_scale: Any,
    control_guidance_start: Any,
    control_guidance_end: Any,
    image_name: str = "image",
) -> None:
    """The diffusers ControlNet checks (image kind and count, scale type, guidance window); errors name the
    argument. ``control_guidance_start``/``end`` may be scalars or lists."""
    if controlnet is None:
        raise ValueError("This pipeline needs a `controlnet` component (a ControlNetModel or a list of them).")
    nets = controlnet_nets(controlnet)
    if image is None:
        raise ValueError(f"`{image_name}` (the ControlNet conditioning image) must be given.")
    if is_multi(controlnet):
        if not isinstance(image, list):
            raise TypeError(f"For multiple controlnets: `{image_name}` must be type `list`")
        if any(isinstance(i, list) for i in image):
            groups = [list(g) for g in zip(*image)]
            if len(groups) != len(nets):
                raise ValueError(
                    f"For multiple controlnets: if you pass `{image_name}` as a list of lists, each sublist must "
                    f"have the same length as the number of controlnets, but the sublists in `{image_name}` got "
                    f"{len(groups)} images and {len(nets)} ControlNets."
                )
        elif len(image) != len(nets):
            raise ValueError(
                f"For multiple controlnets: `{image_name}` must have the same length as the number of controlnets, "
                f"but got {len(image)} images and {len(nets)} ControlNets."
            )
        for one in split_control_images(controlnet, image):
            _check_one_image(one, prompt_batch, image_name)
    else:
        _check_one_image(image, prompt_batch, image_name)

    scale = controlnet_conditioning_scale
    if is_multi(controlnet):
        if isinstance(scale, (list, tuple)):
            if any(isinstance(s, (list, tuple)) for s in scale):
                raise ValueError(
                    "A single batch of varying conditioning scale settings (e.g. [[1.0, 0.5], [0.2, 0.8]]) is not "
                    "supported at the moment. The conditioning scale must be fixed across the batch."
                )
            if len(scale) != len(nets):
                raise ValueError(
                    "For multiple controlnets: When `controlnet_conditioning_scale` is specified as `list`, it must "
                    f"have the same length as the number of controlnets ({len(nets)}), got {len(scale)} values."
                )
            if not all(_is_number(s) for s in scale):
                raise TypeError(f"`controlnet_conditioning_scale` must hold numbers, got {list(scale)!r}.")
        elif not _is_number(scale):
            raise TypeError(
                f"`controlnet_conditioning_scale` must be a float or a list of floats, got {type(scale).__name__}."
            )
    elif not _is_number(scale):
        raise TypeError("For single controlnet: `controlnet_conditioning_scale` must be type `float`.")

    starts, ends = align_control_guidance(control_guidance_start, control_guidance_end, len(nets))
    if len(starts) != len(ends):
        raise ValueError(
            f"`control_guidance_start` has {len(starts)} elements, but `control_guidance_end` has {len(ends)} "
            "elements. Make sure to provide the same number of elements to each list."
        )
    if is_multi(controlnet) and len(starts) != len(nets):
        raise ValueError(
            f"`control_guidance_start`: {starts} has {len(starts)} elements but there are {len(nets)} controlnets "
            f"available. Make sure to provide {len(nets)}."
        )
    for start, end in zip(starts, ends):
        if not _is_number(start) or not _is_number(end):
            raise TypeError(
                f"`control_guidance_start`/`control_guidance_end` must be numbers, got {start!r} and {end!r}."
            )
        if start >= end:
            raise ValueError(
                f"control guidance start: {start} cannot be larger or equal to control guidance end: {end}."
            )
        if start < 0.0:
            raise ValueError(f"control guidance start: {start} can't be smaller than 0.")
        if end > 1.0:
            raise ValueError(f"control guidance end: {end} can't be larger than 1.0.")


def controlnet_keep(num_steps: int, starts: Sequence[float], ends: Sequence[float], single: bool) -> List[Any]:
    """Per step, 1.0 while ``start <= i / N`` and ``(i + 1) / N <= end`` hold, else 0.0 (one value per net; a
    plain float for a single ControlNet)."""
    keep = []
    for i in range(num_steps):
        values = [1.0 - float(i / num_steps < s or (i + 1) / num_steps > e) for s, e in zip(starts, ends)]
        keep.append(values[0] if single else values)
    return keep


def prepare_control_image(
    processor: Any,
    image: Any,
    height: Optional[int],
    width: Optional[int],
    batch_size: int,
    num_images_per_prompt: int,
    device: torch.device,
    dtype: torch.dtype,
    crops_coords: Any = None,
    resize_mode: str = "default",
) -> torch.Tensor:
    """Preprocess one ControlNet's image(s) to ``(height, width)`` in [0, 1]; one image is repeated to
    ``batch_size`` rows, a per-prompt batch ``num_images_per_prompt`` times each."""
    tensor = processor.preprocess(
        image, height=height, width=width, crops_coords=crops_coords, resize_mode=resize_mode
    ).to(dtype=torch.float32)
    repeat = batch_size if tensor.shape[0] == 1 else num_images_per_prompt
    tensor = tensor.repeat_interleave(repeat, dim=0)
    return tensor.to(device=device, dtype=dtype)


def global_pool_conditions(controlnet: Any) -> bool:
    return bool(getattr(controlnet_nets(controlnet)[0].config, "global_pool_conditions", False))


# ------------------------------------------------------------------------------------------------ input step
class StableDiffusionControlNetInputStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Prepare the ControlNet inputs: control image(s) at the latents' pixel size and batch, the "
                "conditioning scale(s), `guess_mode` and the per-step keep factors from "
                "`control_guidance_start`/`control_guidance_end`.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [controlnet_spec(), control_image_processor_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("control_image", required=True,
                       description="Conditioning image(s); a list with one entry per net for several ControlNets."),
            InputParam("control_guidance_start", default=0.0),
            InputParam("control_guidance_end", default=1.0),
            InputParam("controlnet_conditioning_scale", default=1.0),
            InputParam("guess_mode", type_hint=bool, default=False),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            InputParam("latents", type_hint=torch.Tensor, required=True),
            InputParam("batch_size", type_hint=int, required=True),
            InputParam("timesteps", type_hint=torch.Tensor, required=True),
            InputParam("crops_coords"),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("controlnet_cond", description="Control image tensor(s), one row per generated image."),
            OutputParam("control_guidance_start", type_hint=list),
            OutputParam("control_guidance_end", type_hint=list),
            OutputParam("conditioning_scale", description="Float, or one float per ControlNet."),
            OutputParam("guess_mode", type_hint=bool),
            OutputParam("controlnet_keep", type_hint=list, description="Per-step keep factor(s)."),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        controlnet = getattr(components, "controlnet", None)
        nets = controlnet_nets(controlnet) if controlnet is not None else []
        check_controlnet_inputs(
            controlnet, bs.control_image, bs.batch_size, bs.controlnet_conditioning_scale,
            bs.control_guidance_start, bs.control_guidance_end, image_name="control_image",
        )
        starts, ends = align_control_guidance(bs.control_guidance_start, bs.control_guidance_end, len(nets))
        factor = components.vae_scale_factor
        height, width = bs.latents.shape[-2] * factor, bs.latents.shape[-1] * factor
        device = execution_device(components)
        dtype = controlnet.dtype
        resize_mode = "fill" if bs.crops_coords is not None else "default"
        processor = components.control_image_processor
        batch = bs.batch_size * bs.num_images_per_prompt
        images = [
            prepare_control_image(processor, image, height, width, batch, bs.num_images_per_prompt, device, dtype,
                                  crops_coords=bs.crops_coords, resize_mode=resize_mode)
            for image in split_control_images(controlnet, bs.control_image)
        ]
        multi = is_multi(controlnet)
        scale = bs.controlnet_conditioning_scale
        if multi and not isinstance(scale, (list, tuple)):
            scale = [float(scale)] * len(nets)
        bs.controlnet_cond = images if multi else images[0]
        bs.conditioning_scale = list(scale) if isinstance(scale, (list, tuple)) else scale
        bs.guess_mode = bool(bs.guess_mode) or global_pool_conditions(controlnet)
        bs.control_guidance_start, bs.control_guidance_end = starts, ends
        bs.controlnet_keep = controlnet_keep(self._schedule_length(components, bs), starts, ends, single=not multi)
        self.set_block_state(state, bs)
        return components, state

    def _schedule_length(self, components, bs) -> int:
        """The number of steps the guidance window is measured against."""
        return len(bs.timesteps)


# ------------------------------------------------------------------------------------------------ loop denoiser
def step_scale(conditioning_scale: Any, keep: Any) -> Any:
    """The conditioning scale of one step: ``scale * keep`` (element-wise for several ControlNets)."""
    if isinstance(keep, list):
        return [c * k for c, k in zip(conditioning_scale, keep)]
    scale = conditioning_scale[0] if isinstance(conditioning_scale, (list, tuple)) else conditioning_scale
    return scale * keep


class StableDiffusionControlNetLoopDenoiser(ModularPipelineBlocks):
    """Loop step 2 with ControlNet residuals. Subclasses change the extra per-branch fields (``_fields``) and the
    ``added_cond_kwargs`` of the ControlNet and the UNet."""

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step 2 (ControlNet): run the ControlNet on the latents and the control image, then the UNet "
                "with its residuals; the guider batches the conditional and unconditional rows (in `guess_mode` "
                "the ControlNet sees the conditional rows only).")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [guider_spec(), unet_spec(), controlnet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("cross_attention_kwargs", type_hint=dict),
            InputParam("num_inference_steps", type_hint=int, required=True),
            InputParam("timestep_cond", type_hint=torch.Tensor),
            InputParam("controlnet_cond", required=True),
            InputParam("conditioning_scale", default=1.0),
            InputParam("guess_mode", type_hint=bool, required=True),
            InputParam("controlnet_keep", type_hint=list, required=True),
            InputParam(kwargs_type=DENOISER_FIELDS,
                       description="prompt_embeds / negative_prompt_embeds (and ip_adapter_embeds pairs)"),
        ]

    # -------------------------------------------------------------------------- family hooks
    def _fields(self, bs) -> Dict[str, Tuple[Any, Any]]:
        """Per-branch ``(cond, uncond)`` inputs besides the latents and the control image."""
        get = bs.__dict__.get
        fields = {"encoder_hidden_states": (bs.prompt_embeds, get("negative_prompt_embeds"))}
        ip = ip_adapter_fields(bs, bs.scaled_latents.shape[0])
        if ip is not None:
            fields["image_embeds"] = ip
        return fields

    def _controlnet_added(self, values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return None

    def _unet_added(self, values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        image_embeds = values.get("image_embeds")
        return {"image_embeds": image_embeds} if image_embeds is not None else None

    # -------------------------------------------------------------------------- step
    def __call__(self, components, block_state, i: int, t: Any):
        bs = block_state
        controlnet, unet = components.controlnet, components.unet
        x = bs.scaled_latents
        cond_image = bs.controlnet_cond
        fields = self._fields(bs)
        guess = bool(bs.guess_mode)
        data = {"sample": (x, x), **fields}
        if not guess:
            data["controlnet_cond"] = (cond_image, cond_image)
        scale = step_scale(bs.conditioning_scale, bs.controlnet_keep[i])
        channels = controlnet_nets(controlnet)[0].config.in_channels
        guess_residuals = None
        if guess:
            # the ControlNet runs once per step on the conditional rows only
            cond_values = {k: v[0] for k, v in fields.items()}
            guess_residuals = controlnet(
                x[:, :channels], t, encoder_hidden_states=cond_values["encoder_hidden_states"],
                controlnet_cond=cond_image, conditioning_scale=scale, guess_mode=True,
                added_cond_kwargs=self._controlnet_added(cond_values), return_dict=False,
            )
        guide, extra = bs.__dict__.get("_denoiser_plan") or denoiser_plan(components, bs.__dict__)

        def predict(batch: Dict[str, Any], identifier: str) -> torch.Tensor:
            values = {k: batch[k] for k in fields}
            if guess:
                down, mid = guess_residuals
                if identifier == "pred_merged":
                    down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                    mid = torch.cat([torch.zeros_like(mid), mid])
                elif identifier == "pred_uncond":
                    down, mid = None, None
            else:
                down, mid = controlnet(
                    batch["sample"][:, :channels], t, encoder_hidden_states=batch["encoder_hidden_states"],
                    controlnet_cond=batch["controlnet_cond"], conditioning_scale=scale, guess_mode=False,
                    added_cond_kwargs=self._controlnet_added(values), return_dict=False,
                )
            return unet(
                batch["sample"],
                t,
                encoder_hidden_states=batch["encoder_hidden_states"],
                added_cond_kwargs=self._unet_added(values),
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
                **extra,
            )[0]

        bs.noise_pred = guide(predict, data, i, bs.num_inference_steps, t, unet)
        return components, bs


# ------------------------------------------------------------------------------------------------ loops
class StableDiffusionControlNetDenoiseStep(StableDiffusionDenoiseLoopWrapper):
    block_classes = [StableDiffusionLoopBeforeDenoiser, StableDiffusionControlNetLoopDenoiser,
                     StableDiffusionLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop with ControlNet (text-to-image and image-to-image)."


class StableDiffusionInpaintControlNetDenoiseStep(StableDiffusionDenoiseLoopWrapper):
    block_classes = [StableDiffusionInpaintLoopBeforeDenoiser, StableDiffusionControlNetLoopDenoiser,
                     StableDiffusionInpaintLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop with ControlNet (inpainting: 9-channel inputs or the 4-channel known-region blend)."


__all__ = [
    "StableDiffusionControlNetDenoiseStep",
    "StableDiffusionControlNetInputStep",
    "StableDiffusionControlNetLoopDenoiser",
    "StableDiffusionInpaintControlNetDenoiseStep",
    "align_control_guidance",
    "check_controlnet_inputs",
    "controlnet_keep",
    "prepare_control_image",
]
