"""Bad input gets a clear error naming the argument."""
from __future__ import annotations

import pytest
import torch

import diffblocks.schedulers as ours

ALL = sorted(n for n in ours._EXPORTS if n.endswith("Scheduler"))
WITH_BETAS = [n for n in ALL if n != "EDMEulerScheduler"]
SPACED = [n for n in WITH_BETAS if n != "DPMSolverSinglestepScheduler"]
# schedulers whose __init__ builds no default inference schedule: step() needs set_timesteps first
NEED_SET = ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
            "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
            "UniPCMultistepScheduler", "LCMScheduler", "TCDScheduler"]


@pytest.mark.parametrize("name", WITH_BETAS)
@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_num_inference_steps_out_of_range(name, steps):
    s = getattr(ours, name)()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(steps)


@pytest.mark.parametrize("name", WITH_BETAS)
def test_num_inference_steps_must_be_int(name):
    with pytest.raises(TypeError, match="num_inference_steps"):
        getattr(ours, name)().set_timesteps(2.5)


@pytest.mark.parametrize("name", WITH_BETAS)
def test_unknown_beta_schedule(name):
    with pytest.raises(ValueError, match="beta_schedule") as info:
        getattr(ours, name)(beta_schedule="cubic")
    assert "cubic" in str(info.value) and "scaled_linear" in str(info.value)
    assert isinstance(info.value, NotImplementedError)  # diffusers raises NotImplementedError here


@pytest.mark.parametrize("name", SPACED)
def test_unknown_timestep_spacing(name):
    with pytest.raises(ValueError, match="'linspace', 'leading' or 'trailing'") as info:
        getattr(ours, name)(timestep_spacing="sideways")
    assert "timestep_spacing" in str(info.value)


@pytest.mark.parametrize("name", ALL)
def test_unknown_prediction_type(name):
    with pytest.raises(ValueError, match="prediction_type") as info:
        getattr(ours, name)(prediction_type="noise")
    assert "noise" in str(info.value)


@pytest.mark.parametrize("name", NEED_SET)
def test_step_before_set_timesteps(name):
    s = getattr(ours, name)()
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="you need to run 'set_timesteps'"):
        s.step(x, torch.tensor(999.0) if "Euler" in name else 999, x)


def test_timesteps_and_sigmas_together():
    with pytest.raises(ValueError, match="Only one of `timesteps` or `sigmas`"):
        ours.EulerDiscreteScheduler().set_timesteps(timesteps=[999, 500], sigmas=[14.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="Can only pass one of"):
        ours.EulerDiscreteScheduler().set_timesteps(10, timesteps=[999, 500])
    with pytest.raises(ValueError, match="Must pass exactly one"):
        ours.EulerDiscreteScheduler().set_timesteps()
    with pytest.raises(ValueError, match="Can only pass one of"):
        ours.DPMSolverMultistepScheduler().set_timesteps(10, timesteps=[999, 500])


@pytest.mark.parametrize("name,kwarg", [("DDIMScheduler", "sigmas"), ("PNDMScheduler", "timesteps"),
                                        ("DPMSolverMultistepScheduler", "sigmas"),
                                        ("EulerAncestralDiscreteScheduler", "timesteps")])
def test_unsupported_set_timesteps_argument(name, kwarg):
    with pytest.raises(ValueError, match=f"does not support `{kwarg}`"):
        getattr(ours, name)().set_timesteps(**{kwarg: [999, 500, 0]})


def test_custom_timesteps_conflict_with_sigma_ramps():
    for name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler"):
        with pytest.raises(ValueError, match="use_karras_sigmas"):
            getattr(ours, name)(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500, 100])


def test_only_one_sigma_ramp():
    with pytest.raises(ValueError, match="Only one of `config.use_beta_sigmas`"):
        ours.EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)


def test_integer_timestep_refused_by_sigma_samplers():
    s = ours.EulerDiscreteScheduler()
    s.set_timesteps(5)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="Passing integer indices"):
        s.step(x, 3, x)
    with pytest.raises(ValueError, match="Passing integer indices"):
        s.step(x, torch.tensor(3), x)


def test_timestep_not_in_schedule():
    s = ours.EulerDiscreteScheduler()
    s.set_timesteps(5)
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="not one of this scheduler's `timesteps`"):
        s.scale_model_input(x, torch.tensor(123.5))


def test_custom_timesteps_validated():
    with pytest.raises(ValueError, match="descending"):
        ours.DDPMScheduler().set_timesteps(timesteps=[1, 500])
    with pytest.raises(ValueError, match="must start before"):
        ours.DDPMScheduler().set_timesteps(timesteps=[1000, 500])
    with pytest.raises(ValueError, match="descending"):
        ours.LCMScheduler().set_timesteps(timesteps=[259, 999])


def test_dpm_solver_options():
    with pytest.raises(ValueError, match="final_sigmas_type"):
        ours.DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="algorithm_type"):
        ours.DPMSolverMultistepScheduler(algorithm_type="magic")
    with pytest.raises(ValueError, match="solver_type"):
        ours.DPMSolverMultistepScheduler(solver_type="rk4")
    with pytest.raises(ValueError, match="solver_order"):
        ours.DPMSolverMultistepScheduler(solver_order=4)
    with pytest.raises(ValueError, match="solver_type"):
        ours.UniPCMultistepScheduler(solver_type="rk4")
    with pytest.raises(ValueError, match="`mu` must be passed"):
        ours.UniPCMultistepScheduler(use_dynamic_shifting=True, use_flow_sigmas=True).set_timesteps(5)


def test_other_option_errors():
    with pytest.raises(ValueError, match="variance_type"):
        ours.DDPMScheduler(variance_type="huge")
    with pytest.raises(ValueError, match="interpolation_type"):
        ours.EulerDiscreteScheduler(interpolation_type="cubic")
    with pytest.raises(ValueError, match="final_sigmas_type"):
        ours.EulerDiscreteScheduler(final_sigmas_type="one")
    with pytest.raises(ValueError, match="sigma_schedule"):
        ours.EDMEulerScheduler(sigma_schedule="linear")
    with pytest.raises(ValueError, match="eta"):
        s = ours.TCDScheduler()
        s.set_timesteps(4)
        x = torch.zeros(1, 4, 2, 2)
        s.step(x, s.timesteps[0], x, eta=1.5)
    with pytest.raises(ValueError, match="is smaller than `num_inference_steps`: 60"):
        ours.LCMScheduler().set_timesteps(60)
    with pytest.raises(ValueError, match="begin_index"):
        ours.EulerDiscreteScheduler().set_begin_index(-1)


def test_undefined_solver_combination_refused_early():
    # diffusers only fails inside step() for this combination; we refuse it when the scheduler is built
    with pytest.raises(ValueError, match="sde-dpmsolver"):
        ours.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3, final_sigmas_type="sigma_min")
