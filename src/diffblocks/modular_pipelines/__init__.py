"""Modular pipelines: blocks, states, ModularPipeline and ComponentsManager (lazy)."""
from .._lazy import lazy_exports

_EXPORTS = {
    "ModularPipeline": ".modular_pipeline",
    "ModularPipelineBlocks": ".modular_pipeline",
    "SequentialPipelineBlocks": ".modular_pipeline",
    "LoopSequentialPipelineBlocks": ".modular_pipeline",
    "AutoPipelineBlocks": ".modular_pipeline",
    "ConditionalPipelineBlocks": ".modular_pipeline",
    "PipelineState": ".modular_pipeline",
    "BlockState": ".modular_pipeline",
    "PipelineBlock": ".modular_pipeline",
    "register_modular_pipeline": ".modular_pipeline",
    "MODULAR_PIPELINE_MAPPING": ".modular_pipeline",
    "InputParam": ".modular_pipeline_utils",
    "OutputParam": ".modular_pipeline_utils",
    "ComponentSpec": ".modular_pipeline_utils",
    "ConfigSpec": ".modular_pipeline_utils",
    "InsertableDict": ".modular_pipeline_utils",
    "ComponentsManager": ".components_manager",
    "StableDiffusionXLModularPipeline": ".stable_diffusion_xl",
    "StableDiffusionXLAutoBlocks": ".stable_diffusion_xl",
    "StableDiffusionModularPipeline": ".stable_diffusion",
    "StableDiffusionAutoBlocks": ".stable_diffusion",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
