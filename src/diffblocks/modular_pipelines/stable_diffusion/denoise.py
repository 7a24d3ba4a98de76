"""The Stable Diffusion denoise loop as a ``LoopSequentialPipelineBlocks``.

Per step the loop runs ``before_denoiser`` (scale the latents, add inpaint channels), ``denoiser`` (one UNet call,
unconditional and conditional rows batched together through the guider) and ``after_denoiser`` (scheduler step,
inpaint blend). Everything that does not change between steps (the scheduler's accepted step kwargs, the
concatenated embeddings, the guidance-scale embedding) is computed once before the first step.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Dict, List, Tuple

import torch

from ...guiders import guider_runner
from .. import ComponentSpec, InputParam, LoopSequentialPipelineBlocks, ModularPipelineBlocks, OutputParam
from .encoders import DENOISER_FIELDS, MODEL_NAME, guider_spec, unet_spec

logger = logging.getLogger(__name__)

_STEP_KWARGS_CACHE: Dict[type, Tuple[bool, bool]] = {}


def _scheduler_spec() -> ComponentSpec:
    from ...schedulers import PNDMScheduler

    return ComponentSpec("scheduler", PNDMScheduler)


def scheduler_step_kwargs(scheduler, generator: Any, eta: float) -> Dict[str, Any]:
    """``eta``/``generator`` for ``scheduler.step``, each only if the scheduler's ``step`` accepts it."""
    key = type(scheduler)
    accepted = _STEP_KWARGS_CACHE.get(key)
    if accepted is None:
        params = inspect.signature(scheduler.step).parameters
        accepted = ("eta" in params, "generator" in params)
        _STEP_KWARGS_CACHE[key] = accepted
    kwargs = {}
    if accepted[0]:
        kwargs["eta"] = eta
    if accepted[1]:
        kwargs["generator"] = generator
    return kwargs


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype=torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of ``w * 1000`` (the guidance-scale conditioning of LCM-distilled UNets)."""
    if w.ndim != 1:
        raise ValueError(f"`w` must be 1-D, got shape {tuple(w.shape)}")
    w = w * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def _repeat_rows(name: str, embeds: Any, rows: int) -> List[torch.Tensor]:
    if not isinstance(embeds, (list, tuple)) or not all(isinstance(e, torch.Tensor) for e in embeds):
        raise ValueError(f"`{name}` must be a list of tensors (one per IP-Adapter), got {type(embeds).__name__}")
    out = []
    for e in embeds:
        if e.shape[0] == rows:
            out.append(e)
        elif e.shape[0] and rows % e.shape[0] == 0:
            out.append(e.repeat((rows // e.shape[0],) + (1,) * (e.ndim - 1)))
        else:
            raise ValueError(
                f"`{name}` entries must have 1 row per image set or one per image ({rows}), got shape {tuple(e.shape)}"
            )
    return out


def ip_adapter_fields(block_state: Any, rows: int) -> Any:
    """``(ip_adapter_embeds, negative_ip_adapter_embeds)`` repeated to ``rows`` (the latents' batch) once per run,
    or None without IP-Adapter inputs."""
    values = block_state.__dict__
    pair = values.get("_ip_embeds")
    if pair is None:
        pos = values.get("ip_adapter_embeds")
        if pos is None:
            return None
        neg = values.get("negative_ip_adapter_embeds")
        pair = (_repeat_rows("ip_adapter_embeds", pos, rows),
                _repeat_rows("negative_ip_adapter_embeds", neg, rows) if neg is not None else None)
        values["_ip_embeds"] = pair
    return pair


_NO_KWARGS: Dict[str, Any] = {}


def denoiser_plan(components: Any, values: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """``(guide, extra)`` for a loop denoiser, resolved once per run and kept in the block state (the loop wrapper
    drops it at the end): the guider's step function (:func:`guider_runner`) and the optional UNet inputs that are
    set (every keyword costs twice through ``nn.Module.__call__``)."""
    plan = values.get("_denoiser_plan")
    if plan is None:
        plan = values["_denoiser_plan"] = (guider_runner(components.guider), unet_extra_kwargs(values))
    return plan


def unet_extra_kwargs(values: Dict[str, Any]) -> Dict[str, Any]:
    """The block state's optional UNet inputs that are set (``timestep_cond``, ``cross_attention_kwargs``)."""
    timestep_cond = values.get("timestep_cond")
    attention_kwargs = values.get("cross_attention_kwargs")
    if timestep_cond is None and attention_kwargs is None:
        return _NO_KWARGS
    extra = {}
    if timestep_cond is not None:
        extra["timestep_cond"] = timestep_cond
    if attention_kwargs is not None:
        extra["cross_attention_kwargs"] = attention_kwargs
    return extra


def scheduler_advance(scheduler: Any, generator: Any, eta: float) -> Tuple[Any, Dict[str, Any]]:
    """``(advance, kwargs)``: ``advance(noise_pred, t, latents, **kwargs)`` returns the next latents through the
    scheduler's ``next_sample`` (or ``step(...)[0]`` for a scheduler written against diffusers' interface)."""
    kwargs = scheduler_step_kwargs(scheduler, generator, eta)
    advance = getattr(scheduler, "next_sample", None)
    if advance is None:
        def advance(noise_pred, t, latents, **kw):
            return scheduler.step(noise_pred, t, latents, return_dict=False, **kw)[0]
    return advance, kwargs


# ------------------------------------------------------------------------------------------------ loop sub-blocks
class StableDiffusionLoopBeforeDenoiser(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Loop step 1: scale the latents for the current timestep (`scaled_latents`)."

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor, required=True)]

    def __call__(self, components, block_state, i: int, t: Any):
        block_state.scaled_latents = components.scheduler.scale_model_input(block_state.latents, t)
        return components, block_state


class StableDiffusionInpaintLoopBeforeDenoiser(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step 1 (inpaint): scale the latents; for 9-channel UNets append the mask and the masked "
                "image latents on the channel axis.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec(), unet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("latents", type_hint=torch.Tensor, required=True),
            InputParam("mask", type_hint=torch.Tensor),
            InputParam("masked_image_latents", type_hint=torch.Tensor),
        ]

    def __call__(self, components, block_state, i: int, t: Any):
        scaled = components.scheduler.scale_model_input(block_state.latents, t)
        if components.unet.config.in_channels == 9:
            mask, masked = block_state.mask, block_state.masked_image_latents
            if mask is None or masked is None:
                raise ValueError(
                    "`mask` and `masked_image_latents` are required for a 9-channel (inpainting) UNet; run the "
                    "inpaint prepare-latents step first."
                )
            scaled = torch.cat([scaled, mask, masked], dim=1)
        block_state.scaled_latents = scaled
        return components, block_state


class StableDiffusionLoopDenoiser(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step 2: predict the noise with the UNet; the guider batches the conditional and "
                "unconditional rows into one call and combines the predictions (`noise_pred`).")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [guider_spec(), unet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("cross_attention_kwargs", type_hint=dict),
            InputParam("num_inference_steps", type_hint=int, required=True),
            InputParam("timestep_cond", type_hint=torch.Tensor),
            InputParam(kwargs_type=DENOISER_FIELDS, description="prompt_embeds / negative_prompt_embeds"),
        ]

    def __call__(self, components, block_state, i: int, t: Any):
        values = block_state.__dict__
        x = values["scaled_latents"]
        fields = {
            "sample": (x, x),
            "encoder_hidden_states": (values["prompt_embeds"], values.get("negative_prompt_embeds")),
        }
        ip = ip_adapter_fields(block_state, x.shape[0]) if "ip_adapter_embeds" in values else None
        if ip is not None:
            fields["image_embeds"] = ip
        unet = components.unet
        guide, extra = values.get("_denoiser_plan") or denoiser_plan(components, values)

        def predict(batch, identifier):
            if ip is not None:
                return unet(batch["sample"], t, encoder_hidden_states=batch["encoder_hidden_states"],
                            added_cond_kwargs={"image_embeds": batch["image_embeds"]}, return_dict=False, **extra)[0]
            return unet(batch["sample"], t, encoder_hidden_states=batch["encoder_hidden_states"], return_dict=False,
                        **extra)[0]

        block_state.noise_pred = guide(predict, fields, i, values["num_inference_steps"], t, unet)
        return components, block_state


class StableDiffusionLoopAfterDenoiser(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Loop step 3: the scheduler step from `noise_pred` (passing `eta`/`generator` when accepted)."

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [InputParam("eta", type_hint=float, default=0.0), InputParam("generator")]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor, description="Denoised latents.")]

    def __call__(self, components, block_state, i: int, t: Any):
        values = block_state.__dict__
        plan = values.get("_advance")
        if plan is None:  # once per run (the loop wrapper drops it at the end)
            plan = values["_advance"] = scheduler_advance(components.scheduler, values.get("generator"),
                                                         values.get("eta", 0.0))
        latents = values["latents"]
        out = plan[0](values["noise_pred"], t, latents, **plan[1])
        if out.dtype is not latents.dtype:
            out = out.to(latents.dtype)
        block_state.latents = out
        return components, block_state


class StableDiffusionInpaintLoopAfterDenoiser(StableDiffusionLoopAfterDenoiser):
    @property
    def description(self) -> str:
        return ("Loop step 3 (inpaint): the scheduler step; for 4-channel UNets the known region is reset to the "
                "image latents noised to the next timestep.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [_scheduler_spec(), unet_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return super().inputs + [
            InputParam("timesteps", type_hint=torch.Tensor, required=True),
            InputParam("mask", type_hint=torch.Tensor),
            InputParam("noise", type_hint=torch.Tensor),
            InputParam("image_latents", type_hint=torch.Tensor),
        ]

    def __call__(self, components, block_state, i: int, t: Any):
        components, block_state = super().__call__(components, block_state, i, t)
        if components.unet.config.in_channels != 4:
            return components, block_state
        for name in ("image_latents", "mask", "noise"):
            if getattr(block_state, name, None) is None:
                raise ValueError(f"`{name}` is required for this step (4-channel inpainting blend) but is None.")
        known = block_state.image_latents
        timesteps = block_state.timesteps
        if i < len(timesteps) - 1:
            known = components.scheduler.add_noise(known, block_state.noise, torch.tensor([timesteps[i + 1]]))
        mask = block_state.mask
        block_state.latents = (1 - mask) * known + mask * block_state.latents
        return components, block_state


# ------------------------------------------------------------------------------------------------ loop wrapper
class StableDiffusionDenoiseLoopWrapper(LoopSequentialPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Iterate over `timesteps`, running the loop sub-blocks at each step, with "
                "`callback_on_step_end` after each step.")

    @property
    def loop_expected_components(self) -> List[ComponentSpec]:
        return [guider_spec(), _scheduler_spec(), unet_spec()]

    @property
    def loop_inputs(self) -> List[InputParam]:
        return [
            InputParam("timesteps", type_hint=torch.Tensor, required=True),
            InputParam("num_inference_steps", type_hint=int, required=True),
            InputParam("timestep_cond", type_hint=torch.Tensor),
            InputParam("callback_on_step_end", description="Called as f(pipe, i, t, tensors) after each step."),
            InputParam("callback_on_step_end_tensor_inputs", type_hint=list, default=["latents"]),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        guider = components.guider
        unet = components.unet
        lcm_dim = getattr(unet.config, "time_cond_proj_dim", None)
        if lcm_dim is not None:
            guider.disable()
            if bs.timestep_cond is None:
                rows = bs.latents.shape[0]
                w = torch.tensor(guider.guidance_scale - 1).repeat(rows)
                bs.timestep_cond = guidance_scale_embedding(w, embedding_dim=lcm_dim).to(
                    device=bs.latents.device, dtype=bs.latents.dtype
                )
        elif getattr(components, "_guider_managed", False) is False:
            guider.enable()
        scheduler = components.scheduler
        timesteps = bs.timesteps
        order = getattr(scheduler, "order", 1)
        warmup = max(len(timesteps) - bs.num_inference_steps * order, 0)
        callback = bs.callback_on_step_end
        tensor_names = bs.callback_on_step_end_tensor_inputs or []
        if callback is not None and hasattr(callback, "tensor_inputs"):
            tensor_names = callback.tensor_inputs
        last = len(timesteps) - 1
        interruptible = hasattr(components, "_interrupt")
        # the sub-blocks' bound __call__ methods, resolved once per run (``loop_step`` without re-walking
        # ``sub_blocks`` and re-resolving each block's __call__ every step); a subclass's own loop_step is honoured
        if type(self).loop_step is LoopSequentialPipelineBlocks.loop_step:
            calls = tuple((name, block, block.__call__) for name, block in self.sub_blocks.items())
        else:
            calls = None
        # our guiders keep the concatenated embeddings between steps; a guider with only diffusers' interface has
        # no such cache
        reset_cache = getattr(guider, "reset_cache", None) or (lambda: None)
        reset_cache()
        try:
            # a classic pipeline holding the components has its own progress-bar settings
            make_bar = getattr(components, "progress_bar", None)
            make_bar = make_bar if callable(make_bar) else self.progress_bar
            with make_bar(total=bs.num_inference_steps) as bar:
                update = None if getattr(bar, "disable", False) else bar.update
                for i, t in enumerate(timesteps):
                    if interruptible and components._interrupt:
                        continue
                    if calls is None:
                        components, bs = self.loop_step(components, bs, i=i, t=t)
                    else:
                        entry = None
                        try:
                            for entry in calls:
                                components, bs = entry[2](components, bs, i=i, t=t)
                        except Exception as err:
                            self._report_error(entry[0], entry[1], err)
                            raise
                    if callback is not None:
                        self._run_callback(components, bs, callback, tensor_names, i, t)
                    if update is not None and (i == last or ((i + 1) > warmup and (i + 1) % order == 0)):
                        update()
        finally:
            reset_cache()
        bs.__dict__.pop("_advance", None)
        bs.__dict__.pop("_denoiser_plan", None)
        bs.__dict__.pop("_ip_embeds", None)
        self.set_block_state(state, bs)
        return components, state

    @staticmethod
    def _run_callback(components, bs, callback, names, i, t) -> None:
        merged = (
            getattr(components, "_callback_merges_embeds", False)
            and getattr(bs, "negative_prompt_embeds", None) is not None
            and components.guider.num_conditions > 1
        )
        tensors = {}
        for name in names:
            value = getattr(bs, name, None)
            if merged and name == "prompt_embeds":
                # the classic pipelines expose the CFG batch [negative, positive] under this name
                value = torch.cat([bs.negative_prompt_embeds, value])
            tensors[name] = value
        outputs = callback(components, i, t, tensors) or {}
        for name, value in outputs.items():
            if merged and name == "prompt_embeds" and value is not None:
                rows = bs.negative_prompt_embeds.shape[0]
                if value.shape[0] == 2 * rows:
                    bs.negative_prompt_embeds, value = value[:rows], value[rows:]
            setattr(bs, name, value)
        sync = getattr(components, "_after_step_callback", None)
        if sync is not None:
            sync()


class StableDiffusionDenoiseStep(StableDiffusionDenoiseLoopWrapper):
    block_classes = [StableDiffusionLoopBeforeDenoiser, StableDiffusionLoopDenoiser, StableDiffusionLoopAfterDenoiser]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop (text-to-image and image-to-image): scale, UNet with guidance, scheduler step."


class StableDiffusionInpaintDenoiseStep(StableDiffusionDenoiseLoopWrapper):
    block_classes = [
        StableDiffusionInpaintLoopBeforeDenoiser,
        StableDiffusionLoopDenoiser,
        StableDiffusionInpaintLoopAfterDenoiser,
    ]
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop (inpainting): 9-channel inputs or the 4-channel known-region blend."
