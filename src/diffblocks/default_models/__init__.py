"""Models shipped inside the diffblocks package, usable offline by name.

``diffblocks/tiny-digits`` is a small Stable Diffusion 1.x-layout text-to-image model trained on scikit-learn's
handwritten digits (32x32 RGB images of the digits 0-9, prompts like "a handwritten digit seven" or "7"). It is
the default model of ``diffblocks generate`` and loads with
``StableDiffusionPipeline.from_pretrained("diffblocks/tiny-digits")``. See ``tiny-digits/README.md``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Union

__all__ = ["DEFAULT_MODEL_NAME", "BUILTIN_MODELS", "default_model_path", "resolve_builtin"]

DEFAULT_MODEL_NAME = "diffblocks/tiny-digits"

# Builtin name -> folder under this package.
BUILTIN_MODELS: Dict[str, str] = {
    DEFAULT_MODEL_NAME: "tiny-digits",
}

_HERE = os.path.dirname(os.path.abspath(__file__))


def _folder(name: str) -> str:
    path = os.path.join(_HERE, BUILTIN_MODELS[name])
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"The builtin model {name!r} should be in {path}, but that folder has no model_index.json; "
            "the diffblocks installation is incomplete (reinstall the package)."
        )
    return path


def default_model_path() -> str:
    """Local folder of the default model (``DEFAULT_MODEL_NAME``), a standard StableDiffusionPipeline folder."""
    return _folder(DEFAULT_MODEL_NAME)


def resolve_builtin(name_or_path: Union[str, "os.PathLike[str]"]) -> Optional[str]:
    """Return the shipped folder for a builtin model name, or ``None`` when ``name_or_path`` is not one.

    An existing local directory of the same name wins (``None`` is returned so the caller loads that directory),
    as a local path wins over a Hub repo id. Names compare case-insensitively, like Hub repo ids.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"`name_or_path` must be a str or os.PathLike (a model name or a folder), got {type(name_or_path).__name__}"
        )
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return None
    key = name.strip().rstrip("/").lower()
    for builtin in BUILTIN_MODELS:
        if key == builtin.lower():
            return _folder(builtin)
    return None
