"""Image pre/post-processing around the VAE (``VaeImageProcessor``), behaving like diffusers'.

``preprocess`` turns PIL images, numpy arrays or tensors (or lists of them) into a float tensor
(B, C, H, W) whose height and width are multiples of ``vae_scale_factor``, normalised to [-1, 1];
``postprocess`` turns a decoded tensor back into PIL images, a numpy array or a tensor in [0, 1].
Masks use ``do_normalize=False, do_binarize=True, do_convert_grayscale=True``.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps
import torch
import torch.nn.functional as F

from .configuration import ConfigMixin, register_to_config
from .utils.image_utils import PIL_INTERPOLATION
from .utils.image_utils import numpy_to_pil as _numpy_to_pil

PipelineImageInput = Union[
    PIL.Image.Image, np.ndarray, torch.Tensor, List[PIL.Image.Image], List[np.ndarray], List[torch.Tensor]
]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
RESIZE_MODES = ("default", "fill", "crop")


def is_valid_image(image: object) -> bool:
    """A PIL image, or a 2-D/3-D numpy array or tensor."""
    if isinstance(image, PIL.Image.Image):
        return True
    return isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3)


def is_valid_image_imagelist(images: object) -> bool:
    """A 4-D batch array/tensor, one valid image, or a list of valid images."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return True
    if is_valid_image(images):
        return True
    return isinstance(images, list) and all(is_valid_image(i) for i in images)


class VaeImageProcessor(ConfigMixin):
    """Converts images to and from the tensors a VAE works on.

    Args:
        do_resize: round height/width down to multiples of ``vae_scale_factor`` (or resize to the requested size).
        vae_scale_factor: spatial down-sampling factor of the VAE.
        vae_latent_channels: tensors with this many channels are taken to be latents and passed through.
        resample: PIL filter name used to resize PIL images (see ``PIL_INTERPOLATION``).
        reducing_gap: passed to ``PIL.Image.resize``.
        do_normalize: map [0, 1] to [-1, 1] on the way in (and back on the way out).
        do_binarize: threshold at 0.5 to {0, 1} (masks).
        do_convert_rgb / do_convert_grayscale: convert PIL inputs to RGB / "L" (mutually exclusive).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        do_resize: bool = True,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        resample: str = "lanczos",
        reducing_gap: Optional[int] = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
    ):
        super().__init__()
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError(
                "`do_convert_rgb` and `do_convert_grayscale` cannot both be True: keep `do_convert_rgb=True` to "
                "get RGB images or `do_convert_grayscale=True` to get grayscale ones."
            )
        if not isinstance(vae_scale_factor, int) or isinstance(vae_scale_factor, bool) or vae_scale_factor < 1:
            raise ValueError(f"`vae_scale_factor` must be a positive int, got {vae_scale_factor!r}")
        if resample not in PIL_INTERPOLATION:
            raise ValueError(f"`resample` must be one of {sorted(PIL_INTERPOLATION)}, got {resample!r}")
        # plain attributes: config lookups are comparatively slow and these are read on every call
        self._scale = vae_scale_factor
        self._resample = PIL_INTERPOLATION[resample]

    # ----------------------------------------------------------------------------------- conversions
    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> List[PIL.Image.Image]:
        """(B, H, W, C) or (H, W, C) floats in [0, 1] -> list of PIL images."""
        return _numpy_to_pil(images)

    @staticmethod
    def pil_to_numpy(images: Union[List[PIL.Image.Image], PIL.Image.Image]) -> np.ndarray:
        """PIL image(s) -> float32 array (B, H, W, C) (or (B, H, W) for "L") in [0, 1]."""
        if not isinstance(images, list):
            images = [images]
        return np.stack([np.asarray(img).astype(np.float32) / 255.0 for img in images], axis=0)

    @staticmethod
    def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
        """(B, H, W, C) array -> (B, C, H, W) tensor; a (B, H, W) array gets one channel."""
        if images.ndim == 3:
            images = images[..., None]
        return torch.from_numpy(images.transpose(0, 3, 1, 2))

    @staticmethod
    def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) tensor -> float32 array (B, H, W, C) on the CPU."""
        return images.cpu().permute(0, 2, 3, 1).float().numpy()

    @staticmethod
    def normalize(images: Union[np.ndarray, torch.Tensor]) -> Union[np.ndarray, torch.Tensor]:
        """[0, 1] -> [-1, 1]."""
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images: Union[np.ndarray, torch.Tensor]) -> Union[np.ndarray, torch.Tensor]:
        """[-1, 1] -> [0, 1], clamped."""
        return (images * 0.5 + 0.5).clamp(0, 1)

    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    @staticmethod
    def blur(image: PIL.Image.Image, blur_factor: int = 4) -> PIL.Image.Image:
        """Gaussian blur with radius ``blur_factor`` (used to soften inpainting masks)."""
        return image.filter(PIL.ImageFilter.GaussianBlur(blur_factor))

    # ----------------------------------------------------------------------------------- geometry
    @staticmethod
    def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> Tuple[int, int, int, int]:
        """Box (x1, y1, x2, y2) around the non-zero part of ``mask_image``, padded by ``pad`` and grown to the
        aspect ratio ``width / height`` while staying inside the image."""
        mask = np.asarray(mask_image.convert("L"))
        h, w = mask.shape
        cols = np.flatnonzero((mask != 0).any(axis=0))
        rows = np.flatnonzero((mask != 0).any(axis=1))
        if cols.size == 0:  # an empty mask: the whole image
            left, right, top, bottom = w, w, h, h
        else:
            left, right = int(cols[0]), int(w - 1 - cols[-1])
            top, bottom = int(rows[0]), int(h - 1 - rows[-1])
        x1, y1 = max(left - pad, 0), max(top - pad, 0)
        x2, y2 = min(w - right + pad, w), min(h - bottom + pad, h)

        target_ratio = width / height
        if (x2 - x1) / (y2 - y1) > target_ratio:
            grow = int((x2 - x1) / target_ratio - (y2 - y1))
            y1, y2 = VaeImageProcessor._grow_span(y1, y2, grow, mask_image.height)
        else:
            grow = int((y2 - y1) * target_ratio - (x2 - x1))
            x1, x2 = VaeImageProcessor._grow_span(x1, x2, grow, mask_image.width)
        return x1, y1, x2, y2

    @staticmethod
    def _grow_span(lo: int, hi: int, grow: int, limit: int) -> Tuple[int, int]:
        lo -= grow // 2
        hi += grow - grow // 2
        if hi >= limit:
            lo -= hi - limit
            hi = limit
        if lo < 0:
            hi -= lo
            lo = 0
        if hi >= limit:
            hi = limit
        return lo, hi

    def _resize_pil(self, image: PIL.Image.Image, width: int, height: int, **kw) -> PIL.Image.Image:
        return image.resize((width, height), resample=self._resample, **kw)

    def _resize_and_fill(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Fit inside (width, height) keeping the aspect ratio, centre, and stretch the border rows/columns of
        the image into the empty bands."""
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
        resized = self._resize_pil(image, src_w, src_h)
        canvas = PIL.Image.new("RGB", (width, height))
        canvas.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        if ratio < src_ratio:
            band = height // 2 - src_h // 2
            if band > 0:
                canvas.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                canvas.paste(
                    resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                    box=(0, band + src_h),
                )
        elif ratio > src_ratio:
            band = width // 2 - src_w // 2
            if band > 0:
                canvas.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                canvas.paste(
                    resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                    box=(band + src_w, 0),
                )
        return canvas

    def _resize_and_crop(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Cover (width, height) keeping the aspect ratio, centre, and crop what sticks out."""
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = self._resize_pil(image, src_w, src_h)
        canvas = PIL.Image.new("RGB", (width, height))
        canvas.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return canvas

    def resize(
        self,
        image: Union[PIL.Image.Image, np.ndarray, torch.Tensor],
        height: int,
        width: int,
        resize_mode: str = "default",
    ) -> Union[PIL.Image.Image, np.ndarray, torch.Tensor]:
        """Resize to (height, width). PIL images use the configured filter; arrays and tensors use nearest
        interpolation. ``resize_mode`` "fill" and "crop" keep the aspect ratio (PIL input only)."""
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")
        if resize_mode != "default" and not isinstance(image, PIL.Image.Image):
            raise ValueError(
                f"`resize_mode={resize_mode!r}` needs a PIL image, got {type(image).__name__}; use 'default' instead"
            )
        if isinstance(image, PIL.Image.Image):
            if resize_mode == "fill":
                return self._resize_and_fill(image, width, height)
            if resize_mode == "crop":
                return self._resize_and_crop(image, width, height)
            return self._resize_pil(image, width, height, reducing_gap=self.config.reducing_gap)
        if isinstance(image, torch.Tensor):
            return F.interpolate(image, size=(height, width))
        if isinstance(image, np.ndarray):
            return self.pt_to_numpy(F.interpolate(self.numpy_to_pt(image), size=(height, width)))
        raise TypeError(f"`image` must be a PIL image, numpy array or torch tensor, got {type(image).__name__}")

    def binarize(self, image: Union[torch.Tensor, np.ndarray]) -> Union[torch.Tensor, np.ndarray]:
        """Set values below 0.5 to 0 and the rest to 1 (in place, like diffusers)."""
        image[image < 0.5] = 0
        image[image >= 0.5] = 1
        return image

    def get_default_height_width(
        self,
        image: Union[PIL.Image.Image, np.ndarray, torch.Tensor],
        height: Optional[int] = None,
        width: Optional[int] = None,
    ) -> Tuple[int, int]:
        """(height, width) of ``image`` (or the given values), rounded down to multiples of ``vae_scale_factor``.

        Arrays are read as (B, H, W[, C]) and tensors as (B, C, H, W)."""
        if isinstance(image, PIL.Image.Image):
            img_h, img_w = image.height, image.width
        elif isinstance(image, torch.Tensor):
            img_h, img_w = image.shape[2], image.shape[3]
        else:
            img_h, img_w = image.shape[1], image.shape[2]
        height = img_h if height is None else height
        width = img_w if width is None else width
        factor = self.config.vae_scale_factor
        return height - height % factor, width - width % factor

    # ----------------------------------------------------------------------------------- main API
    def preprocess(
        self,
        image: PipelineImageInput,
        height: Optional[int] = None,
        width: Optional[int] = None,
        resize_mode: str = "default",
        crops_coords: Optional[Tuple[int, int, int, int]] = None,
    ) -> torch.Tensor:
        """Turn ``image`` into a float tensor (B, C, H, W) ready for the VAE encoder.

        Accepts a PIL image, a numpy array (H, W[, C]) / (B, H, W, C) in [0, 1], a tensor (C, H, W) / (B, C, H, W)
        in [0, 1], or a list of one kind. A tensor with ``vae_latent_channels`` channels is returned unchanged.
        ``height``/``width`` default to the image size rounded down to a multiple of ``vae_scale_factor``.
        """
        cfg = self.config
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a positive int or None, got {value!r}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")

        # a 3-D grayscale batch: add the channel axis
        if cfg.do_convert_grayscale and isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 3:
            if isinstance(image, torch.Tensor):
                image = image.unsqueeze(1)
            elif image.shape[-1] == 1:
                image = image[None, ...]
            else:
                image = image[..., None]

        if isinstance(image, list) and image and isinstance(image[0], (np.ndarray, torch.Tensor)) and image[0].ndim == 4:
            kind = "np.ndarray" if isinstance(image[0], np.ndarray) else "torch.Tensor"
            warnings.warn(
                f"Passing `image` as a list of 4-D {kind} is deprecated; concatenate them along the batch "
                f"dimension and pass one 4-D {kind}.",
                FutureWarning,
                stacklevel=2,
            )
            image = np.concatenate(image, axis=0) if kind == "np.ndarray" else torch.cat(image, dim=0)

        if not is_valid_image_imagelist(image) or (isinstance(image, list) and not image):
            raise ValueError(
                f"`image` has an unsupported format ({_describe(image)}); expected a PIL image, a numpy array, a "
                "torch tensor, or a list of one of these."
            )
        images = image if isinstance(image, list) else [image]
        first = images[0]
        kinds = {_kind(i) for i in images}
        if len(kinds) > 1:
            raise ValueError(f"`image` list mixes kinds of images: {sorted(kinds)}; pass one kind")

        if resize_mode != "default" and not isinstance(first, PIL.Image.Image):
            raise ValueError(
                f"`resize_mode={resize_mode!r}` needs PIL images, got {_kind(first)}; use 'default' instead"
            )
        if isinstance(first, PIL.Image.Image):
            if crops_coords is not None:
                images = [i.crop(crops_coords) for i in images]
            if cfg.do_resize:
                height, width = self.get_default_height_width(images[0], height, width)
                images = [self.resize(i, height, width, resize_mode=resize_mode) for i in images]
            if cfg.do_convert_rgb:
                images = [i.convert("RGB") for i in images]
            elif cfg.do_convert_grayscale:
                images = [i.convert("L") for i in images]
            tensor = self.numpy_to_pt(self.pil_to_numpy(images))
        elif isinstance(first, np.ndarray):
            arr = np.concatenate(images, axis=0) if first.ndim == 4 else np.stack(images, axis=0)
            tensor = self.numpy_to_pt(arr)
            height, width = self.get_default_height_width(tensor, height, width)
            if cfg.do_resize:
                tensor = self.resize(tensor, height, width)
        else:
            tensor = torch.cat(images, dim=0) if first.ndim == 4 else torch.stack(images, dim=0)
            if cfg.do_convert_grayscale and tensor.ndim == 3:
                tensor = tensor.unsqueeze(1)
            if tensor.shape[1] == cfg.vae_latent_channels:
                return tensor
            height, width = self.get_default_height_width(tensor, height, width)
            if cfg.do_resize:
                tensor = self.resize(tensor, height, width)

        do_normalize = cfg.do_normalize
        if do_normalize and tensor.min() < 0:
            warnings.warn(
                "An `image` with values in [-1, 1] is deprecated: images passed as tensors or arrays should be in "
                f"[0, 1]. Got the range [{tensor.min()},{tensor.max()}]; it is used without normalisation.",
                FutureWarning,
                stacklevel=2,
            )
            do_normalize = False
        if do_normalize:
            tensor = self.normalize(tensor)
        if cfg.do_binarize:
            tensor = self.binarize(tensor)
        return tensor

    def _denormalize_conditionally(
        self, images: torch.Tensor, do_denormalize: Optional[Sequence[bool]] = None
    ) -> torch.Tensor:
        if do_denormalize is None:
            return self.denormalize(images) if self.config.do_normalize else images
        if len(do_denormalize) != images.shape[0]:
            raise ValueError(
                f"`do_denormalize` has {len(do_denormalize)} entries but the batch has {images.shape[0]} images"
            )
        return torch.stack([self.denormalize(img) if flag else img for img, flag in zip(images, do_denormalize)])

    def postprocess(
        self,
        image: torch.Tensor,
        output_type: str = "pil",
        do_denormalize: Optional[List[bool]] = None,
    ) -> Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]:
        """Convert a decoded (B, C, H, W) tensor to ``output_type``: "pil" (list of images), "np" (B, H, W, C
        float32 array in [0, 1]), "pt" (tensor in [0, 1]) or "latent" (returned unchanged)."""
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"`image` must be a torch.Tensor shaped (B, C, H, W), got {type(image).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        if output_type == "latent":
            return image
        image = self._denormalize_conditionally(image, do_denormalize)
        if output_type == "pt":
            return image
        arr = self.pt_to_numpy(image)
        if output_type == "np":
            return arr
        return self.numpy_to_pil(arr)

    def apply_overlay(
        self,
        mask: PIL.Image.Image,
        init_image: PIL.Image.Image,
        image: PIL.Image.Image,
        crop_coords: Optional[Tuple[int, int, int, int]] = None,
    ) -> PIL.Image.Image:
        """Paste the unmasked part of ``init_image`` over ``image`` (placed at ``crop_coords`` if given)."""
        width, height = init_image.width, init_image.height
        kept = PIL.Image.new("RGBa", (width, height))
        kept.paste(init_image.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask.convert("L")))
        kept = kept.convert("RGBA")
        if crop_coords is not None:
            x, y, x2, y2 = crop_coords
            base = PIL.Image.new("RGBA", (width, height))
            base.paste(self.resize(image, height=y2 - y, width=x2 - x, resize_mode="crop"), (x, y))
            image = base.convert("RGB")
        image = image.convert("RGBA")
        image.alpha_composite(kept)
        return image.convert("RGB")


def _kind(image: object) -> str:
    if isinstance(image, PIL.Image.Image):
        return "PIL.Image"
    return type(image).__name__


def _describe(image: object) -> str:
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__} with shape {tuple(image.shape)}"
    if isinstance(image, list):
        return f"list of {sorted({type(i).__name__ for i in image}) or 'nothing'}"
    return type(image).__name__
