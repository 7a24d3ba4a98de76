"""Scheduler configs: save/load round trips, files written by diffusers (and for diffusers), class switching."""
from __future__ import annotations

import json
import logging
import os
import warnings

import pytest
import torch

import diffblocks.schedulers as ours

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
ALL = sorted(n for n in ours._EXPORTS if n.endswith("Scheduler"))
KARRAS = [n for n in ALL if n not in ("LCMScheduler", "TCDScheduler", "EDMEulerScheduler")]


def _plain(config) -> dict:
    """The config without private bookkeeping keys (``_class_name``, ``_diffusers_version``, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _short_loop(s, steps: int = 4) -> torch.Tensor:
    s.set_timesteps(steps)
    x = torch.linspace(-1, 1, 2 * 4 * 4 * 4).reshape(2, 4, 4, 4) * s.init_noise_sigma
    gen = torch.Generator().manual_seed(0)
    logging.disable(logging.WARNING)
    try:
        for t in s.timesteps:
            xi = s.scale_model_input(x, t)
            kwargs = {"generator": gen} if "generator" in s.step.__code__.co_varnames else {}
            x = s.step(0.1 * xi + 0.01, t, x, **kwargs).prev_sample
    finally:
        logging.disable(logging.NOTSET)
    return x


@pytest.mark.parametrize("name", ALL)
def test_save_and_from_pretrained_round_trip(name, tmp_path):
    cls = getattr(ours, name)
    s = cls(num_train_timesteps=500)
    s.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == name and data["num_train_timesteps"] == 500
    loaded = cls.from_pretrained(tmp_path)
    assert _plain(loaded.config) == _plain(s.config)
    torch.testing.assert_close(_short_loop(loaded), _short_loop(cls(num_train_timesteps=500)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_diffusers_file_loads_here_and_ours_loads_in_diffusers(name, tmp_path):
    import diffusers

    theirs = getattr(diffusers, name)(num_train_timesteps=700, **({} if name == "EDMEulerScheduler" else SD))
    theirs.save_pretrained(tmp_path / "d")
    mine = getattr(ours, name).from_pretrained(tmp_path / "d")
    assert mine.config.num_train_timesteps == 700
    for key, value in _plain(theirs.config).items():
        assert mine.config[key] == value, key
    mine.save_pretrained(tmp_path / "o")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        back = getattr(diffusers, name).from_pretrained(tmp_path / "o")
    assert _plain(back.config) == _plain(theirs.config)


def test_subfolder_and_overrides_without_warnings(tmp_path, caplog):
    import diffusers

    diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **SD).save_pretrained(
        tmp_path / "scheduler")
    with caplog.at_level(logging.WARNING):
        for name in ("DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "PNDMScheduler",
                     "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler"):
            s = getattr(ours, name).from_pretrained(tmp_path, subfolder="scheduler")
            assert s.config.beta_schedule == "scaled_linear"
        ddpm = ours.DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler", prediction_type="sample",
                                                  beta_end=8, beta_start=88)
    assert caplog.records == []
    assert (ddpm.config.prediction_type, ddpm.config.beta_end, ddpm.config.beta_start) == ("sample", 8, 88)


@pytest.mark.parametrize("src,dst", [("PNDMScheduler", "EulerDiscreteScheduler"),
                                     ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"),
                                     ("DDIMScheduler", "UniPCMultistepScheduler"),
                                     ("DEISMultistepScheduler", "HeunDiscreteScheduler"),
                                     ("LMSDiscreteScheduler", "KDPM2AncestralDiscreteScheduler")])
def test_switch_a_b_a_restores_config(src, dst):
    a = getattr(ours, src)(steps_offset=1, **SD)
    b = getattr(ours, dst).from_config(a.config)
    assert type(b).__name__ == dst
    assert b.config.beta_schedule == "scaled_linear"
    back = getattr(ours, src).from_config(b.config)
    assert _plain(back.config) == _plain(a.config)


def test_defaults_of_new_class_win_unless_set_explicitly():
    pndm = ours.PNDMScheduler()  # implicit timestep_spacing="leading"
    assert ours.EulerDiscreteScheduler.from_config(pndm.config).config.timestep_spacing == "linspace"
    euler = ours.EulerDiscreteScheduler(timestep_spacing="trailing")
    assert ours.LMSDiscreteScheduler.from_config(euler.config).config.timestep_spacing == "trailing"
    assert ours.UniPCMultistepScheduler.from_config(ours.DEISMultistepScheduler().config).config.solver_type == "bh2"


def test_foreign_solver_values_are_mapped():
    deis = ours.DEISMultistepScheduler(solver_type="logrho", algorithm_type="deis")
    dpm = ours.DPMSolverMultistepScheduler.from_config(deis.config)
    assert (dpm.config.algorithm_type, dpm.config.solver_type) == ("dpmsolver++", "midpoint")
    unipc = ours.UniPCMultistepScheduler(solver_type="midpoint")
    assert unipc.config.solver_type == "bh2"
    back = ours.DEISMultistepScheduler.from_config(dpm.config)
    assert (back.config.algorithm_type, back.config.solver_type) == ("deis", "logrho")


def test_unknown_key_warns_with_exact_text(caplog):
    cfg = dict(ours.DDIMScheduler().config)
    cfg["unexpected"] = True
    with caplog.at_level(logging.WARNING):
        ours.DDIMScheduler.from_config(cfg)
    assert any("The config attributes {'unexpected': True} were passed to DDIMScheduler, but are not expected and "
               "will be ignored." in r.getMessage() for r in caplog.records)


def test_compatibles_match_diffusers():
    import diffusers

    for name in ALL:
        mine = {c.__name__ for c in getattr(ours, name)().compatibles}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = {c.__name__ for c in getattr(diffusers, name)().compatibles}
        # diffblocks has no DPMSolverSDEScheduler (needs torchsde); everything else matches
        assert mine == theirs - {"DPMSolverSDEScheduler"}, name
        assert name in mine
    assert ours.LCMScheduler().compatibles == [ours.LCMScheduler]


@pytest.mark.parametrize("name", KARRAS)
def test_every_compatible_class_builds_from_config(name):
    s = getattr(ours, name)(**SD)
    for klass in s.compatibles:
        other = klass.from_config(s.config)
        assert other.config.beta_schedule == "scaled_linear"
        assert other.config.num_train_timesteps == 1000


def test_trained_betas_survive_save_load(tmp_path):
    betas = torch.linspace(1e-4, 0.02, 100).tolist()
    s = ours.DDIMScheduler(num_train_timesteps=100, trained_betas=betas)
    s.save_pretrained(tmp_path)
    loaded = ours.DDIMScheduler.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.betas, torch.tensor(betas))


def test_enum_and_ays_constants():
    from diffblocks.schedulers.scheduling_utils import AysSchedules

    names = [e.name for e in ours.KarrasDiffusionSchedulers]
    assert len(names) == 15 and names[0] == "DDIMScheduler" and names[-1] == "EDMEulerScheduler"
    assert AysSchedules["StableDiffusionXLTimesteps"][0] == 999
    assert len(AysSchedules["StableDiffusionSigmas"]) == 11


def test_importing_schedulers_does_not_import_diffusers():
    import subprocess
    import sys

    code = ("import sys, diffblocks.schedulers as s; s.EulerDiscreteScheduler; s.DPMSolverMultistepScheduler; "
            "s.UniPCMultistepScheduler; print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}


@pytest.mark.parametrize("name", KARRAS)
def test_swap_on_sd15_config_runs_like_diffusers(name):
    """``pipe.scheduler = X.from_config(pipe.scheduler.config)`` on the SD 1.5 scheduler config, then 12 steps."""
    import diffusers

    from ._parity import rel_err, run_loop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, name).from_config(diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).config)
    mine = getattr(ours, name).from_config(ours.PNDMScheduler.from_config(SD15_SCHEDULER).config)
    assert _plain(mine.config) == _plain(ref.config)
    seed = 0 if "generator" in mine.step.__code__.co_varnames else None
    xr, _ = run_loop(ref, 12, seed=seed)
    xm, _ = run_loop(mine, 12, seed=seed)
    assert torch.isfinite(xm).all()
    assert rel_err(xm, xr) <= 1e-6
