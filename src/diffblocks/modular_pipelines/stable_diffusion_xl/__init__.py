"""Stable Diffusion XL as modular blocks: leaf blocks by stage, the auto blocks, the presets (``ALL_BLOCKS``)
and ``StableDiffusionXLModularPipeline``."""
from .before_denoise import (
    StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep,
    StableDiffusionXLImg2ImgPrepareLatentsStep,
    StableDiffusionXLImg2ImgSetTimestepsStep,
    StableDiffusionXLInpaintPrepareLatentsStep,
    StableDiffusionXLInpaintSetTimestepsStep,
    StableDiffusionXLInputStep,
    StableDiffusionXLPrepareAdditionalConditioningStep,
    StableDiffusionXLPrepareLatentsStep,
    StableDiffusionXLSetTimestepsStep,
)
from .controlnet import (
    StableDiffusionXLControlNetDenoiseStep,
    StableDiffusionXLControlNetInputStep,
    StableDiffusionXLControlNetLoopDenoiser,
    StableDiffusionXLInpaintControlNetDenoiseStep,
)
from .decoders import StableDiffusionXLDecodeStep, StableDiffusionXLInpaintDecodeStep, StableDiffusionXLInpaintOverlayMaskStep
from .denoise import (
    StableDiffusionXLDenoiseLoopWrapper,
    StableDiffusionXLDenoiseStep,
    StableDiffusionXLInpaintDenoiseStep,
    StableDiffusionXLInpaintLoopAfterDenoiser,
    StableDiffusionXLInpaintLoopBeforeDenoiser,
    StableDiffusionXLLoopAfterDenoiser,
    StableDiffusionXLLoopBeforeDenoiser,
    StableDiffusionXLLoopDenoiser,
)
from .encoders import (
    StableDiffusionXLInpaintVaeEncoderStep,
    StableDiffusionXLTextEncoderStep,
    StableDiffusionXLVaeEncoderStep,
    encode_prompt_xl,
)
from .ip_adapter import IP_ADAPTER_BLOCKS, StableDiffusionXLAutoIPAdapterStep, StableDiffusionXLIPAdapterStep
from .modular_blocks import (
    ALL_BLOCKS,
    AUTO_BLOCKS,
    CONTROLNET_BLOCKS,
    CONTROLNET_IMAGE2IMAGE_BLOCKS,
    CONTROLNET_INPAINT_BLOCKS,
    IMAGE2IMAGE_BLOCKS,
    INPAINT_BLOCKS,
    TEXT2IMAGE_BLOCKS,
    StableDiffusionXLAutoBeforeDenoiseStep,
    StableDiffusionXLAutoBlocks,
    StableDiffusionXLAutoControlNetDenoiseStep,
    StableDiffusionXLAutoControlNetInputStep,
    StableDiffusionXLAutoDecodeStep,
    StableDiffusionXLAutoDenoiseStep,
    StableDiffusionXLAutoVaeEncoderStep,
    StableDiffusionXLBeforeDenoiseStep,
    StableDiffusionXLCoreDenoiseStep,
    StableDiffusionXLImg2ImgBeforeDenoiseStep,
    StableDiffusionXLInpaintBeforeDenoiseStep,
)
from .modular_pipeline import StableDiffusionXLModularPipeline
