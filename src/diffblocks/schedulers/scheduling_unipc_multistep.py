"""UniPC (Zhao et al. 2023): a unified predictor (UniP) and corrector (UniC) of any order for diffusion ODEs.

Each step first corrects the sample just produced, using the new model output (UniC), then predicts the next
sample from the stored outputs (UniP). The B(h) choice is ``solver_type`` ("bh1": h, "bh2": expm1(h)).
"""
from __future__ import annotations

import math
from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ._multistep_common import MultistepMixin, lincomb_fused as lincomb
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerOutput,
    check_choice,
    check_num_inference_steps,
    check_one_sigma_ramp,
    check_prediction_type,
    check_spacing,
    not_ready_error,
    train_sigmas,
)


class UniPCMultistepScheduler(MultistepMixin, ConfigMixin):
    """UniPC multistep predictor-corrector (``predict_x0=True`` is the data-prediction form, UniPC-bh2 default)."""

    _compatibles = list(KARRAS_COMPATIBLES)
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: List[int] = [],
        solver_p=None,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: Optional[str] = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        shift_terminal: Optional[float] = None,
    ) -> None:
        owner = type(self).__name__
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction", "flow_prediction"), owner)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), owner)
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"), owner)
        if isinstance(solver_order, bool) or not isinstance(solver_order, int) or solver_order < 1:
            raise ValueError(f"`solver_order` must be a positive int, got {solver_order!r}")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("`shift_terminal` is only supported when `use_flow_sigmas=True`.")
        self._init_tables(owner)
        if solver_type not in ("bh1", "bh2"):
            if solver_type in ("midpoint", "heun", "logrho"):  # DPM-Solver / DEIS solver types map to bh2
                self.register_to_config(solver_type="bh2")
            else:
                check_choice("solver_type", solver_type, ("bh1", "bh2"), owner)
        self.predict_x0 = predict_x0
        self.timestep_list: List = [None] * solver_order
        self.disable_corrector = disable_corrector
        self.solver_p = solver_p
        self.last_sample = None
        self.this_order = None

    def _shift(self, mu: float, sigmas: np.ndarray) -> np.ndarray:
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        return mu / (mu + (1 / sigmas - 1) ** 1.0)

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        sigmas: Optional[List[float]] = None,
        mu: Optional[float] = None,
    ) -> None:
        """Build the schedule for ``num_inference_steps`` (custom ``sigmas`` need ``use_flow_sigmas``)."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError(
                    "Passing `sigmas` is only supported when `use_flow_sigmas=True`. Please set "
                    "`use_flow_sigmas=True` during scheduler initialization."
                )
            if num_inference_steps is not None and num_inference_steps != len(sigmas):
                raise ValueError("Pass either `num_inference_steps` or `sigmas`, not both.")
            num_inference_steps = len(sigmas)
        if num_inference_steps is None:
            raise ValueError("Must pass `num_inference_steps` (or `sigmas`).")
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        ts = self._spaced(n)
        zero_last = cfg.final_sigmas_type == "zero"
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            if cfg.use_flow_sigmas and cfg.use_karras_sigmas:
                base = train_sigmas(self.alphas_cumprod) if sigmas is None else np.asarray(sigmas)
                from .scheduling_utils import apply_sigma_ramp

                sig = apply_sigma_ramp(cfg, np.flip(base).copy(), n)
                sig = sig / (sig + 1)
                ts = (sig * cfg.num_train_timesteps).copy()
            else:
                sig, ts = self._ramped(n, round_karras=True)
            last = 0.0 if zero_last else sig[-1]
        elif cfg.use_flow_sigmas:
            sig = np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)[:-1] if sigmas is None else np.asarray(sigmas, dtype=np.float64)
            if cfg.use_dynamic_shifting:
                sig = self._shift(mu, sig)
            else:
                sig = cfg.flow_shift * sig / (1 + (cfg.flow_shift - 1) * sig)
            if cfg.shift_terminal:
                one_minus = 1 - sig
                sig = 1 - one_minus / (one_minus[-1] / (1 - cfg.shift_terminal))
            if np.fabs(sig[0] - 1) < 1e-6:
                sig[0] -= 1e-6
            ts = (sig * cfg.num_train_timesteps).copy()
            last = 0.0 if zero_last else sig[-1]
        else:
            base = train_sigmas(self.alphas_cumprod)
            sig = np.interp(ts, np.arange(0, len(base)), base)
            last = 0.0 if zero_last else self._sigma_min_train()
        self._finish_schedule(ts, np.concatenate([sig, [last]]).astype(np.float32), device)
        self.last_sample = None
        self.timestep_list = [None] * cfg.solver_order
        if self.solver_p:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """x0 (``predict_x0``) or epsilon from the raw model output."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        owner = type(self).__name__
        if self.predict_x0:
            x0 = self._x0_from_output(model_output, sample, owner)
            return self._threshold(x0) if self.config.thresholding else x0
        kind = self.config.prediction_type
        a, s, _ = self._als(self._step_index)
        if kind == "epsilon":
            return model_output
        if kind == "sample":
            return torch.add(sample, model_output, alpha=-float(a)) / float(s)
        if kind == "v_prediction":
            return torch.add(model_output * float(a), sample, alpha=float(s))
        raise ValueError(
            f"prediction_type given as {kind} must be one of `epsilon`, `sample`, or `v_prediction` for the {owner}."
        )

    def _coefficients(self, t_idx: int, s0_idx: int, history: List[int], order: int):
        """Scalar pieces shared by UniP and UniC: (alpha_t, sigma_t, sigma_s0, alpha_s0, h_phi_1, B_h, rks, R, b)."""
        a_t, s_t, l_t = self._als(t_idx)
        a_s0, s_s0, l_s0 = self._als(s0_idx)
        h = l_t - l_s0
        rks = []
        for si in history[: order - 1]:
            rks.append((self._als(si)[2] - l_s0) / h)
        rks_all = torch.stack(rks + [torch.ones(())])
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        R, b = [], []
        fact = 1
        for i in range(1, order + 1):
            R.append(torch.pow(rks_all, i - 1))
            b.append(h_phi_k * fact / B_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        return a_t, s_t, a_s0, s_s0, h_phi_1, B_h, rks, torch.stack(R), torch.stack(b)

    def _base_update(self, x: torch.Tensor, m0: torch.Tensor, a_t, s_t, a_s0, s_s0, h_phi_1):
        if self.predict_x0:
            return [(float(s_t / s_s0), x), (-float(a_t * h_phi_1), m0)], a_t
        return [(float(a_t / a_s0), x), (-float(s_t * h_phi_1), m0)], s_t

    def multistep_uni_p_bh_update(self, model_output: torch.Tensor, *args, sample: Optional[torch.Tensor] = None,
                                  order: Optional[int] = None, **kwargs) -> torch.Tensor:
        """UniP: predict the next sample from the stored converted outputs."""
        x = sample
        if self.solver_p:
            return self.solver_p.step(model_output, self.timestep_list[-1], x).prev_sample
        i = self._step_index
        m0 = self.model_outputs[-1]
        a_t, s_t, a_s0, s_s0, h_phi_1, B_h, rks, R, b = self._coefficients(
            i + 1, i, [i - k for k in range(1, order)], order)
        terms, scale = self._base_update(x, m0, a_t, s_t, a_s0, s_s0, h_phi_1)
        if rks:
            if order == 2:
                rhos = torch.ones(1, dtype=x.dtype) * 0.5
            else:
                rhos = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(x.dtype)
            d1s = [(self.model_outputs[-(k + 2)] - m0) / float(rk) for k, rk in enumerate(rks)]
            if len(d1s) == 1:  # rho = 0.5 for order 2: scaling by a power of two is exact, fold it
                terms.append((-float(scale * B_h) * float(rhos[0]), d1s[0]))
            else:
                res = lincomb([(float(rhos[k]), d) for k, d in enumerate(d1s)])
                terms.append((-float(scale * B_h), res))
        return lincomb(terms).to(x.dtype)

    def multistep_uni_c_bh_update(self, this_model_output: torch.Tensor, *args, last_sample: Optional[torch.Tensor] = None,
                                  this_sample: Optional[torch.Tensor] = None, order: Optional[int] = None, **kwargs) -> torch.Tensor:
        """UniC: correct ``this_sample`` with the model output just computed at it."""
        i = self._step_index
        m0 = self.model_outputs[-1]
        x = last_sample
        a_t, s_t, a_s0, s_s0, h_phi_1, B_h, rks, R, b = self._coefficients(
            i, i - 1, [i - (k + 1) for k in range(1, order)], order)
        terms, scale = self._base_update(x, m0, a_t, s_t, a_s0, s_s0, h_phi_1)
        if order == 1:
            rhos = torch.ones(1, dtype=x.dtype) * 0.5
        else:
            rhos = torch.linalg.solve(R, b).to(x.dtype)
        d1_t = this_model_output - m0
        if not rks:  # first-order corrector, rho = 0.5 (exact to fold)
            terms.append((-float(scale * B_h) * float(rhos[-1]), d1_t))
        else:
            parts = [(float(rhos[k]), (self.model_outputs[-(k + 2)] - m0) / float(rk)) for k, rk in enumerate(rks)]
            parts.append((float(rhos[-1]), d1_t))
            terms.append((-float(scale * B_h), lincomb(parts)))
        return lincomb(terms).to(x.dtype)

    def step(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor,
             return_dict: bool = True):
        """Correct the current sample with this output (UniC), then predict the next one (UniP)."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample=sample)
        if use_corrector:
            sample = self.multistep_uni_c_bh_update(converted, last_sample=self.last_sample, this_sample=sample,
                                                    order=self.this_order)
        self.model_outputs = self.model_outputs[1:] + [converted]
        self.timestep_list = self.timestep_list[1:] + [timestep]
        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, len(self.timesteps) - i)
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev = self.multistep_uni_p_bh_update(model_output, sample=sample, order=self.this_order)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
