"""Latent Consistency Model sampling (Luo et al. 2023): each step jumps to a consistency-model estimate of x0
and re-noises it to the next timestep of the distilled schedule."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch

from ..configuration import ConfigMixin, register_to_config
from ..models.outputs import BaseOutput
from ._alpha_common import clip_or_threshold, x0_and_eps
from .scheduling_utils import (
    AlphaNoiseMixin,
    SchedulerMixin,
    check_num_inference_steps,
    check_prediction_type,
    check_spacing,
    draw_noise,
    make_alphas_cumprod,
    not_ready_error,
)

logger = logging.getLogger(__name__)


@dataclass
class LCMSchedulerOutput(BaseOutput):
    """``prev_sample`` for the next step and ``denoised``, the consistency estimate of the clean sample."""

    prev_sample: torch.Tensor
    denoised: Optional[torch.Tensor] = None


def distilled_timesteps(num_train_timesteps: int, original_steps: int, strength: float) -> np.ndarray:
    """The ascending timesteps the consistency model was distilled on: k-1, 2k-1, ... (k = T // original)."""
    k = num_train_timesteps // original_steps
    return np.asarray(list(range(1, int(original_steps * strength) + 1))) * k - 1


class LCMScheduler(AlphaNoiseMixin, SchedulerMixin, ConfigMixin):
    """Multistep consistency sampling for LCM / LCM-LoRA checkpoints (typically 2-8 steps)."""

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        check_spacing(timestep_spacing)
        check_prediction_type(prediction_type, ("epsilon", "sample", "v_prediction"), type(self).__name__)
        self.betas, self.alphas_cumprod = make_alphas_cumprod(self.config, type(self).__name__)
        self.alphas = 1.0 - self.betas
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self._abar = list(self.alphas_cumprod.numpy())
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self.custom_timesteps = False
        self._step_index = None
        self._begin_index = None

    # step bookkeeping (same conventions as the sigma samplers)
    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start from position ``begin_index`` of ``timesteps``."""
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: Optional[torch.Tensor] = None) -> int:
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        hits = (schedule_timesteps == timestep).nonzero()
        if len(hits) == 0:
            raise ValueError(f"`timestep` {int(timestep)} is not one of this scheduler's `timesteps`.")
        return hits[1 if len(hits) > 1 else 0].item()

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        """No input scaling; returns ``sample`` unchanged."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        original_inference_steps: Optional[int] = None,
        timesteps: Optional[List[int]] = None,
        strength: float = 1.0,
    ) -> None:
        """Pick ``num_inference_steps`` evenly from the distilled schedule (or use custom ``timesteps``);
        ``strength`` < 1 keeps only the first part of the distilled schedule (img2img)."""
        cfg = self.config
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        origin, original = self._origin_timesteps(original_inference_steps, strength)
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            known = set(origin.tolist())
            if any(b >= a for a, b in zip(ts, ts[1:])):
                raise ValueError("`custom_timesteps` must be in descending order.")
            if ts[0] >= cfg.num_train_timesteps:
                raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {cfg.num_train_timesteps}.")
            if strength == 1.0 and ts[0] != cfg.num_train_timesteps - 1:
                logger.warning(f"The first timestep on the custom timestep schedule is {ts[0]}, not "
                               f"`self.config.num_train_timesteps - 1`: {cfg.num_train_timesteps - 1}. You may get "
                               "unexpected results when using this timestep schedule.")
            foreign = [t for t in ts[1:] if t not in known]
            if foreign:
                logger.warning(f"The custom timestep schedule contains the following timesteps which are not on the "
                               f"original training/distillation timestep schedule: {foreign}. You may get unexpected "
                               "results when using this timestep schedule.")
            if original is not None and len(ts) > original:
                logger.warning(f"The number of timesteps in the custom timestep schedule is {len(ts)}, which exceeds "
                               f"the the length of the timestep schedule used for training: {original}. You may get "
                               "some unexpected results when using this timestep schedule.")
            arr = np.array(ts, dtype=np.int64)
            self.num_inference_steps = len(arr)
            self.custom_timesteps = True
            keep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
            arr = arr[max(self.num_inference_steps - keep, 0) * self.order:]
        else:
            n = check_num_inference_steps(num_inference_steps, cfg.num_train_timesteps)
            if original is not None and len(origin) // n < 1:
                raise ValueError(
                    f"The combination of `original_steps x strength`: {original} x {strength} is smaller than "
                    f"`num_inference_steps`: {n}. Make sure to either reduce `num_inference_steps` to a value smaller "
                    f"than {int(original * strength)} or increase `strength` to a value higher than {float(n / original)}."
                )
            self.num_inference_steps = n
            if original is not None and n > original:
                raise ValueError(
                    f"`num_inference_steps`: {n} cannot be larger than `original_inference_steps`: {original} because "
                    "the final timestep schedule will be a subset of the `original_inference_steps`-sized initial "
                    "timestep schedule."
                )
            origin = origin[::-1].copy()
            picks = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
            arr = origin[picks]
            self.custom_timesteps = False
        self.timesteps = torch.from_numpy(arr).to(device=device, dtype=torch.long)
        self._step_index = None
        self._begin_index = None

    def _origin_timesteps(self, original_inference_steps: Optional[int], strength: float):
        cfg = self.config
        original = original_inference_steps if original_inference_steps is not None else cfg.original_inference_steps
        if original > cfg.num_train_timesteps:
            raise ValueError(
                f"`original_steps`: {original} cannot be larger than `self.config.train_timesteps`: "
                f"{cfg.num_train_timesteps} as the unet model trained with this scheduler can only handle maximal "
                f"{cfg.num_train_timesteps} timesteps."
            )
        return distilled_timesteps(cfg.num_train_timesteps, original, strength), original

    def get_scalings_for_boundary_condition_discrete(self, timestep):
        """(c_skip, c_out) of the consistency parameterisation at ``timestep`` (sigma_data = 0.5)."""
        self.sigma_data = 0.5
        scaled = torch.as_tensor(timestep) * self.config.timestep_scaling
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def _abar_at(self, t: int):
        return self._abar[t] if t >= 0 else np.float32(float(self.final_alpha_cumprod))

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True):
        """Consistency estimate at ``timestep``, re-noised to the next timestep (except on the last step)."""
        if self.num_inference_steps is None:
            raise not_ready_error()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        t = int(timestep)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        a_t, a_prev = self._abar_at(t), self._abar_at(prev_t)
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(timestep)
        cfg = self.config
        if cfg.prediction_type == "epsilon" and not (cfg.thresholding or cfg.clip_sample):
            # x0 is only an intermediate here: fold c_out * x0 + c_skip * x into one combination of x and eps
            ra, rb = float(np.sqrt(a_t)), float(np.sqrt(1 - a_t))
            denoised = torch.add(sample * (float(c_skip) + float(c_out) / ra), model_output, alpha=-float(c_out) * rb / ra)
        else:
            x0, _ = x0_and_eps(cfg.prediction_type, model_output, sample, a_t, type(self).__name__)
            x0 = clip_or_threshold(x0, cfg)
            denoised = x0 * float(c_out) + sample * float(c_skip)
        if i != self.num_inference_steps - 1:
            noise = draw_noise(model_output, generator, dtype=denoised.dtype)
            prev = torch.add(denoised * float(np.sqrt(a_prev)), noise, alpha=float(np.sqrt(1 - a_prev)))
        else:
            prev = denoised
        self._step_index = i + 1
        if not return_dict:
            return (prev, denoised)
        return LCMSchedulerOutput(prev_sample=prev, denoised=denoised)
