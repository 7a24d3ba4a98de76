"""Classic Stable Diffusion 1.x/2.x pipelines (lazy)."""
from ..._lazy import lazy_exports

_EXPORTS = {
    "StableDiffusionPipeline": ".pipeline_stable_diffusion",
    "StableDiffusionImg2ImgPipeline": ".pipeline_stable_diffusion_img2img",
    "StableDiffusionInpaintPipeline": ".pipeline_stable_diffusion_inpaint",
    "StableDiffusionPipelineOutput": ".pipeline_output",
    "StableDiffusionSafetyChecker": ".safety_checker",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
