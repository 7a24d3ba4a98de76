"""Classic pipelines and AutoPipelines (lazy)."""
from .._lazy import lazy_exports

_EXPORTS = {
    "DiffusionPipeline": ".pipeline_utils",
    "ImagePipelineOutput": ".pipeline_utils",
    "AutoPipelineForText2Image": ".auto_pipeline",
    "AutoPipelineForImage2Image": ".auto_pipeline",
    "AutoPipelineForInpainting": ".auto_pipeline",
    "StableDiffusionPipeline": ".stable_diffusion",
    "StableDiffusionImg2ImgPipeline": ".stable_diffusion",
    "StableDiffusionInpaintPipeline": ".stable_diffusion",
    "StableDiffusionPipelineOutput": ".stable_diffusion",
    "StableDiffusionSafetyChecker": ".stable_diffusion",
    "StableDiffusionXLPipeline": ".stable_diffusion_xl",
    "StableDiffusionXLImg2ImgPipeline": ".stable_diffusion_xl",
    "StableDiffusionXLInpaintPipeline": ".stable_diffusion_xl",
    "StableDiffusionXLPipelineOutput": ".stable_diffusion_xl",
    "StableDiffusionControlNetPipeline": ".controlnet",
    "StableDiffusionControlNetImg2ImgPipeline": ".controlnet",
    "StableDiffusionControlNetInpaintPipeline": ".controlnet",
    "StableDiffusionXLControlNetPipeline": ".controlnet",
    "StableDiffusionXLControlNetImg2ImgPipeline": ".controlnet",
    "StableDiffusionXLControlNetInpaintPipeline": ".controlnet",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
