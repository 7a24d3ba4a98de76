"""Classic Stable Diffusion XL pipelines (lazy)."""
from ..._lazy import lazy_exports

_EXPORTS = {
    "StableDiffusionXLPipeline": ".pipeline_stable_diffusion_xl",
    "StableDiffusionXLImg2ImgPipeline": ".pipeline_stable_diffusion_xl_img2img",
    "StableDiffusionXLInpaintPipeline": ".pipeline_stable_diffusion_xl_inpaint",
    "StableDiffusionXLPipelineOutput": ".pipeline_output",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
