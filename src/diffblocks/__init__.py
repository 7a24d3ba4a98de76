"""diffblocks: composable diffusion pipelines with the diffusers API.

Top-level names are imported lazily (PEP 562): ``import diffblocks`` loads nothing heavy, and
``diffblocks.StableDiffusionPipeline`` imports only what that class needs.
"""
from ._lazy import lazy_exports

__version__ = "0.1.0"

_SCHEDULERS = [
    "SchedulerMixin", "KarrasDiffusionSchedulers", "AysSchedules",
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler", "LCMScheduler", "TCDScheduler", "EDMEulerScheduler",
]

_EXPORTS = {
    # foundation
    "ConfigMixin": ".configuration",
    "FrozenDict": ".configuration",
    "register_to_config": ".configuration",
    "ModelMixin": ".models",
    "AutoModel": ".models",
    # models
    "UNet2DConditionModel": ".models",
    "AutoencoderKL": ".models",
    "ControlNetModel": ".models",
    "MultiControlNetModel": ".models",
    # image processing
    "VaeImageProcessor": ".image_processor",
    # modular
    "ModularPipeline": ".modular_pipelines",
    "ModularPipelineBlocks": ".modular_pipelines",
    "SequentialPipelineBlocks": ".modular_pipelines",
    "LoopSequentialPipelineBlocks": ".modular_pipelines",
    "AutoPipelineBlocks": ".modular_pipelines",
    "ConditionalPipelineBlocks": ".modular_pipelines",
    "PipelineState": ".modular_pipelines",
    "BlockState": ".modular_pipelines",
    "InputParam": ".modular_pipelines",
    "OutputParam": ".modular_pipelines",
    "ComponentSpec": ".modular_pipelines",
    "ConfigSpec": ".modular_pipelines",
    "InsertableDict": ".modular_pipelines",
    "ComponentsManager": ".modular_pipelines",
    "StableDiffusionXLModularPipeline": ".modular_pipelines",
    "StableDiffusionXLAutoBlocks": ".modular_pipelines",
    "StableDiffusionModularPipeline": ".modular_pipelines",
    "StableDiffusionAutoBlocks": ".modular_pipelines",
    "BaseGuidance": ".guiders",
    "ClassifierFreeGuidance": ".guiders",
    # classic pipelines
    "DiffusionPipeline": ".pipelines",
    "ImagePipelineOutput": ".pipelines",
    "AutoPipelineForText2Image": ".pipelines",
    "AutoPipelineForImage2Image": ".pipelines",
    "AutoPipelineForInpainting": ".pipelines",
    "StableDiffusionPipeline": ".pipelines",
    "StableDiffusionImg2ImgPipeline": ".pipelines",
    "StableDiffusionInpaintPipeline": ".pipelines",
    "StableDiffusionXLPipeline": ".pipelines",
    "StableDiffusionXLImg2ImgPipeline": ".pipelines",
    "StableDiffusionXLInpaintPipeline": ".pipelines",
    "StableDiffusionControlNetPipeline": ".pipelines",
    "StableDiffusionControlNetImg2ImgPipeline": ".pipelines",
    "StableDiffusionControlNetInpaintPipeline": ".pipelines",
    "StableDiffusionXLControlNetPipeline": ".pipelines",
    "StableDiffusionXLControlNetImg2ImgPipeline": ".pipelines",
    "StableDiffusionXLControlNetInpaintPipeline": ".pipelines",
    "StableDiffusionSafetyChecker": ".pipelines",
    "StableDiffusionPipelineOutput": ".pipelines",
    "StableDiffusionXLPipelineOutput": ".pipelines",
}
_EXPORTS.update({name: ".schedulers" for name in _SCHEDULERS})

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
