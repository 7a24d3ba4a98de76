"""Stable Diffusion 1.x/2.x encoding stages: prompt -> CLIP embeddings, image -> VAE latents, inpaint inputs.

Every block here reads its models from ``components`` (a ``StableDiffusionModularPipeline`` or a classic
``StableDiffusion*Pipeline``: both expose ``text_encoder``, ``tokenizer``, ``vae``, ``unet``, ``guider``,
``image_processor``, ``mask_processor``, ``vae_scale_factor``, ``default_height``/``default_width``).
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Union

import torch

from .. import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam

logger = logging.getLogger(__name__)

MODEL_NAME = "stable-diffusion"
DENOISER_FIELDS = "denoiser_input_fields"


# ------------------------------------------------------------------------------------------------ shared specs
def guider_spec() -> ComponentSpec:
    from ...configuration import FrozenDict
    from ...guiders import ClassifierFreeGuidance

    return ComponentSpec(
        "guider",
        ClassifierFreeGuidance,
        config=FrozenDict({"guidance_scale": 7.5}),
        default_creation_method="from_config",
    )


def image_processor_spec() -> ComponentSpec:
    from ...configuration import FrozenDict
    from ...image_processor import VaeImageProcessor

    return ComponentSpec(
        "image_processor",
        VaeImageProcessor,
        config=FrozenDict({"vae_scale_factor": 8}),
        default_creation_method="from_config",
    )


def mask_processor_spec() -> ComponentSpec:
    from ...configuration import FrozenDict
    from ...image_processor import VaeImageProcessor

    return ComponentSpec(
        "mask_processor",
        VaeImageProcessor,
        config=FrozenDict(
            {"do_normalize": False, "vae_scale_factor": 8, "do_binarize": True, "do_convert_grayscale": True}
        ),
        default_creation_method="from_config",
    )


def vae_spec() -> ComponentSpec:
    from ...models import AutoencoderKL

    return ComponentSpec("vae", AutoencoderKL)


def unet_spec() -> ComponentSpec:
    from ...models import UNet2DConditionModel

    return ComponentSpec("unet", UNet2DConditionModel)


def uses_guidance_embedding(components: Any) -> bool:
    """True for UNets conditioned on the guidance scale (LCM distilled): those run without CFG."""
    unet = getattr(components, "unet", None)
    return unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None


def execution_device(components: Any) -> torch.device:
    device = getattr(components, "_execution_device", None)
    return device if device is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------------------ prompt encoding
def _tokenize(tokenizer, texts: List[str], max_length: int):
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")


def _warn_truncation(tokenizer, texts: List[str], ids: torch.Tensor) -> None:
    longest = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if longest.shape[-1] >= ids.shape[-1] and not torch.equal(ids, longest[:, : ids.shape[-1]]):
        removed = tokenizer.batch_decode(longest[:, tokenizer.model_max_length - 1 : -1])
        logger.warning(
            "The following part of your input was truncated because CLIP can only handle sequences up to "
            f"{tokenizer.model_max_length} tokens: {removed}"
        )


def encode_texts(
    text_encoder,
    tokenizer,
    texts: List[str],
    device: torch.device,
    clip_skip: Optional[int] = None,
    max_length: Optional[int] = None,
    warn_truncation: bool = True,
) -> torch.Tensor:
    """CLIP embeddings of ``texts``: the last hidden state, or with ``clip_skip=k`` the hidden state ``k`` layers
    before the end passed through the final layer norm."""
    length = tokenizer.model_max_length if max_length is None else max_length
    tokens = _tokenize(tokenizer, texts, length)
    ids = tokens.input_ids
    if warn_truncation:
        _warn_truncation(tokenizer, texts, ids)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    if clip_skip is None:
        return text_encoder(ids.to(device), attention_mask=mask)[0]
    out = text_encoder(ids.to(device), attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states[-(clip_skip + 1)]
    # transformers < 5 nests the layers under `text_model`; 5.x puts them on the model itself
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)


def _check_prompt(prompt: Any, name: str) -> None:
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ValueError(f"`{name}` has to be of type `str` or `list` but is {type(prompt)}")


def encode_prompt(
    components: Any,
    prompt: Union[str, List[str], None],
    device: torch.device,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    negative_prompt: Union[str, List[str], None] = None,
    prompt_embeds: Optional[torch.Tensor] = None,
    negative_prompt_embeds: Optional[torch.Tensor] = None,
    clip_skip: Optional[int] = None,
    lora_scale: Optional[float] = None,
):
    """Text embeddings for ``prompt`` (and the unconditional ones when guidance is on), repeated per image.

    Returns ``(prompt_embeds, negative_prompt_embeds)``; the negative is None without guidance. ``lora_scale``
    scales the text encoder's LoRA layers while encoding (``cross_attention_kwargs["scale"]``).
    """
    from ...models.attention import lora_scale_applied

    with lora_scale_applied([getattr(components, "text_encoder", None)], lora_scale):
        return _encode_prompt(components, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                              negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)


def _encode_prompt(components, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                   prompt_embeds, negative_prompt_embeds, clip_skip):
    text_encoder = components.text_encoder
    tokenizer = components.tokenizer
    original_prompt = prompt
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt_embeds is None:
        if text_encoder is None or tokenizer is None:
            raise ValueError("Encoding `prompt` needs the `text_encoder` and `tokenizer` components; pass "
                             "`prompt_embeds` or load them.")
        prompt_embeds = encode_texts(text_encoder, tokenizer, prompt, device, clip_skip=clip_skip)
    if text_encoder is not None:
        dtype = text_encoder.dtype
    elif getattr(components, "unet", None) is not None:
        dtype = components.unet.dtype
    else:
        dtype = prompt_embeds.dtype
    prompt_embeds = prompt_embeds.to(dtype=dtype, device=device)
    batch = prompt_embeds.shape[0]

    if do_classifier_free_guidance and negative_prompt_embeds is None:
        if negative_prompt is None:
            negatives = [""] * batch
        elif original_prompt is not None and type(original_prompt) is not type(negative_prompt):
            raise TypeError(
                f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                f" {type(original_prompt)}."
            )
        elif isinstance(negative_prompt, str):
            negatives = [negative_prompt]
        else:
            negatives = list(negative_prompt)
        if isinstance(negative_prompt, (str, list)) and len(negatives) != batch:
            raise ValueError(
                f"`negative_prompt`: {negative_prompt} has batch size {len(negatives)}, but `prompt`: {prompt} has "
                f"batch size {batch}. Please make sure that passed `negative_prompt` matches the batch size of "
                "`prompt`."
            )
        if text_encoder is None or tokenizer is None:
            raise ValueError("Encoding `negative_prompt` needs the `text_encoder` and `tokenizer` components.")
        negative_prompt_embeds = encode_texts(
            text_encoder, tokenizer, negatives, device, max_length=prompt_embeds.shape[1], warn_truncation=False
        )
    if do_classifier_free_guidance and negative_prompt_embeds is not None:
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
    elif not do_classifier_free_guidance:
        negative_prompt_embeds = None

    if num_images_per_prompt > 1:
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
    return prompt_embeds, negative_prompt_embeds


class StableDiffusionTextEncoderStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Encode `prompt` (and `negative_prompt` when classifier-free guidance is on) with the CLIP text "
                "encoder; precomputed `prompt_embeds`/`negative_prompt_embeds` are used as given.")

    @property
    def expected_components(self) -> List[ComponentSpec]:
        from ...models.clip_text import CLIPTextModel
        from ...models.clip_tokenizer import CLIPTokenizer

        return [ComponentSpec("text_encoder", CLIPTextModel), ComponentSpec("tokenizer", CLIPTokenizer), guider_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("prompt", description="Prompt(s) to guide the image generation."),
            InputParam("negative_prompt", description="Prompt(s) to guide what not to generate."),
            InputParam("prompt_embeds", type_hint=torch.Tensor, description="Precomputed text embeddings."),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor,
                       description="Precomputed negative text embeddings."),
            InputParam("cross_attention_kwargs", description="Extra attention kwargs (`scale` for LoRA)."),
            InputParam("clip_skip", type_hint=int, description="Number of final CLIP layers to skip."),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS,
                        description="Text embeddings, one row per prompt."),
            OutputParam("negative_prompt_embeds", type_hint=torch.Tensor, kwargs_type=DENOISER_FIELDS,
                        description="Unconditional embeddings (None without guidance)."),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        _check_prompt(bs.prompt, "prompt")
        if bs.prompt is not None and bs.prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `prompt`: {bs.prompt} and `prompt_embeds`: {bs.prompt_embeds}. Please make sure"
                " to only forward one of the two."
            )
        if bs.prompt is None and bs.prompt_embeds is None:
            raise ValueError(
                "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
            )
        if bs.negative_prompt is not None and bs.negative_prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `negative_prompt`: {bs.negative_prompt} and `negative_prompt_embeds`:"
                f" {bs.negative_prompt_embeds}. Please make sure to only forward one of the two."
            )
        guider = components.guider
        do_cfg = guider.num_conditions > 1 and not uses_guidance_embedding(components)
        bs.prompt_embeds, bs.negative_prompt_embeds = encode_prompt(
            components,
            bs.prompt,
            execution_device(components),
            1,
            do_cfg,
            bs.negative_prompt,
            prompt_embeds=bs.prompt_embeds,
            negative_prompt_embeds=bs.negative_prompt_embeds,
            clip_skip=bs.clip_skip,
            lora_scale=(bs.cross_attention_kwargs or {}).get("scale"),
        )
        self.set_block_state(state, bs)
        return components, state


# ------------------------------------------------------------------------------------------------ image encoding
def sample_vae_latents(vae, image: torch.Tensor, generator, sample_mode: str = "sample") -> torch.Tensor:
    """Encode pixels in [-1, 1] and draw latents (one generator per row when ``generator`` is a list), scaled by
    the VAE's ``scaling_factor``."""

    def draw(out, gen):
        if sample_mode == "argmax":
            return out.latent_dist.mode()
        if hasattr(out, "latent_dist"):
            return out.latent_dist.sample(gen)
        if hasattr(out, "latents"):
            return out.latents
        raise AttributeError("Could not access latents of provided encoder_output")

    if isinstance(generator, list):
        latents = torch.cat([draw(vae.encode(image[i : i + 1]), generator[i]) for i in range(image.shape[0])])
    else:
        latents = draw(vae.encode(image), generator)
    return vae.config.scaling_factor * latents


def skip_vae_sample(vae, image: torch.Tensor, generator) -> None:
    """Advance ``generator`` exactly as encoding ``image`` and sampling the latent distribution would, without
    running the VAE (the classic inpaint pipeline encodes a masked image that 4-channel UNets never use; skipping
    the work while drawing the same numbers keeps the random stream, and so the pixels, identical)."""
    from ...utils.torch_utils import randn_tensor

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (vae.config.latent_channels, image.shape[-2] // factor, image.shape[-1] // factor)
    if isinstance(generator, list):
        for i in range(image.shape[0]):
            randn_tensor((1, *shape), generator=generator[i], device=image.device, dtype=image.dtype)
    elif generator is not None:
        randn_tensor((image.shape[0], *shape), generator=generator, device=image.device, dtype=image.dtype)


def check_generators(generator: Any, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
            f" size of {batch_size}. Make sure the batch size matches the length of the generators."
        )


class StableDiffusionVaeEncoderStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Preprocess `image` and encode it into `image_latents` with the VAE (image-to-image)."

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [vae_spec(), image_processor_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("image", required=True, description="Initial image(s): PIL, numpy, tensor or a list."),
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
            InputParam("generator"),
            InputParam("dtype", type_hint=torch.dtype, description="Dtype of the image latents (default: VAE's)."),
            InputParam("preprocess_kwargs", type_hint=dict, description="Extra kwargs for the image processor."),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [OutputParam("image_latents", type_hint=torch.Tensor, description="Scaled VAE latents of `image`.")]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        import PIL.Image

        if not isinstance(bs.image, (torch.Tensor, PIL.Image.Image, list)) and not hasattr(bs.image, "shape"):
            raise ValueError(
                f"`image` has to be of type `torch.Tensor`, `PIL.Image.Image` or list but is {type(bs.image)}"
            )
        device = execution_device(components)
        vae = components.vae
        dtype = bs.dtype if bs.dtype is not None else vae.dtype
        bs.dtype = dtype
        image = components.image_processor.preprocess(
            bs.image, height=bs.height, width=bs.width, **(bs.preprocess_kwargs or {})
        )
        image = image.to(device=device, dtype=dtype)
        if image.shape[1] == vae.config.latent_channels:
            bs.image_latents = image
        else:
            generator = bs.generator
            if isinstance(generator, list):
                # the classic pipeline repeats the images to one row per generator before encoding
                n = len(generator)
                if image.shape[0] < n:
                    if n % image.shape[0]:
                        raise ValueError(
                            f"Cannot duplicate `image` of batch size {image.shape[0]} to effective batch_size {n} "
                        )
                    image = torch.cat([image] * (n // image.shape[0]))
                elif image.shape[0] != n:
                    check_generators(generator, image.shape[0])
            bs.image_latents = sample_vae_latents(vae, image, generator)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionInpaintVaeEncoderStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return (
            "Preprocess `image` and `mask_image` for inpainting: pixel image, binarized mask (1 = repaint) and the "
            "masked image. Latents are encoded by the inpaint prepare-latents step so that the random stream is "
            "consumed in the classic pipeline's order (image, noise, masked image)."
        )

    @property
    def expected_components(self) -> List[ComponentSpec]:
        return [image_processor_spec(), mask_processor_spec()]

    @property
    def inputs(self) -> List[InputParam]:
        return [
            InputParam("image", required=True),
            InputParam("mask_image", required=True),
            InputParam("height", type_hint=int),
            InputParam("width", type_hint=int),
            InputParam("padding_mask_crop", type_hint=int),
            InputParam("masked_image_latents", type_hint=torch.Tensor),
        ]

    @property
    def intermediate_outputs(self) -> List[OutputParam]:
        return [
            OutputParam("init_image", type_hint=torch.Tensor, description="Preprocessed image in [-1, 1]."),
            OutputParam("mask", type_hint=torch.Tensor, description="Binarized pixel mask (B, 1, H, W)."),
            OutputParam("masked_image", type_hint=torch.Tensor, description="Image with the repaint area zeroed."),
            OutputParam("crops_coords", description="Crop region when `padding_mask_crop` is set, else None."),
            OutputParam("height", type_hint=int),
            OutputParam("width", type_hint=int),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        bs = self.get_block_state(state)
        height = bs.height if bs.height is not None else components.default_height
        width = bs.width if bs.width is not None else components.default_width
        if bs.padding_mask_crop is not None:
            bs.crops_coords = components.mask_processor.get_crop_region(
                bs.mask_image, width, height, pad=bs.padding_mask_crop
            )
            resize_mode = "fill"
        else:
            bs.crops_coords = None
            resize_mode = "default"
        init_image = components.image_processor.preprocess(
            bs.image, height=height, width=width, crops_coords=bs.crops_coords, resize_mode=resize_mode
        ).to(dtype=torch.float32)
        mask = components.mask_processor.preprocess(
            bs.mask_image, height=height, width=width, resize_mode=resize_mode, crops_coords=bs.crops_coords
        )
        bs.init_image = init_image
        bs.mask = mask
        is_latents = init_image.shape[1] == getattr(components, "num_channels_latents", 4)
        # an image given as latents has no masked pixel image (the masked-image latents are then not computed)
        bs.masked_image = init_image * (mask < 0.5) if bs.masked_image_latents is None and not is_latents else None
        bs.height, bs.width = height, width
        self.set_block_state(state, bs)
        return components, state
