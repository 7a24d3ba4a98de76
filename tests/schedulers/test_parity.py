"""Full-loop parity with diffusers for every scheduler over a grid of the options SD/SDXL users set."""
from __future__ import annotations

import pytest

from ._parity import check_parity

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

GRID = [
    # (class, config, steps, set_timesteps kwargs, step kwargs, seed)
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
    ("EulerDiscreteScheduler", dict(SD), None,
     dict(sigmas=[14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]), None, None),
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
]


@pytest.mark.parametrize("name,config,steps,set_kw,step_kw,seed", GRID,
                         ids=[f"{g[0]}-{i}" for i, g in enumerate(GRID)])
def test_full_loop_matches_diffusers(name, config, steps, set_kw, step_kw, seed):
    check_parity(name, config, steps, set_kw, step_kw, seed)
