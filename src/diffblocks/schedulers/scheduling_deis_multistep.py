"""DEIS (Zhang & Chen 2022): exponential-integrator multistep solver with polynomial extrapolation in log(rho).

rho = sigma_t / alpha_t; the stored epsilons are extrapolated by Lagrange polynomials in log(rho) and integrated
exactly over [rho_s, rho_t] (``solver_type="logrho"``).
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ._multistep_common import MultistepMixin, flow_sigmas, lincomb
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


def _logrho_weight2(t, b, c):
    """Integral helper of the order-2 Lagrange basis in log(rho) (evaluated at ``t``)."""
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _logrho_weight3(t, b, c, d):
    lt, lc, ld, lb = np.log(t), np.log(c), np.log(d), np.log(b)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return num / ((lb - lc) * (lb - ld))


class DEISMultistepScheduler(MultistepMixin, ConfigMixin):
    """DEIS multistep sampler (orders 1-3)."""

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
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        owner = type(self).__name__
        check_one_sigma_ramp(self.config)
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction", "flow_prediction"), owner)
        if solver_order not in (1, 2, 3):
            raise ValueError(f"`solver_order` must be 1, 2 or 3, got {solver_order!r}")
        self._init_tables(owner)
        if algorithm_type != "deis":
            if algorithm_type in ("dpmsolver", "dpmsolver++"):  # a DPM-Solver config switched to DEIS
                self.register_to_config(algorithm_type="deis")
            else:
                check_choice("algorithm_type", algorithm_type, ("deis",), owner)
        if solver_type != "logrho":
            if solver_type in ("midpoint", "heun", "bh1", "bh2"):
                self.register_to_config(solver_type="logrho")
            else:
                check_choice("solver_type", solver_type, ("logrho",), owner)

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None,
                      mu: Optional[float] = None) -> None:
        """Build the schedule for ``num_inference_steps``."""
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError("`mu` needs `use_dynamic_shifting=True` and `time_shift_type='exponential'`.")
            self.register_to_config(flow_shift=float(np.exp(mu)))
        n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
        ts = self._spaced(n)
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            sig, ts = self._ramped(n, round_karras=True)
            last = sig[-1]
        elif cfg.use_flow_sigmas:
            sig = flow_sigmas(n, cfg.num_train_timesteps, cfg.flow_shift)
            ts = (sig * cfg.num_train_timesteps).copy()
            last = sig[-1]
        else:
            base = train_sigmas(self.alphas_cumprod)
            sig = np.interp(ts, np.arange(0, len(base)), base)
            last = self._sigma_min_train()
        self._finish_schedule(ts, np.concatenate([sig, [last]]).astype(np.float32), device)

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """Epsilon implied by the model output (through x0, so thresholding applies)."""
        if sample is None:
            if len(args) > 1:
                sample = args[1]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        x0 = self._x0_from_output(model_output, sample, type(self).__name__)
        if self.config.thresholding:
            x0 = self._threshold(x0)
        a, s, _ = self._als(self._step_index)
        return torch.add(sample, x0, alpha=-float(a)) / float(s)

    def _rho(self, i: int):
        a, s, _ = self._als(i)
        return np.float32((s / a).item())

    def step(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor,
             return_dict: bool = True):
        """One DEIS step of the highest order available."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if self._step_index is None:
            self._init_step_index(timestep)
        cfg = self.config
        i, n = self._step_index, len(self.timesteps)
        final = i == n - 1 and cfg.lower_order_final and n < 15
        second_last = i == n - 2 and cfg.lower_order_final and n < 15
        eps = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [eps]
        a_t, s_t, l_t = self._als(i + 1)
        a_s0, _, l_s0 = self._als(i)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or final:
            h = l_t - l_s0
            prev = lincomb([(float(a_t / a_s0), sample), (-float(s_t * (torch.exp(h) - 1.0)), eps)])
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second_last:
            r_t, r0, r1 = self._rho(i + 1), self._rho(i), self._rho(i - 1)
            c1 = _logrho_weight2(r_t, r0, r1) - _logrho_weight2(r0, r0, r1)
            c2 = _logrho_weight2(r_t, r1, r0) - _logrho_weight2(r0, r1, r0)
            inner = sample / float(a_s0) + eps * float(c1) + self.model_outputs[-2] * float(c2)
            prev = inner * float(a_t)
        else:
            r_t, r0, r1, r2 = self._rho(i + 1), self._rho(i), self._rho(i - 1), self._rho(i - 2)
            c1 = _logrho_weight3(r_t, r0, r1, r2) - _logrho_weight3(r0, r0, r1, r2)
            c2 = _logrho_weight3(r_t, r1, r2, r0) - _logrho_weight3(r0, r1, r2, r0)
            c3 = _logrho_weight3(r_t, r2, r0, r1) - _logrho_weight3(r0, r2, r0, r1)
            inner = (sample / float(a_s0) + eps * float(c1) + self.model_outputs[-2] * float(c2)
                     + self.model_outputs[-3] * float(c3))
            prev = inner * float(a_t)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index = i + 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
