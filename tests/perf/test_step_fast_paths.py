"""The per-step fast paths (scale divisor tables, Euler step plan and ``next_sample``, the guider's ``run``) give
exactly the numbers of the plain paths they shortcut."""
from __future__ import annotations

import pytest
import torch

from diffblocks import (
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
)
from diffblocks.guiders import ClassifierFreeGuidance, GuiderBatch, GuiderOutput

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, LMSDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_scale_model_input_within_one_rounding_of_division_by_the_python_float(cls, dtype):
    sched = cls(**SD)
    sched.set_timesteps(6)
    x = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 9).to(dtype)
    sigmas = sched.sigmas.tolist()
    for k, t in enumerate(sched.timesteps):
        sched._step_index = k
        got = sched.scale_model_input(x, t)
        assert got.dtype == dtype and got.shape == x.shape
        want = x / ((sigmas[k] ** 2 + 1) ** 0.5)
        if dtype == torch.float32:  # multiplied by the float32 reciprocal
            torch.testing.assert_close(got, want, rtol=2.5e-7, atol=0)
            assert torch.equal(got, x * torch.tensor(1.0 / (sigmas[k] ** 2 + 1) ** 0.5, dtype=torch.float32))
        else:  # the plain division
            assert torch.equal(got, want), (k, dtype)
    assert sched.is_scale_input_called
    table = sched.__dict__.get("_scale_table")
    if dtype == torch.float32:  # one float32 0-d factor per sigma, built once per schedule
        assert table[0] is sched._sigma_values and len(table[1]) == len(sigmas)
        assert all(d.dtype == torch.float32 and d.ndim == 0 for d in table[1])
        sched.set_timesteps(3)  # a new schedule gets a new table
        sched._step_index = 1
        torch.testing.assert_close(sched.scale_model_input(x, sched.timesteps[1]),
                                   x / ((sched.sigmas[1].item() ** 2 + 1) ** 0.5), rtol=2.5e-7, atol=0)
        assert sched._scale_table[0] is sched._sigma_values and len(sched._scale_table[1]) == 4
    else:
        assert table is None
    assert cls._scale_table is None and cls._scale_divisors == {}  # class-level defaults never written to


def test_scale_model_input_by_in_between_sigmas_uses_the_bounded_value_cache():
    sched = KDPM2DiscreteScheduler(**SD)
    sched.set_timesteps(4)
    x = torch.randn(1, 4, 2, 2)
    for t in sched.timesteps[:3]:
        got = sched.scale_model_input(x, t)
        sigma = sched._current_sigma_for_scaling()
        assert torch.equal(got, x / ((sigma**2 + 1) ** 0.5))
        sched.step(torch.randn(1, 4, 2, 2), t, x)
    assert sched.__dict__.get("_scale_table") is None and sched._scale_divisors


def test_scale_divisor_cache_is_bounded():
    sched = KDPM2DiscreteScheduler(**SD)
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
    batches = g.prepare_inputs({"sample": (x, x), "encoder_hidden_states": (cond, uncond)})
    assert [b.identifier for b in batches] == ["pred_cond", "pred_uncond"]
    assert batches[0].encoder_hidden_states is cond and batches[1].encoder_hidden_states is uncond
    pred_c, pred_u = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    batches[0].noise_pred, batches[1].noise_pred = pred_c, pred_u
    out = g(batches)
    assert isinstance(out, GuiderOutput) and out._fields == ("pred", "pred_cond", "pred_uncond")
    for got, want in zip(out, g.forward(pred_c, pred_u)):
        assert torch.equal(got, want)
    # a merged batch (unconditional rows first) is combined to the same numbers
    merged = GuiderBatch("pred_merged", {})
    merged.noise_pred = torch.cat([pred_u, pred_c])
    assert torch.equal(g([merged]).pred, out.pred)
    if not original:
        textbook = pred_u + scale * (pred_c - pred_u)
        if rescale == 0.0:
            torch.testing.assert_close(out.pred, textbook, rtol=1e-5, atol=1e-5)


def test_guider_prepare_inputs_follows_the_contract():
    g = ClassifierFreeGuidance(guidance_scale=5.0)
    cond, uncond = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    x = torch.full((1, 2), 2.0)
    g.set_state(0, 2, 1)
    batches = g.prepare_inputs({"sample": (x, x), "emb": (cond, uncond), "n": 3})
    assert [(b.identifier, b.emb, b.sample, b.n) for b in batches] == [("pred_cond", cond, x, 3),
                                                                       ("pred_uncond", uncond, x, 3)]
    assert g.is_conditional is False and g.num_conditions == 2
    # guidance off: one conditional batch, combine returns the conditional prediction
    off = ClassifierFreeGuidance(guidance_scale=1.0)
    (b,) = off.prepare_inputs({"sample": (x, x), "emb": (cond, uncond)})
    assert b.identifier == "pred_cond" and b.emb is cond
    b.noise_pred = torch.randn(1, 2)
    assert off([b]).pred is b.noise_pred


# ------------------------------------------------------------------------------------------ scheduler.next_sample
@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, LMSDiscreteScheduler,
                                 KDPM2DiscreteScheduler])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_next_sample_walks_the_same_path_as_step(cls, prediction_type):
    runs = []
    for use_next in (False, True):
        sched = cls(**SD, prediction_type=prediction_type)
        sched.set_timesteps(7)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 8, 8, generator=gen) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = torch.sin(sched.scale_model_input(x, t) * 3.0)
            kwargs = {"generator": torch.Generator().manual_seed(int(t))} if cls is EulerAncestralDiscreteScheduler else {}
            if use_next:
                x = sched.next_sample(eps, t, x, **kwargs)
            else:
                x = sched.step(eps, t, x, return_dict=False, **kwargs)[0]
        runs.append((x, sched.step_index))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_euler_next_sample_falls_back_to_step_for_churn_half_precision_and_integer_timesteps():
    sched = EulerDiscreteScheduler(**SD)
    sched.set_timesteps(5)
    x = torch.randn(1, 4, 4, 4)
    t0 = sched.timesteps[0]
    sched.scale_model_input(x, t0)
    first = sched.next_sample(torch.ones_like(x), t0, x)  # builds the plan
    ref = EulerDiscreteScheduler(**SD)
    ref.set_timesteps(5)
    ref.scale_model_input(x, t0)
    assert torch.equal(first, ref.step(torch.ones_like(x), t0, x).prev_sample)
    # churn draws noise: the generator reaches step()
    churned = [sched.__class__(**SD) for _ in range(2)]
    outs = []
    for s in churned:
        s.set_timesteps(5)
        s.scale_model_input(x, t0)
        outs.append(s.next_sample(torch.ones_like(x), t0, x, s_churn=1.0, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], first)
    # float16 goes through step (which upcasts), with the same result
    h = x.half()
    a, b = EulerDiscreteScheduler(**SD), EulerDiscreteScheduler(**SD)
    for s in (a, b):
        s.set_timesteps(5)
        s.scale_model_input(h, t0)
    assert torch.equal(a.next_sample(h, t0, h), b.step(h, t0, h).prev_sample)
    with pytest.raises(ValueError, match="[Ii]nteger"):
        sched.next_sample(torch.ones_like(x), torch.tensor(1), x)
    assert sched.step_index == 1  # a rejected call does not advance


# ------------------------------------------------------------------------------------------ guider.run
def _rowwise_predict(calls):
    def predict(values, identifier):
        calls.append(identifier)
        x, e = values["sample"], values["emb"]  # a row-wise model: batching does not change any row's output
        return torch.tanh(x * e.mean(dim=(1, 2), keepdim=True)[..., None] + 0.5)

    return predict


def _run_both(guider_kwargs, inputs, step=0, steps=10):
    from diffblocks.guiders import drive_guider

    fast_calls, slow_calls = [], []
    fast = ClassifierFreeGuidance(**guider_kwargs).run(_rowwise_predict(fast_calls), inputs, step, steps, 500)
    slow = drive_guider(ClassifierFreeGuidance(**guider_kwargs), _rowwise_predict(slow_calls), inputs, step, steps,
                        500)
    return fast, slow, fast_calls, slow_calls


@pytest.mark.parametrize("kwargs", [
    dict(guidance_scale=7.5), dict(guidance_scale=3.0, guidance_rescale=0.7), dict(guidance_scale=2.0, use_original_formulation=True),
    dict(guidance_scale=5.0, batch_conditions=False), dict(guidance_scale=1.0), dict(guidance_scale=6.0, enabled=False),
    dict(guidance_scale=6.0, start=0.5), dict(guidance_scale=6.0, stop=0.2),
])
def test_guider_run_gives_the_contract_path_numbers(kwargs):
    x = torch.randn(2, 4, 3, 3)
    cond, uncond = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    fast, slow, fast_calls, slow_calls = _run_both(kwargs, {"sample": (x, x), "emb": (cond, uncond)}, step=3)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)  # one call at batch 4 vs two at batch 2
    g = ClassifierFreeGuidance(**kwargs)
    g.set_state(3, 10)
    if g.num_conditions == 1:
        assert fast_calls == slow_calls == ["pred_cond"]
    else:
        assert slow_calls == ["pred_cond", "pred_uncond"]
        assert fast_calls == (["pred_merged"] if g.batch_conditions else ["pred_cond", "pred_uncond"])


def test_guider_run_concatenates_embeddings_once_and_keeps_the_step_state():
    g = ClassifierFreeGuidance(guidance_scale=4.0)
    cond, uncond = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    seen = []

    def predict(values, identifier):
        seen.append(values["emb"])
        return torch.cat([values["sample"], values["sample"] + 1])[:2]

    for i in range(3):
        x = torch.full((1, 2), float(i))
        g.run(predict, {"sample": (x, x), "emb": (cond, uncond), "shared": 7}, i, 3, 10 - i)
        assert (g._step, g._num_inference_steps, g._timestep) == (i, 3, 10 - i)
    assert seen[0] is seen[1] is seen[2] and torch.equal(seen[0], torch.cat([uncond, cond]))
    with pytest.raises(ValueError, match="'emb': the unconditional value is None"):
        g.run(predict, {"sample": (x, x), "emb": (cond, None)}, 0, 3)


def test_guider_run_honours_overridden_contract_methods_and_duck_typed_guiders():
    from diffblocks.guiders import drive_guider

    events = []

    class Hooked(ClassifierFreeGuidance):
        def prepare_models(self, model):
            events.append(("prepare", model))

        def cleanup_models(self, model):
            events.append(("cleanup", model))

    x = torch.randn(1, 2)
    model = torch.nn.Identity()
    out = Hooked(guidance_scale=3.0).run(lambda v, i: v["sample"] * 2, {"sample": (x, x)}, 0, 1, None, model)
    assert events == [("prepare", model), ("cleanup", model)] * 2  # the contract: a conditional, an unconditional call
    assert torch.equal(out, x * 2)  # both branches equal: uncond + 3 * 0

    class DuckGuider:  # diffusers' guider interface only, no run()
        def set_state(self, step, num_inference_steps, timestep=None):
            self.state = (step, num_inference_steps, timestep)

        def prepare_inputs(self, data):
            from diffblocks.guiders import GuiderBatch

            return [GuiderBatch("pred_cond", {k: v[0] if isinstance(v, tuple) else v for k, v in data.items()})]

        def prepare_models(self, model):
            events.append("duck-prepare")

        def cleanup_models(self, model):
            pass

        def __call__(self, batches):
            return (batches[0].noise_pred + 1,)

    duck = DuckGuider()
    got = drive_guider(duck, lambda v, i: v["sample"] * 3, {"sample": (x, x)}, 2, 5, 9, model)
    assert torch.equal(got, x * 3 + 1) and duck.state == (2, 5, 9) and events[-1] == "duck-prepare"


def test_guider_settings_changed_after_construction_reach_run():
    from diffblocks.guiders import drive_guider

    x = torch.randn(1, 2)
    cond, uncond = torch.randn(1, 3), torch.randn(1, 3)
    seen = []

    def predict(values, identifier):  # row-wise: x + sum(embedding) per row
        seen.append(identifier)
        return values["sample"] + values["emb"].sum(-1, keepdim=True)

    c, u = x + cond.sum(-1, keepdim=True), x + uncond.sum(-1, keepdim=True)
    g = ClassifierFreeGuidance(guidance_scale=5.0)
    inputs = {"sample": (x, x), "emb": (cond, uncond)}
    assert torch.equal(g.run(predict, inputs, 0, 4), u.add(c.add(u, alpha=-1.0), alpha=5.0))
    assert seen[-1] == "pred_merged"
    g.guidance_scale = 1.0  # guidance off: the conditional batch only
    assert torch.equal(g.run(predict, inputs, 1, 4), c) and seen[-1] == "pred_cond"
    g.guidance_scale = 3.0
    g.disable()
    g.run(predict, inputs, 2, 4)
    assert seen[-1] == "pred_cond"
    g.enable()
    g.batch_conditions = False
    g.run(predict, inputs, 3, 4)
    assert seen[-2:] == ["pred_cond", "pred_uncond"]
    g.batch_conditions = True
    g.guidance_rescale = 0.5
    out = g.run(predict, inputs, 3, 4)
    assert seen[-1] == "pred_merged"
    g2 = ClassifierFreeGuidance(guidance_scale=3.0, guidance_rescale=0.5)
    torch.testing.assert_close(out, drive_guider(g2, predict, inputs, 3, 4), rtol=0, atol=1e-6)
    assert g.config["guidance_scale"] == 5.0 and g.guidance_scale == 3.0  # config keeps the constructor value
