"""Noise schedulers, one module per algorithm (lazy)."""
from .._lazy import lazy_exports

_EXPORTS = {
    "SchedulerMixin": ".scheduling_utils",
    "SchedulerOutput": ".scheduling_utils",
    "KarrasDiffusionSchedulers": ".scheduling_utils",
    "AysSchedules": ".scheduling_utils",
    "DDPMScheduler": ".scheduling_ddpm",
    "DDIMScheduler": ".scheduling_ddim",
    "PNDMScheduler": ".scheduling_pndm",
    "LMSDiscreteScheduler": ".scheduling_lms_discrete",
    "EulerDiscreteScheduler": ".scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": ".scheduling_euler_ancestral_discrete",
    "HeunDiscreteScheduler": ".scheduling_heun_discrete",
    "KDPM2DiscreteScheduler": ".scheduling_k_dpm_2_discrete",
    "KDPM2AncestralDiscreteScheduler": ".scheduling_k_dpm_2_ancestral_discrete",
    "DPMSolverMultistepScheduler": ".scheduling_dpmsolver_multistep",
    "DPMSolverSinglestepScheduler": ".scheduling_dpmsolver_singlestep",
    "DEISMultistepScheduler": ".scheduling_deis_multistep",
    "UniPCMultistepScheduler": ".scheduling_unipc_multistep",
    "LCMScheduler": ".scheduling_lcm",
    "TCDScheduler": ".scheduling_tcd",
    "EDMEulerScheduler": ".scheduling_edm_euler",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
