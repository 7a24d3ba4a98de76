"""User-facing helpers: ``load_image``, ``make_image_grid``, ``export_to_gif``, ``randn_tensor``, ... (lazy)."""
from .._lazy import lazy_exports

_EXPORTS = {
    "load_image": ".image_utils",
    "make_image_grid": ".image_utils",
    "export_to_gif": ".image_utils",
    "pt_to_pil": ".image_utils",
    "numpy_to_pil": ".image_utils",
    "randn_tensor": ".torch_utils",
    "PIL_INTERPOLATION": ".image_utils",
    "BaseOutput": "..models.outputs",
    "get_logger": ".logging",
}
# ``from diffblocks.utils import logging`` gives the submodule (diffusers scripts use it for set_verbosity_*)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
