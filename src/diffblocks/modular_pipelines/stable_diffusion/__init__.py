"""Stable Diffusion 1.x/2.x as modular blocks: leaf blocks by stage, presets (``ALL_BLOCKS``), auto blocks and
``StableDiffusionModularPipeline``."""
from .before_denoise import (
    StableDiffusionImg2ImgPrepareLatentsStep,
    StableDiffusionImg2ImgSetTimestepsStep,
    StableDiffusionInpaintPrepareLatentsStep,
    StableDiffusionInpaintSetTimestepsStep,
    StableDiffusionInputStep,
    StableDiffusionPrepareLatentsStep,
    StableDiffusionSetTimestepsStep,
    retrieve_timesteps,
)
from .controlnet import (
    StableDiffusionControlNetDenoiseStep,
    StableDiffusionControlNetInputStep,
    StableDiffusionControlNetLoopDenoiser,
    StableDiffusionInpaintControlNetDenoiseStep,
)
from .decoders import StableDiffusionDecodeStep, StableDiffusionInpaintOverlayMaskStep
from .denoise import (
    StableDiffusionDenoiseLoopWrapper,
    StableDiffusionDenoiseStep,
    StableDiffusionInpaintDenoiseStep,
    StableDiffusionInpaintLoopAfterDenoiser,
    StableDiffusionInpaintLoopBeforeDenoiser,
    StableDiffusionLoopAfterDenoiser,
    StableDiffusionLoopBeforeDenoiser,
    StableDiffusionLoopDenoiser,
)
from .encoders import (
    StableDiffusionInpaintVaeEncoderStep,
    StableDiffusionTextEncoderStep,
    StableDiffusionVaeEncoderStep,
    encode_prompt,
)
from .ip_adapter import IP_ADAPTER_BLOCKS, StableDiffusionAutoIPAdapterStep, StableDiffusionIPAdapterStep
from .modular_blocks import (
    ALL_BLOCKS,
    AUTO_BLOCKS,
    CONTROLNET_BLOCKS,
    CONTROLNET_IMAGE2IMAGE_BLOCKS,
    CONTROLNET_INPAINT_BLOCKS,
    IMAGE2IMAGE_BLOCKS,
    INPAINT_BLOCKS,
    TEXT2IMAGE_BLOCKS,
    StableDiffusionAutoBeforeDenoiseStep,
    StableDiffusionAutoBlocks,
    StableDiffusionAutoControlNetDenoiseStep,
    StableDiffusionAutoControlNetInputStep,
    StableDiffusionAutoDecodeStep,
    StableDiffusionAutoDenoiseStep,
    StableDiffusionAutoVaeEncoderStep,
    StableDiffusionBeforeDenoiseStep,
    StableDiffusionCoreDenoiseStep,
    StableDiffusionImg2ImgBeforeDenoiseStep,
    StableDiffusionInpaintBeforeDenoiseStep,
    StableDiffusionInpaintDecodeStep,
)
from .modular_pipeline import StableDiffusionModularPipeline
