"""Classic ControlNet pipelines for Stable Diffusion 1.x/2.x and SDXL (lazy)."""
from ..._lazy import lazy_exports

_EXPORTS = {
    "StableDiffusionControlNetPipeline": ".pipeline_controlnet",
    "StableDiffusionControlNetImg2ImgPipeline": ".pipeline_controlnet_img2img",
    "StableDiffusionControlNetInpaintPipeline": ".pipeline_controlnet_inpaint",
    "StableDiffusionXLControlNetPipeline": ".pipeline_controlnet_sd_xl",
    "StableDiffusionXLControlNetImg2ImgPipeline": ".pipeline_controlnet_sd_xl_img2img",
    "StableDiffusionXLControlNetInpaintPipeline": ".pipeline_controlnet_inpaint_sd_xl",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
