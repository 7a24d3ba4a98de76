"""Behaviour of the Euler fast path (fused update, no per-step tensor creation) against the reference formula."""
from __future__ import annotations

import pytest
import torch

from diffblocks import EulerDiscreteScheduler

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _reference_step(sample, eps, sigma, sigma_next):
    x0 = sample - sigma * eps
    return sample + ((sample - x0) / sigma) * (sigma_next - sigma), x0


@pytest.mark.parametrize("config", [dict(SD), dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing")])
def test_every_step_matches_the_reference_formula(config):
    sched = EulerDiscreteScheduler(**config)
    sched.set_timesteps(8)
    sigmas = sched.sigmas.tolist()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen) * sched.init_noise_sigma
    worst = 0.0
    for k, t in enumerate(sched.timesteps):
        eps = torch.randn(1, 4, 8, 8, generator=gen)
        scaled = sched.scale_model_input(x, t)
        # a multiplication by the float32 reciprocal: within one float32 rounding of the division
        torch.testing.assert_close(scaled, x / (sigmas[k] ** 2 + 1) ** 0.5, rtol=2.5e-7, atol=0)
        prev, x0 = sched.step(eps, t, x, return_dict=False)
        ref_prev, ref_x0 = _reference_step(x, eps, sigmas[k], sigmas[k + 1])
        scale = ref_prev.abs().max().item()
        worst = max(worst, (prev - ref_prev).abs().max().item() / scale)
        assert (x0 - ref_x0).abs().max().item() <= 1e-6 * ref_x0.abs().max().item()
        assert sched.step_index == k + 1
        x = prev
    assert worst <= 1e-6, worst


def test_zero_snr_first_step_keeps_reference_rounding():
    """A huge sigma drop (4096 -> ~14) takes the unfused branch: bit-identical to the reference order."""
    sched = EulerDiscreteScheduler(**SD, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    sched.set_timesteps(4)
    s0, s1 = sched.sigmas[0].item(), sched.sigmas[1].item()
    assert s0 > 1000 and s1 < 100
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8) * s0
    eps = torch.linspace(1, -1, 64).reshape(1, 1, 8, 8)
    sched.scale_model_input(x, sched.timesteps[0])
    prev, _ = sched.step(eps, sched.timesteps[0], x, return_dict=False)
    ref, _ = _reference_step(x, eps, s0, s1)
    assert torch.equal(prev, ref)


def test_half_precision_output_and_float32_internal_maths():
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(3)
    t = sched.timesteps[0]
    x = torch.ones(1, 4, 4, 4, dtype=torch.float16)
    eps = torch.full((1, 4, 4, 4), 0.5, dtype=torch.float16)
    sched.scale_model_input(x, t)
    out = sched.step(eps, t, x)
    assert out.prev_sample.dtype == torch.float16
    assert out.pred_original_sample.dtype == torch.float32
    s0, s1 = sched.sigmas[0].item(), sched.sigmas[1].item()
    expected = 1.0 + 0.5 * (s1 - s0)
    assert abs(out.prev_sample.float()[0, 0, 0, 0].item() - expected) < 1e-2


def test_integer_timestep_refused_and_churn_draws_noise():
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(3)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="integer indices"):
        sched.step(x, 5, x)
    with pytest.raises(ValueError, match="integer indices"):
        sched.step(x, torch.tensor(5), x)
    t = sched.timesteps[0]
    sched.scale_model_input(x, t)
    quiet = sched.step(torch.zeros_like(x), t, x, return_dict=False)[0]
    assert torch.equal(quiet, x)  # zero prediction from a zero sample stays put without churn
    sched.set_timesteps(3)
    sched.scale_model_input(x, t)
    churned = sched.step(torch.zeros_like(x), t, x, s_churn=1.0, generator=torch.Generator().manual_seed(0),
                         return_dict=False)[0]
    assert churned.abs().sum().item() > 0


@pytest.mark.parametrize("config", [dict(SD), dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing")])
def test_ancestral_steps_match_the_reference_formula(config):
    from diffblocks import EulerAncestralDiscreteScheduler

    sched = EulerAncestralDiscreteScheduler(**config)
    sched.set_timesteps(6)
    sigmas = sched.sigmas.tolist()
    data = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=data) * sched.init_noise_sigma
    mine_gen, ref_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for k, t in enumerate(sched.timesteps):
        eps = torch.randn(1, 4, 8, 8, generator=data)
        sched.scale_model_input(x, t)
        prev = sched.step(eps, t, x, generator=mine_gen, return_dict=False)[0]
        s, s_to = sigmas[k], sigmas[k + 1]
        up = (s_to**2 * (s**2 - s_to**2) / s**2) ** 0.5
        down = (s_to**2 - up**2) ** 0.5
        x0 = x - s * eps
        ref = x + ((x - x0) / s) * (down - s) + torch.randn(x.shape, generator=ref_gen) * up
        err = (prev - ref).abs().max().item() / ref.abs().max().item()
        assert err <= 1e-6, (k, err)
        x = prev
