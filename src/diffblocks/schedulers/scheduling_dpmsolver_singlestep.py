"""DPM-Solver singlestep (Lu et al. 2022): groups of 1, 2 or 3 model calls, each group one higher-order step
taken from the sample at the start of the group (orders per step from ``get_order_list``)."""
from __future__ import annotations

import logging
from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ._multistep_common import MultistepMixin, flow_sigmas, lincomb
from .scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from .scheduling_utils import (
    KARRAS_COMPATIBLES,
    SchedulerOutput,
    check_choice,
    check_num_inference_steps,
    check_one_sigma_ramp,
    check_prediction_type,
    draw_noise,
    not_ready_error,
    train_sigmas,
)

logger = logging.getLogger(__name__)

_ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")


class DPMSolverSinglestepScheduler(MultistepMixin, ConfigMixin):
    """Singlestep DPM-Solver / DPM-Solver++ (orders 1-3)."""

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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: Optional[bool] = False,
        use_exponential_sigmas: Optional[bool] = False,
        use_beta_sigmas: Optional[bool] = False,
        use_flow_sigmas: Optional[bool] = False,
        flow_shift: Optional[float] = 1.0,
        final_sigmas_type: Optional[str] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Optional[str] = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        owner = type(self).__name__
        check_one_sigma_ramp(self.config)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction", "flow_prediction"), owner)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), owner)
        if solver_order not in (1, 2, 3):
            raise ValueError(f"`solver_order` must be 1, 2 or 3 (Order > 3 is not supported), got {solver_order!r}")
        self._init_tables(owner)
        if algorithm_type not in _ALGORITHMS:
            if algorithm_type == "deis":
                self.register_to_config(algorithm_type="dpmsolver++")
            else:
                check_choice("algorithm_type", algorithm_type, _ALGORITHMS, owner)
        if solver_type not in ("midpoint", "heun"):
            if solver_type in ("logrho", "bh1", "bh2"):
                self.register_to_config(solver_type="midpoint")
            else:
                check_choice("solver_type", solver_type, ("midpoint", "heun"), owner)
        if self.config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                f"{self.config.algorithm_type}. Please choose `sigma_min` instead."
            )
        self.sample = None
        self.order_list = self.get_order_list(num_train_timesteps)

    convert_model_output = DPMSolverMultistepScheduler.convert_model_output
    _first_order = DPMSolverMultistepScheduler._first_order

    def get_order_list(self, num_inference_steps: int) -> List[int]:
        """Solver order used at each step: repeating groups [1, 2] or [1, 2, 3], shortened at the end when
        ``lower_order_final``; the last step is first order when the final sigma is 0."""
        steps, order = num_inference_steps, self.config.solver_order
        if self.config.lower_order_final:
            if order == 3:
                tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[steps % 3]
                groups = steps // 3 - (1 if steps % 3 == 0 else 0)
                orders = [1, 2, 3] * groups + tail
            elif order == 2:
                orders = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
            else:
                orders = [1] * steps
        else:
            orders = {3: [1, 2, 3] * (steps // 3), 2: [1, 2] * (steps // 2), 1: [1] * steps}[order]
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      mu: Optional[float] = None, timesteps: Optional[List[int]] = None) -> None:
        """Build the schedule (linspace spacing, clipped by ``lambda_min_clipped``) or use custom ``timesteps``."""
        cfg = self.config
        if mu is not None:
            if not (cfg.use_dynamic_shifting and cfg.time_shift_type == "exponential"):
                raise ValueError("`mu` needs `use_dynamic_shifting=True` and `time_shift_type='exponential'`.")
            self.register_to_config(flow_shift=float(np.exp(mu)))
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Must pass exactly one of  `num_inference_steps` or `timesteps`.")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if getattr(cfg, flag):
                    raise ValueError(f"Cannot set `timesteps` with `config.{flag} = True`.")
            n = len(timesteps)
            ts = np.array(timesteps).astype(np.int64)
        else:
            n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped).item()
            ts = np.linspace(0, cfg.num_train_timesteps - 1 - clipped, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        self.num_inference_steps = n
        if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            sig, ts = self._ramped(n, round_karras=True)
        elif cfg.use_flow_sigmas:
            sig = flow_sigmas(n, cfg.num_train_timesteps, cfg.flow_shift)
            ts = (sig * cfg.num_train_timesteps).copy()
            sig = np.interp(ts, np.arange(0, len(sig)), sig)
        else:
            base = train_sigmas(self.alphas_cumprod)
            sig = np.interp(ts, np.arange(0, len(base)), base)
        last = self._sigma_min_train() if cfg.final_sigmas_type == "sigma_min" else 0.0
        self._finish_schedule(ts, np.concatenate([sig, [last]]).astype(np.float32), device)
        self.num_inference_steps = n
        self.sample = None
        if not cfg.lower_order_final and n % cfg.solver_order != 0:
            logger.warning("`lower_order_final` is switched on: %d steps are not a multiple of `solver_order`=%d.",
                           n, cfg.solver_order)
            self.register_to_config(lower_order_final=True)
        if not self.config.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning("`final_sigmas_type='zero'` needs `lower_order_final=True`; switching it on.")
            self.register_to_config(lower_order_final=True)
        self.order_list = self.get_order_list(n)

    def _second_order(self, sample: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        i = self._step_index
        a_t, s_t, l_t = self._als(i + 1)
        _, _, l_s0 = self._als(i)
        a_s1, s_s1, l_s1 = self._als(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = l_t - l_s1, l_s0 - l_s1
        r0 = h_0 / h
        d1 = (m0 - m1) * float(1.0 / r0)
        algo, heun = self.config.algorithm_type, self.config.solver_type == "heun"
        if algo == "dpmsolver++":
            c = a_t * (torch.exp(-h) - 1.0)
            c1 = a_t * ((torch.exp(-h) - 1.0) / h + 1.0) if heun else -0.5 * c
            return lincomb([(float(s_t / s_s1), sample), (-float(c), m1), (float(c1), d1)])
        if algo == "dpmsolver":
            c = s_t * (torch.exp(h) - 1.0)
            c1 = -(s_t * ((torch.exp(h) - 1.0) / h - 1.0)) if heun else -0.5 * c
            return lincomb([(float(a_t / a_s1), sample), (-float(c), m1), (float(c1), d1)])
        c = a_t * (1 - torch.exp(-2.0 * h))
        c1 = a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) if heun else 0.5 * c
        return lincomb([(float(s_t / s_s1 * torch.exp(-h)), sample), (float(c), m1), (float(c1), d1),
                        (float(s_t * torch.sqrt(1.0 - torch.exp(-2 * h))), noise)])

    def _third_order(self, sample: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        i = self._step_index
        a_t, s_t, l_t = self._als(i + 1)
        _, _, l_s0 = self._als(i)
        _, _, l_s1 = self._als(i - 1)
        a_s2, s_s2, l_s2 = self._als(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = l_t - l_s2, l_s0 - l_s2, l_s1 - l_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0 = (m1 - m2) * float(1.0 / r1)
        d1_1 = (m0 - m2) * float(1.0 / r0)
        heun = self.config.solver_type == "heun"
        if heun:
            d1 = (d1_0 * float(r0) - d1_1 * float(r1)) / float(r0 - r1)
            d2 = (d1_1 - d1_0) * 2.0 / float(r0 - r1)
        algo = self.config.algorithm_type
        if algo == "dpmsolver++":
            e = torch.exp(-h) - 1.0
            terms = [(float(s_t / s_s2), sample), (-float(a_t * e), m2)]
            if heun:
                terms += [(float(a_t * (e / h + 1.0)), d1), (-float(a_t * ((e + h) / h**2 - 0.5)), d2)]
            else:
                terms.append((float(a_t * (e / h + 1.0)), d1_1))
            return lincomb(terms)
        if algo == "dpmsolver":
            e = torch.exp(h) - 1.0
            terms = [(float(a_t / a_s2), sample), (-float(s_t * e), m2)]
            if heun:
                terms += [(-float(s_t * (e / h - 1.0)), d1), (-float(s_t * ((e - h) / h**2 - 0.5)), d2)]
            else:
                terms.append((-float(s_t * (e / h - 1.0)), d1_1))
            return lincomb(terms)
        e2 = 1.0 - torch.exp(-2.0 * h)
        terms = [(float(s_t / s_s2 * torch.exp(-h)), sample), (float(a_t * e2), m2)]
        if heun:
            terms += [(float(a_t * (e2 / (-2.0 * h) + 1.0)), d1),
                      (float(a_t * ((e2 + -2.0 * h) / (-2.0 * h) ** 2 - 0.5)), d2)]
        else:
            terms.append((float(a_t * (e2 / (-2.0 * h) + 1.0)), d1_1))
        terms.append((float(s_t * torch.sqrt(1.0 - torch.exp(-2 * h))), noise))
        return lincomb(terms)

    def singlestep_dpm_solver_update(self, model_output_list, *args, sample: Optional[torch.Tensor] = None,
                                     order: Optional[int] = None, noise: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        if order == 1:
            return self._first_order(model_output_list[-1], sample, noise)
        if order == 2:
            return self._second_order(sample, noise)
        if order == 3:
            return self._third_order(sample, noise)
        raise ValueError(f"Order must be 1, 2, 3, got {order}")

    def step(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        """One call of the current singlestep group (the update restarts from the group's first sample)."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if self._step_index is None:
            self._init_step_index(timestep)
        converted = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = self.model_outputs[1:] + [converted]
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = draw_noise(converted, generator)
        order = self.order_list[self._step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample
        prev = self.singlestep_dpm_solver_update(self.model_outputs, sample=self.sample, order=order, noise=noise)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
