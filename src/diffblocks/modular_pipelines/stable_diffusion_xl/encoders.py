"""Stable Diffusion XL encoding stages: two CLIP text encoders (with pooled embeddings), VAE image encoding and
inpainting inputs. The image stages reuse the Stable Diffusion 1.x/2.x blocks (same algorithm) under the SDXL
model name."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple, Union

import torch

from .. import ComponentSpec, ConfigSpec, InputParam, ModularPipelineBlocks, OutputParam
from ..stable_diffusion.encoders import (
    DENOISER_FIELDS,
    StableDiffusionInpaintVaeEncoderStep,
    StableDiffusionVaeEncoderStep,
    _check_prompt,
    _warn_truncation,
    execution_device,
    guider_spec,
    uses_guidance_embedding,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "stable-diffusion-xl"


def _as_list(value: Union[str, List[str]], batch: int) -> List[str]:
    return batch * [value] if isinstance(value, str) else list(value)


def _run_clip(text_encoder, tokenizer, texts: List[str], device, max_length: int, clip_skip: Optional[int],
              warn: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(hidden states ``clip_skip + 2`` layers from the end, pooled/projected output if the encoder has one)."""
    ids = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    if warn:
        _warn_truncation(tokenizer, texts, ids)
    out = text_encoder(ids.to(device), output_hidden_states=True)
    first = out[0]
    pooled = first if first.ndim == 2 else None
    skip = 0 if clip_skip is None else clip_skip
    return out.hidden_states[-(skip + 2)], pooled


def encode_prompt_xl(
    components: Any,
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
    clip_skip: Optional[int] = None,
    force_zeros_for_empty_prompt: bool = True,
    lora_scale: Optional[float] = None,
):
    """SDXL text embeddings: the penultimate hidden states of both CLIP encoders concatenated on the feature axis,
    and the projected pooled output of the second. Returns ``(prompt_embeds, negative_prompt_embeds,
    pooled_prompt_embeds, negative_pooled_prompt_embeds)``; the negatives are None without guidance.

    A pipeline without the first encoder (the refiner) encodes ``prompt`` with the second encoder only.
    """
    from ...models.attention import lora_scale_applied

    encoders = [getattr(components, "text_encoder", None), getattr(components, "text_encoder_2", None)]
    with lora_scale_applied(encoders, lora_scale):
        return _encode_prompt_xl(
            components, prompt, prompt_2, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
            negative_prompt_2, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
            negative_pooled_prompt_embeds, clip_skip, force_zeros_for_empty_prompt,
        )


def _encode_prompt_xl(components, prompt, prompt_2, device, num_images_per_prompt, do_classifier_free_guidance,
                      negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                      negative_pooled_prompt_embeds, clip_skip, force_zeros_for_empty_prompt):
    device = device if device is not None else execution_device(components)
    te1, te2 = getattr(components, "text_encoder", None), getattr(components, "text_encoder_2", None)
    tok1, tok2 = getattr(components, "tokenizer", None), getattr(components, "tokenizer_2", None)
    pairs = [(tok1, te1), (tok2, te2)] if te1 is not None else [(tok2, te2)]
    if isinstance(prompt, str):
        prompt = [prompt]
    batch = len(prompt) if prompt is not None else prompt_embeds.shape[0]

    if prompt_embeds is None:
        if any(tok is None or enc is None for tok, enc in pairs):
            raise ValueError("Encoding `prompt` needs `text_encoder_2` and `tokenizer_2` (and `text_encoder`/"
                             "`tokenizer` when present); pass `prompt_embeds` and `pooled_prompt_embeds` instead.")
        prompt_2 = prompt_2 or prompt
        prompt_2 = [prompt_2] if isinstance(prompt_2, str) else prompt_2
        pieces = []
        for texts, (tok, enc) in zip([prompt, prompt_2], pairs):
            hidden, pooled = _run_clip(enc, tok, texts, device, tok.model_max_length, clip_skip, True)
            if pooled_prompt_embeds is None and pooled is not None:
                pooled_prompt_embeds = pooled
            pieces.append(hidden)
        prompt_embeds = torch.cat(pieces, dim=-1)

    zero_negative = negative_prompt is None and force_zeros_for_empty_prompt
    if do_classifier_free_guidance and negative_prompt_embeds is None and zero_negative:
        negative_prompt_embeds = torch.zeros_like(prompt_embeds)
        negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
    elif do_classifier_free_guidance and negative_prompt_embeds is None:
        negative_prompt = negative_prompt or ""
        negative_prompt_2 = negative_prompt_2 or negative_prompt
        negatives = [_as_list(negative_prompt, batch), _as_list(negative_prompt_2, batch)]
        for name, value in (("negative_prompt", negatives[0]), ("negative_prompt_2", negatives[1])):
            if len(value) != batch:
                raise ValueError(
                    f"`{name}`: {value} has batch size {len(value)}, but `prompt`: {prompt} has batch size {batch}."
                    " Please make sure that passed `negative_prompt` matches the batch size of `prompt`."
                )
        if any(tok is None or enc is None for tok, enc in pairs):
            raise ValueError("Encoding `negative_prompt` needs the text encoders and tokenizers.")
        pieces = []
        for texts, (tok, enc) in zip(negatives, pairs):
            hidden, pooled = _run_clip(enc, tok, texts, device, prompt_embeds.shape[1], None, False)
            if negative_pooled_prompt_embeds is None and pooled is not None:
                negative_pooled_prompt_embeds = pooled
            pieces.append(hidden)
        negative_prompt_embeds = torch.cat(pieces, dim=-1)

    if te2 is not None:
        dtype = te2.dtype
    elif getattr(components, "unet", None) is not None:
        dtype = components.unet.dtype
    else:
        dtype = prompt_embeds.dtype
    prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
    if pooled_prompt_embeds is not None:
        pooled_prompt_embeds = pooled_prompt_embeds.to(device=device)
    if do_classifier_free_guidance:
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
        if negative_pooled_prompt_embeds is not None:
            negative_pooled_prompt_embeds = negative_pooled_prompt_embeds.to(device=device)
    else:
        negative_prompt_embeds = negative_pooled_prompt_embeds = None

    if num_images_per_prompt > 1:
        def rep(x):
            return None if x is None else x.repeat_interleave(num_images_per_prompt, dim=0)

        prompt_embeds, negative_prompt_embeds = rep(prompt_embeds), rep(negative_prompt_embeds)
        pooled_prompt_embeds, negative_pooled_prompt_embeds = rep(pooled_prompt_embeds), rep(
            negative_pooled_prompt_embeds)
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds


def _config_value(components: Any, name: str, default: Any) -> Any:
    config = getattr(components, "config", None)
    if config is None:
        return default
    value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
    return default if value is None else value


def check_prompt_inputs(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                        pooled_prompt_embeds, negative_pooled_prompt_embeds) -> None:
    """The prompt/embedding consistency checks of the SDXL pipelines (ValueError naming the arguments)."""
    for name, text, embeds in (("prompt", prompt, prompt_embeds), ("prompt_2", prompt_2, prompt_embeds),
                               ("negative_prompt", negative_prompt, negative_prompt_embeds),
                               ("negative_prompt_2", negative_prompt_2, negative_prompt_embeds)):
        if text is not None and embeds is not None:
            kind = "negative_prompt_embeds" if name.startswith("negative") else "prompt_embeds"
            raise ValueError(f"Cannot forward both `{name}`: {text} and `{kind}`: {embeds}. Please make sure to"
                             " only forward one of the two.")
    if prompt is None and prompt_embeds is None:
        raise ValueError(
            "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
        )
    _check_prompt(prompt, "prompt")
    _check_prompt(prompt_2, "prompt_2")
    if prompt_embeds is not None and negative_prompt_embeds is not None and (
            prompt_embeds.shape != negative_prompt_embeds.shape):
        raise ValueError(
            "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
            f" got: `prompt_embeds` {prompt_embeds.shape} != `negative_prompt_embeds` {negative_prompt_embeds.shape}."
        )
    if prompt_embeds is not None and pooled_prompt_embeds is None:
        raise ValueError(
            "If `prompt_embeds` are provided, `pooled_prompt_embeds` also have to be passed. Make sure to generate "
            "`pooled_prompt_embeds` from the same text encoder that was used to generate `prompt_embeds`."
        )
    if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
        raise ValueError(
            "If `negative_prompt_embeds` are provided, `negative_pooled_prompt_embeds` also have to be passed. Make "
            "sure to generate `negative_pooled_prompt_embeds` from the same text encoder that was used to generate "
            "`negative_prompt_embeds`."
        )


class StableDiffusionXLTextEncoderStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Encode `prompt`/`prompt_2` (and the negative prompts when the guider needs an unconditional "
                "branch) with both CLIP text encoders: token embeddings and pooled embeddings.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        from ...models.clip_text import CLIPTextModel, CLIPTextModelWithProjection
        from ...models.clip_tokenizer import CLIPTokenizer

        return [
            ComponentSpec("text_encoder", CLIPTextModel),
            ComponentSpec("text_encoder_2", CLIPTextModelWithProjection),
            ComponentSpec("tokenizer", CLIPTokenizer),
            ComponentSpec("tokenizer_2", CLIPTokenizer),
            guider_spec(),
        ]

    @property
    def expected_configs(self) -> List[ConfigSpec]:
        return [ConfigSpec("force_zeros_for_empty_prompt", True)]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("prompt", description="Prompt(s) for both text encoders."),
            InputParam("prompt_2", description="Prompt(s) for the second text encoder (default: `prompt`)."),
            InputParam("negative_prompt"),
            InputParam("negative_prompt_2"),
            InputParam("prompt_embeds", type_hint=torch.Tensor, description="Precomputed token embeddings."),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
            InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, description="Precomputed pooled embeddings."),
            InputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor),
            InputParam("cross_attention_kwargs"),
            InputParam("clip_skip", type_hint=int),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS,
                        description="Token embeddings of both encoders, concatenated."),
            OutputParam("negative_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
            OutputParam("pooled_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS,
                        description="Projected pooled embedding of the second encoder."),
            OutputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        check_prompt_inputs(bs.prompt, bs.prompt_2, bs.negative_prompt, bs.negative_prompt_2, bs.prompt_embeds,
                            bs.negative_prompt_embeds, bs.pooled_prompt_embeds, bs.negative_pooled_prompt_embeds)
        do_cfg = components.guider.num_conditions > 1 and not uses_guidance_embedding(components)
        (bs.prompt_embeds, bs.negative_prompt_embeds, bs.pooled_prompt_embeds,
         bs.negative_pooled_prompt_embeds) = encode_prompt_xl(
            components,
            bs.prompt,
            bs.prompt_2,
            execution_device(components),
            1,
            do_cfg,
            bs.negative_prompt,
            bs.negative_prompt_2,
            prompt_embeds=bs.prompt_embeds,
            negative_prompt_embeds=bs.negative_prompt_embeds,
            pooled_prompt_embeds=bs.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=bs.negative_pooled_prompt_embeds,
            clip_skip=bs.clip_skip,
            force_zeros_for_empty_prompt=bool(_config_value(components, "force_zeros_for_empty_prompt", True)),
            lora_scale=(bs.cross_attention_kwargs or {}).get("scale"),
        )
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLVaeEncoderStep(StableDiffusionVaeEncoderStep):
    model_name = MODEL_NAME

    @torch.no_grad()
    def __call__(self, components, state):
        vae = components.vae
        if vae is None or vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
            return super().__call__(components, state)
        # an fp16 VAE flagged `force_upcast` overflows when encoding: encode in float32, return latents in `dtype`
        requested = state.get("dtype")
        dtype = requested if requested is not None else torch.float16
        vae.to(dtype=torch.float32)
        try:
            state.set("dtype", torch.float32)
            components, state = super().__call__(components, state)
        finally:
            vae.to(dtype=torch.float16)
        state.set("image_latents", state.get("image_latents").to(dtype))
        state.set("dtype", dtype)
        return components, state


class StableDiffusionXLInpaintVaeEncoderStep(StableDiffusionInpaintVaeEncoderStep):
    model_name = MODEL_NAME

