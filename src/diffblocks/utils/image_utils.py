"""Image helpers for users and pipelines: load, convert, grid, GIF export."""
from __future__ import annotations

import io
import os
import tempfile
import urllib.request
from typing import Callable, List, Optional, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

#: resample filter names (as used by ``VaeImageProcessor(resample=...)``) -> PIL filters
PIL_INTERPOLATION = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}

#: seconds before an image download gives up
REQUEST_TIMEOUT = float(os.environ.get("DIFFBLOCKS_REQUEST_TIMEOUT", "60"))


def _fetch_url(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "diffblocks"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310 - http(s) only
        return response.read()


def load_image(
    image: Union[str, os.PathLike, PIL.Image.Image],
    convert_method: Optional[Callable[[PIL.Image.Image], PIL.Image.Image]] = None,
) -> PIL.Image.Image:
    """Open ``image`` (an ``http(s)://`` URL, a local file path or a PIL image) as a PIL image.

    The EXIF orientation is applied; the result is converted to RGB unless ``convert_method`` is given, in
    which case ``convert_method(image)`` is returned instead.
    """
    if convert_method is not None and not callable(convert_method):
        raise TypeError(f"`convert_method` must be a callable or None, got {type(convert_method).__name__}")
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            image = PIL.Image.open(io.BytesIO(_fetch_url(image)))
        elif os.path.isfile(image):
            image = PIL.Image.open(image)
        else:
            raise ValueError(
                f"Incorrect path or URL for `image`: {image!r} is not an existing file and URLs must start with "
                "`http://` or `https://`."
            )
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(
            f"Incorrect format for `image`: got {type(image).__name__}; expected a URL, a local path or a PIL image."
        )
    image = PIL.ImageOps.exif_transpose(image)
    if convert_method is not None:
        return convert_method(image)
    return image.convert("RGB")


def numpy_to_pil(images: np.ndarray) -> List[PIL.Image.Image]:
    """Turn a float array in [0, 1] shaped (H, W, C) or (B, H, W, C) into a list of PIL images.

    Values are scaled by 255 and rounded; a single channel gives mode "L" images.
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(f"`images` must be a numpy array, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None, ...]
    if images.ndim != 4:
        raise ValueError(f"`images` must have 3 or 4 dimensions (H, W, C) / (B, H, W, C), got shape {images.shape}")
    as_uint8 = (images * 255).round().astype("uint8")
    if as_uint8.shape[-1] == 1:
        return [PIL.Image.fromarray(item[..., 0], mode="L") for item in as_uint8]
    return [PIL.Image.fromarray(item) for item in as_uint8]


def pt_to_pil(images: "torch.Tensor") -> List[PIL.Image.Image]:  # noqa: F821 - torch imported lazily
    """Turn a (B, C, H, W) tensor in [-1, 1] into a list of PIL images."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`images` must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"`images` must be shaped (B, C, H, W), got shape {tuple(images.shape)}")
    arr = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return numpy_to_pil(arr)


def make_image_grid(
    images: List[PIL.Image.Image], rows: int, cols: int, resize: Optional[int] = None
) -> PIL.Image.Image:
    """Paste ``rows * cols`` images (row-major, all the size of the first) into one RGB grid image.

    ``resize`` first resizes every image to ``resize x resize``.
    """
    if not isinstance(images, (list, tuple)) or not all(isinstance(i, PIL.Image.Image) for i in images):
        raise TypeError("`images` must be a list of PIL images")
    for name, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if len(images) != rows * cols:
        raise ValueError(f"`images` has {len(images)} images but rows * cols = {rows} * {cols} = {rows * cols}")
    if resize is not None:
        images = [img.resize((resize, resize)) for img in images]
    width, height = images[0].size
    grid = PIL.Image.new("RGB", size=(cols * width, rows * height))
    for index, img in enumerate(images):
        grid.paste(img, box=((index % cols) * width, (index // cols) * height))
    return grid


def export_to_gif(image: List[PIL.Image.Image], output_gif_path: Optional[str] = None, fps: int = 10) -> str:
    """Write the frames ``image`` as a looping GIF (``fps`` frames per second) and return its path.

    Without ``output_gif_path`` a temporary ``.gif`` path is used.
    """
    if not isinstance(image, (list, tuple)) or not image or not all(isinstance(i, PIL.Image.Image) for i in image):
        raise TypeError("`image` must be a non-empty list of PIL images")
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"`fps` must be a positive number, got {fps!r}")
    if output_gif_path is None:
        handle, output_gif_path = tempfile.mkstemp(suffix=".gif")
        os.close(handle)
    image[0].save(
        output_gif_path,
        save_all=True,
        append_images=list(image[1:]),
        optimize=False,
        duration=int(1000 // fps),
        loop=0,
    )
    return output_gif_path
