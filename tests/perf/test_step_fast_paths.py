"""The per-step fast paths (scale divisor tensors, Euler step plan, guider combine planned at prepare time) give
exactly the numbers of the plain paths they shortcut."""
from __future__ import annotations

import pytest
import torch

from diffblocks import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LMSDiscreteScheduler
from diffblocks.guiders import ClassifierFreeGuidance, GuiderOutput

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, LMSDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_scale_model_input_equals_division_by_the_python_float(cls, dtype):
    sched = cls(**SD)
    sched.set_timesteps(6)
    x = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 9).to(dtype)
    sigmas = sched.sigmas.tolist()
    for k, t in enumerate(sched.timesteps):
        sched._step_index = k
        got = sched.scale_model_input(x, t)
        assert got.dtype == dtype and got.shape == x.shape
        assert torch.equal(got, x / ((sigmas[k] ** 2 + 1) ** 0.5)), (k, dtype)
    assert sched.is_scale_input_called
    cached = sched.__dict__.get("_scale_divisors", {})
    assert len(cached) == (len(sched.timesteps) if dtype == torch.float32 else 0)
    assert all(d.dtype == torch.float32 and d.ndim == 0 for d in cached.values())
    assert cls._scale_divisors == {}  # the class-level default is never written to


def test_scale_divisor_cache_is_bounded():
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(4)
    x = torch.ones(1, 1, 2, 2)
    sched.scale_model_input(x, sched.timesteps[0])
    sched._scale_divisors.update({float(k) + 0.5: torch.tensor(1.0) for k in range(5000)})
    sched._step_index = 1
    out = sched.scale_model_input(x, sched.timesteps[1])
    assert len(sched._scale_divisors) == 1
    s1 = sched.sigmas[1].item()
    assert torch.equal(out, x / ((s1**2 + 1) ** 0.5))


def _plain_step(sched, eps, t, x):
    """The same scheduler with the fast plan disabled (the slow path's numbers)."""
    sched._fast_plan = None
    out = EulerDiscreteScheduler.step(sched, eps, t, x, return_dict=False)
    return out


@pytest.mark.parametrize("config", [dict(SD), dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing"),
                                    dict(SD, use_karras_sigmas=True)])
def test_euler_fast_step_equals_the_plain_step(config):
    fast, plain = EulerDiscreteScheduler(**config), EulerDiscreteScheduler(**config)
    fast.set_timesteps(9)
    plain.set_timesteps(9)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=gen) * fast.init_noise_sigma
    class CountingList(list):  # the slow path reads the sigmas from this list; the plan never does
        reads = 0

        def __getitem__(self, index):
            CountingList.reads += 1
            return super().__getitem__(index)

    fast._sigma_values = CountingList(fast._sigma_values)
    used_plan = 0
    for k, t in enumerate(fast.timesteps):
        eps = torch.randn(2, 4, 8, 8, generator=gen)
        fast.scale_model_input(x, t)
        plain.scale_model_input(x, t)
        CountingList.reads = 0
        prev_f, x0_f = fast.step(eps, t, x, return_dict=False)
        used_plan += CountingList.reads == 0
        prev_p, x0_p = _plain_step(plain, eps, t, x)
        assert torch.equal(prev_f, prev_p) and torch.equal(x0_f, x0_p), k
        assert fast.step_index == plain.step_index == k + 1
        x = prev_f
    assert used_plan == len(fast.timesteps) - 1  # every step after the first took the plan


def test_euler_plan_is_rebuilt_for_a_new_schedule_and_skipped_for_churn_and_int_timesteps():
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(4)
    x, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    t0 = sched.timesteps[0]
    sched.scale_model_input(x, t0)
    sched.step(eps, t0, x)
    plan = sched._fast_plan
    assert plan is not None and len(plan[1]) == 4
    sched.set_timesteps(6)
    assert sched._fast_plan is None
    sched.scale_model_input(x, sched.timesteps[0])
    sched.step(eps, sched.timesteps[0], x)
    assert len(sched._fast_plan[1]) == 6
    t1 = sched.timesteps[1]
    sched.scale_model_input(x, t1)
    with pytest.raises(ValueError, match="integer indices"):
        sched.step(eps, 1, x)
    with pytest.raises(ValueError, match="integer indices"):
        sched.step(eps, torch.tensor(1), x)
    churned = sched.step(torch.zeros_like(x), t1, torch.zeros_like(x), s_churn=1.0,
                         generator=torch.Generator().manual_seed(0), return_dict=False)[0]
    assert churned.abs().sum().item() > 0  # churn noise was drawn: the plan was not used
    # a non-float32 sample takes the plain path and keeps the output dtype
    sched.set_timesteps(3)
    half = torch.ones(1, 1, 2, 2, dtype=torch.float16)
    sched.scale_model_input(half, sched.timesteps[0])
    assert sched.step(half, sched.timesteps[0], half).prev_sample.dtype == torch.float16


def test_euler_plan_tracks_the_config_dict():
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(3)
    x, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    sched.scale_model_input(x, sched.timesteps[0])
    sched.step(eps, sched.timesteps[0], x)
    sched.register_to_config(prediction_type="v_prediction")
    t = sched.timesteps[1]
    sched.scale_model_input(x, t)
    prev = sched.step(eps, t, x).prev_sample
    s, s_next = sched.sigmas[1].item(), sched.sigmas[2].item()
    x0 = eps * (-s / (s * s + 1) ** 0.5) + x / (s * s + 1)
    expected = x + ((x - x0) / s) * (s_next - s)
    torch.testing.assert_close(prev, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale,rescale,original", [(7.5, 0.0, False), (3.0, 0.7, False), (2.0, 0.0, True)])
def test_guider_call_equals_forward(scale, rescale, original):
    g = ClassifierFreeGuidance(guidance_scale=scale, guidance_rescale=rescale, use_original_formulation=original)
    g.set_state(0, 10, 999)
    x = torch.randn(2, 4, 8, 8)
    cond, uncond = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    (batch,) = g.prepare_inputs({"sample": (x, x), "encoder_hidden_states": (cond, uncond)})
    assert torch.equal(batch.sample, torch.cat([x, x]))
    assert torch.equal(batch.encoder_hidden_states, torch.cat([uncond, cond]))
    assert ("_cfg_weight" in batch.__dict__) == (rescale == 0.0 and not original)
    assert "_cfg_weight" not in repr(batch)
    batch.noise_pred = torch.randn(4, 4, 8, 8)
    out = g([batch])
    assert isinstance(out, GuiderOutput) and out._fields == ("pred", "pred_cond", "pred_uncond")
    ref = g.forward(batch.noise_pred[2:], batch.noise_pred[:2])
    for got, want in zip(out, ref):
        assert torch.equal(got, want)
    if not original:
        u, c = batch.noise_pred[:2], batch.noise_pred[2:]
        textbook = u + scale * (c - u)
        if rescale == 0.0:
            torch.testing.assert_close(out.pred, textbook, rtol=1e-5, atol=1e-5)


def test_guider_merged_embeddings_cached_per_run_and_latents_concatenated_every_step():
    g = ClassifierFreeGuidance(guidance_scale=5.0)
    cond, uncond = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    g.set_state(0, 2, 1)
    first = g.prepare_inputs({"sample": (torch.ones(1, 2), torch.ones(1, 2)), "emb": (cond, uncond), "n": 3})[0]
    x = torch.full((1, 2), 2.0)
    g.set_state(1, 2, 0)
    second = g.prepare_inputs({"sample": (x, x), "emb": (cond, uncond), "n": 3})[0]
    assert second.emb is first.emb  # concatenated once
    assert torch.equal(second.sample, torch.cat([x, x])) and second.n == 3
    g.reset_cache()
    third = g.prepare_inputs({"sample": (x, x), "emb": (cond, uncond)})[0]
    assert third.emb is not first.emb and torch.equal(third.emb, first.emb)
    with pytest.raises(ValueError, match="'emb': the unconditional value is None"):
        g.prepare_inputs({"emb": (cond, None)})
    # guidance off: one conditional batch, combine returns the conditional prediction
    off = ClassifierFreeGuidance(guidance_scale=1.0)
    (b,) = off.prepare_inputs({"sample": (x, x), "emb": (cond, uncond)})
    assert b.identifier == "pred_cond" and b.emb is cond and "_cfg_weight" not in b.__dict__
    b.noise_pred = torch.randn(1, 2)
    assert off([b]).pred is b.noise_pred
