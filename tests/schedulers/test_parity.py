"""Full-loop parity with diffusers for every scheduler over a grid of the options SD/SDXL users set.

Each case builds the same scheduler in both libraries, runs ``set_timesteps`` and a whole denoising loop with a
deterministic fake model (and the same seed for stochastic samplers), then compares ``timesteps``, ``sigmas``
and the final sample (see ``_parity.py`` for the tolerances).
"""
from __future__ import annotations

import itertools

import pytest

from ._parity import check_parity

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
AYS_SIGMAS = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]

# (class, config, steps, set_timesteps kwargs, step kwargs, seed)
GRID = [
    ("EulerDiscreteScheduler", dict(SD, timestep_spacing="leading", steps_offset=1), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(SD, prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(SD, prediction_type="sample", use_karras_sigmas=True), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(use_exponential_sigmas=True, final_sigmas_type="sigma_min"), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(use_beta_sigmas=True), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(SD, interpolation_type="log_linear"), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                    prediction_type="v_prediction"), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(SD, timestep_type="continuous", prediction_type="v_prediction"), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True, sigma_min=0.1,
                                    sigma_max=10.0), 10, None, None, None),
    ("EulerDiscreteScheduler", dict(SD), 10, None, dict(s_churn=0.5), 0),
    ("EulerDiscreteScheduler", dict(SD), None, dict(timesteps=[999, 700, 500, 300, 100]), None, None),
    ("EulerDiscreteScheduler", dict(SD), None, dict(sigmas=AYS_SIGMAS), None, None),
    ("EulerAncestralDiscreteScheduler", dict(SD, timestep_spacing="leading", steps_offset=1), 10, None, None, 0),
    ("EulerAncestralDiscreteScheduler", dict(SD, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                             timestep_spacing="trailing"), 10, None, None, 1),
    ("DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 10, None, None, None),
    ("DDIMScheduler", dict(SD, prediction_type="v_prediction", timestep_spacing="trailing",
                           rescale_betas_zero_snr=True), 10, None, None, None),
    ("DDIMScheduler", dict(prediction_type="sample", thresholding=True, timestep_spacing="linspace"), 10, None, None, None),
    ("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2"), 10, None, dict(eta=1.0, use_clipped_model_output=True), 0),
    ("DDPMScheduler", dict(SD, clip_sample=False), 10, None, None, 0),
    ("DDPMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, 0),
    ("DDPMScheduler", dict(variance_type="fixed_large", beta_schedule="sigmoid"), 10, None, None, 0),
    ("DDPMScheduler", dict(variance_type="fixed_small_log", thresholding=True), None,
     dict(timesteps=[900, 600, 301, 100, 0]), None, 0),
    ("PNDMScheduler", dict(SD, skip_prk_steps=True, steps_offset=1), 10, None, None, None),
    ("PNDMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, None),
    ("PNDMScheduler", dict(SD, timestep_spacing="linspace", set_alpha_to_one=True), 10, None, None, None),
    ("LMSDiscreteScheduler", dict(SD), 10, None, None, None),
    ("LMSDiscreteScheduler", dict(SD, prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, None),
    ("LMSDiscreteScheduler", dict(SD, use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1), 10, None, None, None),
    ("LMSDiscreteScheduler", dict(use_exponential_sigmas=True, prediction_type="sample"), 10, None, None, None),
    ("HeunDiscreteScheduler", dict(SD), 10, None, None, None),
    ("HeunDiscreteScheduler", dict(SD, prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, None),
    ("HeunDiscreteScheduler", dict(SD, use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1), 10, None, None, None),
    ("HeunDiscreteScheduler", dict(SD, clip_sample=True, prediction_type="sample", use_beta_sigmas=True), 10, None, None, None),
    ("HeunDiscreteScheduler", dict(SD), None, dict(timesteps=[999, 800, 500, 200, 50]), None, None),
    ("KDPM2DiscreteScheduler", dict(SD), 10, None, None, None),
    ("KDPM2DiscreteScheduler", dict(SD, prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, None),
    ("KDPM2DiscreteScheduler", dict(SD, use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1), 10, None, None, None),
    ("KDPM2DiscreteScheduler", dict(use_exponential_sigmas=True), 10, None, None, None),
    ("KDPM2AncestralDiscreteScheduler", dict(SD), 10, None, None, 0),
    ("KDPM2AncestralDiscreteScheduler", dict(SD, prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, 1),
    ("KDPM2AncestralDiscreteScheduler", dict(SD, use_karras_sigmas=True), 10, None, None, 2),
    ("DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), 10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(SD, use_lu_lambdas=True), 10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(SD, use_exponential_sigmas=True, euler_at_final=True), 10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(SD, use_beta_sigmas=True, lower_order_final=False), 10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing",
                                         rescale_betas_zero_snr=True), 10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(prediction_type="sample", thresholding=True, lambda_min_clipped=-5.1,
                                         timestep_spacing="leading", steps_offset=1), 10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
     10, None, None, None),
    ("DPMSolverMultistepScheduler", dict(SD), None, dict(timesteps=[999, 850, 736, 645, 545, 455, 343, 233, 124, 24]),
     None, None),
    ("DPMSolverSinglestepScheduler", dict(SD, use_karras_sigmas=True), 10, None, None, None),
    ("DPMSolverSinglestepScheduler", dict(prediction_type="v_prediction", lambda_min_clipped=-5.1), 10, None, None, None),
    ("DPMSolverSinglestepScheduler", dict(SD, use_exponential_sigmas=True, solver_order=3, thresholding=True,
                                          prediction_type="sample"), 10, None, None, None),
    ("DEISMultistepScheduler", dict(SD, solver_order=3, lower_order_final=False), 20, None, None, None),
    ("DEISMultistepScheduler", dict(SD, use_karras_sigmas=True), 10, None, None, None),
    ("DEISMultistepScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing"), 10, None, None, None),
    ("DEISMultistepScheduler", dict(prediction_type="sample", thresholding=True, timestep_spacing="leading",
                                    steps_offset=1), 10, None, None, None),
    ("DEISMultistepScheduler", dict(SD, use_beta_sigmas=True, solver_order=1), 10, None, None, None),
    ("UniPCMultistepScheduler", dict(SD, use_karras_sigmas=True, final_sigmas_type="sigma_min"), 10, None, None, None),
    ("UniPCMultistepScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing",
                                     rescale_betas_zero_snr=True), 10, None, None, None),
    ("UniPCMultistepScheduler", dict(prediction_type="sample", thresholding=True, timestep_spacing="leading",
                                     steps_offset=1, disable_corrector=[0, 3]), 10, None, None, None),
    ("UniPCMultistepScheduler", dict(SD, use_exponential_sigmas=True, solver_order=3), 10, None, None, None),
    ("UniPCMultistepScheduler", dict(SD, use_beta_sigmas=True), 10, None, None, None),
    ("UniPCMultistepScheduler", dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
     10, None, None, None),
    ("LCMScheduler", dict(), 4, None, None, 0),
    ("LCMScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True),
     6, None, None, 0),
    ("LCMScheduler", dict(thresholding=True, prediction_type="sample"), 8, None, None, 0),
    ("LCMScheduler", dict(original_inference_steps=100), None, dict(timesteps=[999, 759, 499, 259]), None, 0),
    ("LCMScheduler", dict(), None, dict(num_inference_steps=4, strength=0.5), None, 0),
    ("TCDScheduler", dict(), 4, None, None, 0),
    ("TCDScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing"), 6, None, dict(eta=0.0), 0),
    ("TCDScheduler", dict(prediction_type="sample"), 8, dict(original_inference_steps=100), dict(eta=1.0), 0),
    ("EDMEulerScheduler", dict(), 10, None, None, None),
    ("EDMEulerScheduler", dict(sigma_schedule="exponential", prediction_type="v_prediction",
                               final_sigmas_type="sigma_min"), 10, None, None, None),
    ("EDMEulerScheduler", dict(), 10, None, dict(s_churn=1.0), 0),
]

# DPM-Solver multistep: every algorithm x order x solver type
for _algo, _order, _st in itertools.product(
        ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"], [1, 2, 3], ["midpoint", "heun"]):
    if _algo == "sde-dpmsolver" and _order == 3:
        continue  # not defined (diffusers has no such update)
    _cfg = dict(SD, algorithm_type=_algo, solver_order=_order, solver_type=_st)
    if _algo in ("dpmsolver", "sde-dpmsolver"):
        _cfg["final_sigmas_type"] = "sigma_min"
    GRID.append(("DPMSolverMultistepScheduler", _cfg, 10 if _order < 3 else 16, None, None,
                 0 if _algo.startswith("sde") else None))

# DPM-Solver singlestep: algorithms x orders (heun for order 3, lower_order_final both ways)
for _algo, _order, _lof in itertools.product(["dpmsolver++", "sde-dpmsolver++", "dpmsolver"], [1, 2, 3], [False, True]):
    _cfg = dict(SD, algorithm_type=_algo, solver_order=_order, lower_order_final=_lof,
                solver_type="heun" if _order == 3 and _lof else "midpoint")
    if _algo == "dpmsolver":
        _cfg["final_sigmas_type"] = "sigma_min"
    GRID.append(("DPMSolverSinglestepScheduler", _cfg, 12, None, None, 0 if _algo.startswith("sde") else None))

# UniPC and DEIS: solver orders / types
for _order, _st, _px in itertools.product([1, 2, 3], ["bh1", "bh2"], [True, False]):
    _cfg = dict(SD, solver_order=_order, solver_type=_st, predict_x0=_px)
    if not (_px and _st == "bh2"):
        _cfg["final_sigmas_type"] = "sigma_min"  # with a final sigma of 0 these variants are undefined (NaN)
    GRID.append(("UniPCMultistepScheduler", _cfg, 12, None, None, None))
for _order in (1, 2, 3):
    GRID.append(("DEISMultistepScheduler", dict(SD, solver_order=_order), 12, None, None, None))


@pytest.mark.parametrize("name,config,steps,set_kw,step_kw,seed", GRID,
                         ids=[f"{g[0].replace('Scheduler', '')}-{i}" for i, g in enumerate(GRID)])
def test_full_loop_matches_diffusers(name, config, steps, set_kw, step_kw, seed):
    third_order_sde_singlestep = (name == "DPMSolverSinglestepScheduler" and config.get("solver_order") == 3
                                  and config.get("algorithm_type") == "sde-dpmsolver++")
    # against diffusers 0.42 these two differ from the first step by one float32 rounding (1e-7 relative) that
    # grows over the loop to 1.15e-6 / 1.19e-6; every single step stays within STEP_TOL
    long_rounding_chain = (name == "PNDMScheduler" and config.get("prediction_type") == "v_prediction") or (
        name == "DEISMultistepScheduler" and config.get("solver_order") == 3 and steps == 20)
    check_parity(name, config, steps, set_kw, step_kw, seed,
                 tol=2e-6 if third_order_sde_singlestep or long_rounding_chain else 1e-6)


def test_grid_covers_every_scheduler():
    import diffblocks.schedulers as table

    classes = {n for n in table._EXPORTS if n.endswith("Scheduler")}
    assert classes == {g[0] for g in GRID}
