"""Shared base of the exponential-integrator samplers (DPM-Solver, DEIS, UniPC).

They work in alpha_t = 1/sqrt(1 + sigma**2), sigma_t = sigma * alpha_t and lambda = log(alpha_t / sigma_t).
Scalar coefficients are computed as float32 0-d tensors (the precision diffusers uses, so schedules agree to
the last bit) and then applied to the sample with as few full-size tensor operations as possible.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .scheduling_utils import (
    SchedulerMixin,
    apply_sigma_ramp,
    broadcast_to,
    check_spacing,
    make_alphas_cumprod,
    sigma_to_t,
    threshold_sample,
    train_sigmas,
)


def lincomb(terms: Sequence[Tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum(c * x) over (c, x) pairs, accumulated left to right."""
    (c0, x0), rest = terms[0], terms[1:]
    acc = x0 * c0
    for c, x in rest:
        acc = acc + x * c  # product rounded on its own, then summed: the reference's rounding, term by term
    return acc


def lincomb_fused(terms: Sequence[Tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum(c * x) with one fused multiply-add per term (fewer tensor passes, last-bit rounding may differ)."""
    (c0, x0), rest = terms[0], terms[1:]
    acc = x0 * c0
    for c, x in rest:
        acc = torch.add(acc, x, alpha=c)
    return acc


class MultistepMixin(SchedulerMixin):
    """Bookkeeping, schedule construction and noise helpers shared by the multistep solvers."""

    _step_index: Optional[int] = None
    _begin_index: Optional[int] = None

    # ------------------------------------------------------------------ construction
    def _init_tables(self, owner: str, extra_betas: Sequence[str] = ()) -> None:
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, owner, extra_betas, terminal_floor=True)
        self.alphas = 1.0 - self.betas
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).to("cpu")
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        T = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())
        self.model_outputs: List[Optional[torch.Tensor]] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _spaced(self, n: int, last_timestep: Optional[int] = None) -> np.ndarray:
        """N timesteps from N+1 evenly spaced points (dropping the final 0), as int64."""
        cfg = self.config
        check_spacing(cfg.timestep_spacing)
        T = cfg.num_train_timesteps
        last = T if last_timestep is None else last_timestep
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ratio = last // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + cfg.steps_offset
        else:
            ts = np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
        return ts

    def _ramped(self, n: int, round_karras: bool) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(sigmas, timesteps) of a Karras / exponential / beta ramp, or None when the config uses none."""
        base = train_sigmas(self.alphas_cumprod)
        ramp = apply_sigma_ramp(self.config, np.flip(base).copy(), n)
        if ramp is None:
            return None
        ts = sigma_to_t(ramp, np.log(base))
        if round_karras and self.config.use_karras_sigmas:
            ts = ts.round()
        return ramp, ts

    def _finish_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, device) -> None:
        self.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._as_cache = {}

    def _sigma_min_train(self) -> float:
        a0 = self.alphas_cumprod[0]
        return float(((1 - a0) / a0) ** 0.5)

    # ------------------------------------------------------------------ step bookkeeping
    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start from position ``begin_index`` of ``timesteps`` (img2img sets this before the loop)."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"`begin_index` must be a non-negative int, got {begin_index!r}")
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: Optional[torch.Tensor] = None) -> int:
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        hits = (schedule_timesteps == timestep).nonzero()
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return hits[1 if len(hits) > 1 else 0].item()

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """These solvers need no input scaling; returns ``sample`` unchanged."""
        return sample

    # ------------------------------------------------------------------ maths
    def _sigma_to_alpha_sigma_t(self, sigma):
        if getattr(self.config, "use_flow_sigmas", False):
            return 1 - sigma, sigma
        alpha = 1 / (sigma**2 + 1) ** 0.5
        return alpha, sigma * alpha

    def _als(self, i: int):
        """(alpha_t, sigma_t, lambda_t) at position ``i`` of ``sigmas`` as float32 0-d tensors (cached)."""
        cache = self.__dict__.setdefault("_as_cache", {})
        hit = cache.get(i)
        if hit is None:
            a, s = self._sigma_to_alpha_sigma_t(self.sigmas[i])
            hit = (a, s, torch.log(a) - torch.log(s))
            cache[i] = hit
        return hit

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        return threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    def _x0_from_output(self, model_output: torch.Tensor, sample: torch.Tensor, owner: str) -> torch.Tensor:
        kind = self.config.prediction_type
        if kind == "sample":
            return model_output
        if kind == "flow_prediction":
            return torch.add(sample, model_output, alpha=-float(self.sigmas[self._step_index]))
        a, s, _ = self._als(self._step_index)
        if kind == "epsilon":
            return torch.add(sample, model_output, alpha=-float(s)) / float(a)
        if kind == "v_prediction":
            return torch.add(sample * float(a), model_output, alpha=-float(s))
        raise ValueError(
            f"prediction_type given as {kind} must be one of `epsilon`, `sample`, `v_prediction`, or "
            f"`flow_prediction` for the {owner}."
        )

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """alpha_t * x0 + sigma_t * noise at ``timesteps`` (or at the current/begin index once set)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        schedule = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t, schedule) for t in timesteps]
        elif self._step_index is not None:
            idx = [self._step_index] * timesteps.shape[0]
        else:
            idx = [self._begin_index] * timesteps.shape[0]
        sigma = broadcast_to(sigmas[idx], original_samples)
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return alpha_t * original_samples + sigma_t * noise


def flow_sigmas(n: int, num_train_timesteps: int, shift: float) -> np.ndarray:
    """Flow-matching noise levels (descending), shifted by ``shift``."""
    alphas = np.linspace(1, 1 / num_train_timesteps, n + 1)
    s = 1.0 - alphas
    return np.flip(shift * s / (1 + (shift - 1) * s))[:-1].copy()
