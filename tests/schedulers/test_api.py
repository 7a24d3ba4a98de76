"""The public attributes and helpers pipelines use, against diffusers: init_noise_sigma, scale_model_input,
add_noise (by timestep and by begin index), the img2img slicing pattern, single steps, tuple outputs, dtypes."""
from __future__ import annotations

import logging

import pytest
import torch

import diffblocks.schedulers as ours

from ._parity import STEP_TOL, both, fake_model, rel_err

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
ALL = sorted(n for n in ours._EXPORTS if n.endswith("Scheduler"))


def _cfg(name):
    if name in ("EDMEulerScheduler", "LCMScheduler", "TCDScheduler"):
        return {}
    if name == "DPMSolverSinglestepScheduler":  # has no timestep_spacing / steps_offset
        return dict(SD)
    return dict(SD, steps_offset=1)


def _steps(name):
    return 4 if name in ("LCMScheduler", "TCDScheduler") else 10


def _x(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ALL)
def test_schedule_attributes_and_scaling_match(name):
    ref, mine = both(name, _cfg(name))
    ref.set_timesteps(_steps(name))
    mine.set_timesteps(_steps(name))
    assert mine.order == ref.order and len(mine) == len(ref) == 1000
    assert float(mine.init_noise_sigma) == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    assert torch.equal(mine.timesteps, ref.timesteps) or torch.allclose(mine.timesteps, ref.timesteps, rtol=1e-6)
    x = _x()
    for t in (mine.timesteps[0], mine.timesteps[len(mine.timesteps) // 2]):
        for s in (ref, mine):  # look the timestep up afresh
            if hasattr(s, "_step_index"):
                s._step_index = None
        a = ref.scale_model_input(x, t)
        b = mine.scale_model_input(x, t)
        assert a.shape == b.shape == x.shape
        assert rel_err(b, a) <= STEP_TOL


@pytest.mark.parametrize("name", ALL)
def test_add_noise_matches(name):
    ref, mine = both(name, _cfg(name))
    ref.set_timesteps(_steps(name))
    mine.set_timesteps(_steps(name))
    x0, noise = _x(1), _x(2)
    for ts in (mine.timesteps[2][None], mine.timesteps[[1, 3]]):
        a = ref.add_noise(x0, noise, ts.clone())
        b = mine.add_noise(x0, noise, ts.clone())
        assert rel_err(b, a) <= STEP_TOL, ts


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                                  "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
                                  "UniPCMultistepScheduler", "DDIMScheduler", "DEISMultistepScheduler",
                                  "DPMSolverSinglestepScheduler"])
def test_img2img_begin_index_loop_matches(name):
    """Pipelines do: set_timesteps(N); ts = timesteps[t_start * order:]; set_begin_index(t_start * order);
    latents = add_noise(image_latents, noise, ts[:1]); then the usual loop."""
    results = []
    for s in both(name, _cfg(name)):
        s.set_timesteps(10)
        start = 4 * s.order
        ts = s.timesteps[start:]
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(start)
        x = s.add_noise(_x(3), _x(4), ts[:1].repeat(2))
        gen = torch.Generator().manual_seed(5)
        logging.disable(logging.WARNING)
        try:
            for t in ts:
                kw = {"generator": gen} if "generator" in s.step.__code__.co_varnames else {}
                x = s.step(fake_model(s.scale_model_input(x, t), t), t, x, **kw).prev_sample
        finally:
            logging.disable(logging.NOTSET)
        results.append(x)
    assert rel_err(results[1], results[0]) <= 1e-6


@pytest.mark.parametrize("name", ALL)
def test_tuple_and_dict_outputs_agree(name):
    outs = []
    for return_dict in (True, False):
        s = getattr(ours, name)(**_cfg(name))
        s.set_timesteps(_steps(name))
        x = _x()
        t = s.timesteps[0]
        kw = {"generator": torch.Generator().manual_seed(0)} if "generator" in s.step.__code__.co_varnames else {}
        logging.disable(logging.WARNING)
        try:
            out = s.step(fake_model(s.scale_model_input(x, t), t), t, x, return_dict=return_dict, **kw)
        finally:
            logging.disable(logging.NOTSET)
        outs.append(out if return_dict else out)
    as_dict, as_tuple = outs
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_dict.prev_sample, as_tuple[0]) and torch.equal(as_dict[0], as_tuple[0])
    assert as_dict.prev_sample.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler",
                                  "UniPCMultistepScheduler", "EulerAncestralDiscreteScheduler"])
def test_half_precision_inputs_keep_dtype_like_diffusers(name):
    dtypes = []
    for s in both(name, dict(SD)):
        s.set_timesteps(5)
        x = _x().half()
        t = s.timesteps[0]
        kw = {"generator": torch.Generator().manual_seed(0)} if "generator" in s.step.__code__.co_varnames else {}
        logging.disable(logging.WARNING)
        try:
            out = s.step(fake_model(s.scale_model_input(x, t).float(), t).half(), t, x, **kw).prev_sample
        finally:
            logging.disable(logging.NOTSET)
        dtypes.append(out.dtype)
    assert dtypes[0] == dtypes[1]


def test_step_index_and_begin_index_bookkeeping():
    s = ours.EulerDiscreteScheduler(**SD)
    s.set_timesteps(6)
    assert s.step_index is None and s.begin_index is None
    x = _x()
    for i, t in enumerate(s.timesteps[:3]):
        x = s.step(fake_model(s.scale_model_input(x, t), t), t, x).prev_sample
        assert s.step_index == i + 1
    s.set_timesteps(6)
    assert s.step_index is None
    s.set_begin_index(2)
    s.scale_model_input(x, s.timesteps[2])
    assert s.step_index == 2 and s.begin_index == 2


def test_heun_interleaving_and_duplicate_lookup():
    s = ours.HeunDiscreteScheduler(**SD)
    s.set_timesteps(4)
    assert len(s.timesteps) == 7 and len(s.sigmas) == 8
    assert s.timesteps[1] == s.timesteps[2]
    # a duplicated timestep resolves to its second occurrence (diffusers' rule for restarts)
    assert s.index_for_timestep(s.timesteps[1]) == 2
    assert float(s.sigmas[-1]) == 0.0


def test_velocity_helper_matches():
    import diffusers

    ref = diffusers.DDPMScheduler(**SD)
    mine = ours.DDPMScheduler(**SD)
    t = torch.tensor([10, 500])
    assert rel_err(mine.get_velocity(_x(1), _x(2), t), ref.get_velocity(_x(1), _x(2), t)) <= STEP_TOL
