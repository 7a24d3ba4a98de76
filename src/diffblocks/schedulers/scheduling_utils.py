"""Shared pieces of every scheduler: the mixin, the output type, and the maths named once.

The maths follows k-diffusion's habit: a noise level is a sigma (``sqrt((1 - abar) / abar)``), a sampler moves
a sample between sigmas, and the helpers below (beta schedules, timestep spacing, Karras / exponential / beta
sigma ramps, ``sigma_to_t``, dynamic thresholding, ``to_x0``) are written once and reused by the short
per-algorithm modules.  Scalar coefficients are computed when the schedule is set, so ``step`` is a handful of
tensor operations.
"""
from __future__ import annotations

import enum
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..configuration import ConfigMixin  # noqa: F401  (re-exported for scheduler modules)
from ..models.outputs import BaseOutput
from ..utils.torch_utils import randn_tensor

logger = logging.getLogger(__name__)

SCHEDULER_CONFIG_NAME = "scheduler_config.json"


class KarrasDiffusionSchedulers(enum.Enum):
    """The schedulers that can stand in for one another on a Stable Diffusion checkpoint."""

    DDIMScheduler = 1
    DDPMScheduler = 2
    PNDMScheduler = 3
    LMSDiscreteScheduler = 4
    EulerDiscreteScheduler = 5
    HeunDiscreteScheduler = 6
    EulerAncestralDiscreteScheduler = 7
    DPMSolverMultistepScheduler = 8
    DPMSolverSinglestepScheduler = 9
    KDPM2DiscreteScheduler = 10
    KDPM2AncestralDiscreteScheduler = 11
    DEISMultistepScheduler = 12
    UniPCMultistepScheduler = 13
    DPMSolverSDEScheduler = 14
    EDMEulerScheduler = 15


KARRAS_COMPATIBLES: List[str] = [e.name for e in KarrasDiffusionSchedulers]

# "Align Your Steps" 10-step schedules (published constants).
AysSchedules: Dict[str, List[float]] = {
    "StableDiffusionTimesteps": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24],
    "StableDiffusionSigmas": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0],
    "StableDiffusionXLTimesteps": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13],
    "StableDiffusionXLSigmas": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.0],
    "StableDiffusionVideoSigmas": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0],
}


@dataclass
class SchedulerOutput(BaseOutput):
    """What ``step`` returns: the sample at the next (less noisy) timestep."""

    prev_sample: torch.Tensor


@dataclass
class SchedulerOutputWithX0(BaseOutput):
    """``step`` output that also carries the model's estimate of the clean sample."""

    prev_sample: torch.Tensor
    pred_original_sample: Optional[torch.Tensor] = None


class UnsupportedOptionError(NotImplementedError, ValueError):
    """A config option value this scheduler does not implement (both a ValueError and, as in diffusers,
    a NotImplementedError)."""


# ----------------------------------------------------------------------------------------------- validation
def check_choice(name: str, value: Any, choices: Sequence[Any], owner: str) -> None:
    if value not in choices:
        raise UnsupportedOptionError(
            f"{value} is not implemented for {owner}: `{name}`={value!r}; expected one of "
            + ", ".join(repr(c) for c in choices)
            + "."
        )


def check_num_inference_steps(num_inference_steps: Any, num_train_timesteps: int) -> int:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(
            f"`num_inference_steps` must be an int between 1 and {num_train_timesteps}, got "
            f"{type(num_inference_steps).__name__}: {num_inference_steps!r}"
        )
    n = int(num_inference_steps)
    if n < 1:
        raise ValueError(f"`num_inference_steps` must be at least 1, got {n}.")
    if n > num_train_timesteps:
        raise ValueError(
            f"`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`: "
            f"{num_train_timesteps} as the unet model trained with this scheduler can only handle maximal "
            f"{num_train_timesteps} timesteps."
        )
    return n


def check_spacing(spacing: str) -> None:
    if spacing not in ("linspace", "leading", "trailing"):
        raise ValueError(
            f"{spacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or 'trailing'. "
            f"(`timestep_spacing`={spacing!r})"
        )


def check_prediction_type(value: str, choices: Sequence[str], owner: str) -> None:
    if value not in choices:
        raise ValueError(
            f"prediction_type given as {value} must be one of "
            + ", ".join(f"`{c}`" for c in choices)
            + f" for {owner} (`prediction_type`={value!r})."
        )


def check_one_sigma_ramp(config: Any) -> None:
    used = [getattr(config, k, False) for k in ("use_beta_sigmas", "use_exponential_sigmas", "use_karras_sigmas")]
    if sum(bool(u) for u in used) > 1:
        raise ValueError(
            "Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, `config.use_karras_sigmas` "
            "can be used."
        )
    if getattr(config, "use_beta_sigmas", False):
        try:
            import scipy.stats  # noqa: F401
        except ImportError as exc:  # pragma: no cover - scipy is installed in our environments
            raise ImportError("Make sure to install scipy if you want to use beta sigmas.") from exc


def not_ready_error() -> ValueError:
    return ValueError(
        "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
    )


# ----------------------------------------------------------------------------------------------- noise schedules
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def alpha_bar_betas(num_steps: int, kind: str = "cosine", max_beta: float = 0.999) -> torch.Tensor:
    """Betas from a continuous alpha-bar curve: beta_i = 1 - abar((i+1)/T) / abar(i/T), capped at ``max_beta``."""
    if kind == "cosine":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif kind == "exp":
        def abar(t):
            return math.exp(t * -12.0)
    elif kind == "laplace":
        def abar(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    else:
        raise ValueError(f"`alpha_transform_type` must be 'cosine', 'exp' or 'laplace', got {kind!r}")
    betas = [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(config: Any, owner: str, extra: Sequence[str] = ()) -> torch.Tensor:
    """The beta schedule a config describes (``trained_betas`` wins over ``beta_schedule``)."""
    if config.trained_betas is not None:
        return torch.tensor(config.trained_betas, dtype=torch.float32)
    kind, n = config.beta_schedule, config.num_train_timesteps
    b0, b1 = config.beta_start, config.beta_end
    if kind == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        return alpha_bar_betas(n, "cosine")
    if kind in extra:
        if kind == "exp":
            return alpha_bar_betas(n, "exp")
        if kind == "laplace":
            return alpha_bar_betas(n, "laplace")
        if kind == "sigmoid":
            return torch.sigmoid(torch.linspace(-6, 6, n)) * (b1 - b0) + b0
    check_choice("beta_schedule", kind, tuple(_BETA_SCHEDULES) + tuple(extra), owner)
    raise AssertionError("unreachable")


def zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that sqrt(abar) falls linearly onto 0 at the last step (keeping the first value)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def make_alphas_cumprod(config: Any, owner: str, extra: Sequence[str] = (), terminal_floor: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(betas, alphas_cumprod) of a config; with ``rescale_betas_zero_snr`` the last abar is 0, or 2**-24 when
    ``terminal_floor`` (sigma-based schedulers need a finite last sigma)."""
    betas = make_betas(config, owner, extra)
    rescale = bool(getattr(config, "rescale_betas_zero_snr", False))
    if rescale:
        betas = zero_terminal_snr(betas)
    abar = torch.cumprod(1.0 - betas, dim=0)
    if rescale and terminal_floor:
        abar[-1] = 2**-24
    return betas, abar


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for every training timestep, as a float32 numpy array."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


# ----------------------------------------------------------------------------------------------- timestep spacing
def spaced_timesteps(
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int = 0, *, round_linspace: bool
) -> np.ndarray:
    """Descending timesteps (float64) for ``timestep_spacing``.

    linspace: evenly spread over [0, T-1] (rounded for integer schedulers); leading: multiples of T//N plus
    ``steps_offset``; trailing: counted down from T in steps of T/N, minus one.
    """
    check_spacing(spacing)
    T, N = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N)
        if round_linspace:
            ts = ts.round()
        return ts[::-1].copy()
    if spacing == "leading":
        ts = (np.arange(0, N) * (T // N)).round()[::-1].astype(np.float64)
        return ts + steps_offset
    return np.arange(T, 0, -T / N).round() - 1


# ----------------------------------------------------------------------------------------------- sigma ramps
def karras_ramp(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels: evenly spaced in sigma**(1/rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_ramp(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Noise levels evenly spaced in log(sigma)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_ramp(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Noise levels placed at the quantiles of a Beta(alpha, beta) distribution (denser at both ends)."""
    import scipy.stats

    q = 1 - np.linspace(0, 1, n)
    ppf = [scipy.stats.beta.ppf(x, alpha, beta) for x in q]
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])


def apply_sigma_ramp(config: Any, sigmas: np.ndarray, n: int, karras_bounds_from_config: bool = True) -> Optional[np.ndarray]:
    """The Karras / exponential / beta ramp the config asks for between ``sigmas[-1]`` and ``sigmas[0]``
    (``config.sigma_min`` / ``sigma_max`` override the ends when present), or None when none is enabled."""
    cfg_min = getattr(config, "sigma_min", None)
    cfg_max = getattr(config, "sigma_max", None)
    lo = cfg_min if cfg_min is not None else float(sigmas[-1])
    hi = cfg_max if cfg_max is not None else float(sigmas[0])
    if getattr(config, "use_karras_sigmas", False):
        if not karras_bounds_from_config:
            lo, hi = float(sigmas[-1]), float(sigmas[0])
        return karras_ramp(lo, hi, n)
    if getattr(config, "use_exponential_sigmas", False):
        return exponential_ramp(lo, hi, n)
    if getattr(config, "use_beta_sigmas", False):
        return beta_ramp(lo, hi, n)
    return None


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by linear interpolation in log-sigma (vectorised)."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10)).reshape(-1)
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo_v, hi_v = log_sigmas[low], log_sigmas[high]
    w = np.clip((lo_v - log_sigma) / (lo_v - hi_v), 0, 1)
    t = (1 - w) * low + w * high
    return t.reshape(sigmas.shape)


def discrete_sigma_schedule(config: Any, alphas_cumprod: torch.Tensor, num_inference_steps: int,
                            num_train_timesteps: Optional[int] = None, timesteps: Optional[Sequence[float]] = None,
                            round_karras: bool = False, karras_bounds_from_config: bool = True):
    """(timesteps, sigmas without the final 0, log of the training sigmas) of the k-diffusion style samplers:
    spaced (or custom) timesteps, sigmas interpolated at them, then an optional Karras / exponential / beta ramp
    whose timesteps are recovered by log-sigma interpolation."""
    T = num_train_timesteps or config.num_train_timesteps
    if timesteps is not None:
        ts = np.array(timesteps, dtype=np.float32)
    else:
        ts = spaced_timesteps(config.timestep_spacing, T, num_inference_steps, config.steps_offset,
                              round_linspace=False).astype(np.float32)
    base = train_sigmas(alphas_cumprod)
    log_base = np.log(base)
    sig = np.interp(ts, np.arange(0, len(base)), base)
    ramp = apply_sigma_ramp(config, sig, num_inference_steps, karras_bounds_from_config)
    if ramp is not None:
        sig = ramp
        ts = sigma_to_t(sig, log_base)
        if round_karras and getattr(config, "use_karras_sigmas", False):
            ts = ts.round()
    return ts, sig, log_base


# ----------------------------------------------------------------------------------------------- sample helpers
def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clamp each item to its ``ratio`` quantile of |x| (>= 1, <= max_value)
    and rescale into [-1, 1]."""
    dtype = sample.dtype
    b, c, *rest = sample.shape
    flat = sample if dtype in (torch.float32, torch.float64) else sample.float()
    flat = flat.reshape(b, c * int(np.prod(rest)))
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(b, c, *rest).to(dtype)


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = values.flatten()
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


def draw_noise(model_output: torch.Tensor, generator: Any, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Standard normal noise shaped like ``model_output``, drawn exactly as diffusers' samplers draw it."""
    return randn_tensor(
        model_output.shape, generator=generator, device=model_output.device, dtype=dtype or model_output.dtype
    )


# ----------------------------------------------------------------------------------------------- mixin
def _guard_set_timesteps(method):
    """Wrap ``set_timesteps`` so an argument the scheduler does not support is a ValueError naming it."""
    import functools
    import inspect

    params = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return method
    accepted = [n for n in params if n != "self"]

    @functools.wraps(method)
    def set_timesteps(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.set_timesteps does not support {', '.join(f'`{k}`' for k in unknown)}; "
                f"it accepts: {', '.join(accepted)}."
            )
        return method(self, *args, **kwargs)

    return set_timesteps


class SchedulerMixin:
    """Loading/saving and class switching shared by every scheduler (used together with ``ConfigMixin``)."""

    config_name = SCHEDULER_CONFIG_NAME
    _compatibles: List[str] = []
    has_compatibles = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "set_timesteps" in cls.__dict__:
            cls.set_timesteps = _guard_set_timesteps(cls.__dict__["set_timesteps"])

    def next_sample(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``step(model_output, timestep, sample, **kwargs).prev_sample`` without the output object: the sample at
        the next timestep. Schedulers that can skip work only the output object carries (Euler's
        ``pred_original_sample``) override it with the same numbers; the denoise loops call this."""
        return self.step(model_output, timestep, sample, return_dict=False, **kwargs)[0]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike, None] = None,
        subfolder: Optional[str] = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ):
        """Build the scheduler from ``scheduler_config.json`` in a folder, file or Hub repo; remaining keyword
        arguments override config values."""
        config, kwargs, _ = cls.load_config(
            pretrained_model_name_or_path,
            subfolder=subfolder,
            return_unused_kwargs=True,
            return_commit_hash=True,
            **kwargs,
        )
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``scheduler_config.json`` into ``save_directory``."""
        self.save_config(save_directory=save_directory, push_to_hub=push_to_hub, **kwargs)

    @property
    def compatibles(self) -> list:
        """Classes that can be built from this scheduler's config (this class included)."""
        return self._get_compatibles()

    @classmethod
    def _get_compatibles(cls) -> list:
        from .. import schedulers as table

        found = []
        for name in dict.fromkeys([cls.__name__] + list(cls._compatibles)):
            if name in getattr(table, "_EXPORTS", {}):
                found.append(getattr(table, name))
        return found

    def __len__(self) -> int:
        return self.config.num_train_timesteps


_F32 = torch.float32


class SigmaIndexMixin:
    """Step bookkeeping of the schedulers that walk a ``sigmas`` array (Euler, Heun, LMS, KDPM2, ...).

    The first ``scale_model_input``/``step`` call finds its position by looking the timestep up in
    ``timesteps`` (the second match when an entry repeats), unless ``set_begin_index`` fixed it.
    """

    _step_index: Optional[int] = None
    _begin_index: Optional[int] = None
    #: sigma -> sqrt(sigma**2 + 1) as a float32 0-d tensor (the instance gets its own dict on first use)
    _scale_divisors: Dict[float, torch.Tensor] = {}

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

    def index_for_timestep(self, timestep: Union[float, torch.Tensor], schedule_timesteps: Optional[torch.Tensor] = None) -> int:
        if schedule_timesteps is None:
            schedule_timesteps = self.timesteps
        hits = (schedule_timesteps == timestep).nonzero()
        if len(hits) == 0:
            raise ValueError(
                f"`timestep` {float(timestep)} is not one of this scheduler's `timesteps`; pass a value taken from "
                "`scheduler.timesteps`."
            )
        return hits[1 if len(hits) > 1 else 0].item()

    def _init_step_index(self, timestep: Union[float, torch.Tensor]) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        self._step_index = self.index_for_timestep(timestep)

    def _noise_indices(self, timesteps: torch.Tensor, device: torch.device) -> List[int]:
        if self._begin_index is None:
            schedule = self.timesteps.to(device)
            return [self.index_for_timestep(t, schedule) for t in timesteps.to(device)]
        if self._step_index is not None:
            return [self._step_index] * timesteps.shape[0]
        return [self._begin_index] * timesteps.shape[0]

    def _sigma_for_noise(self, original_samples: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        idx = self._noise_indices(timesteps, original_samples.device)
        return broadcast_to(sigmas[idx], original_samples)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 + sigma * noise, sigma taken at ``timesteps`` (or at the current/begin index once set)."""
        return original_samples + noise * self._sigma_for_noise(original_samples, timesteps)

    def _max_sigma_init(self) -> Union[float, torch.Tensor]:
        top = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return top
        return (top**2 + 1) ** 0.5

    @property
    def init_noise_sigma(self) -> Union[float, torch.Tensor]:
        return self._max_sigma_init()

    def _current_sigma_for_scaling(self) -> float:
        return self._sigma_values[self._step_index]

    #: ``(the _sigma_values list it was built for, [float32 0-d 1 / sqrt(sigma**2 + 1) per step index])``
    _scale_table: Optional[Tuple[List[float], List[torch.Tensor]]] = None

    def scale_model_input(self, sample: torch.Tensor, timestep: Union[float, torch.Tensor]) -> torch.Tensor:
        """Divide the sample by sqrt(sigma**2 + 1) so the model sees unit-variance input."""
        i = self._step_index
        if i is None:
            self._init_step_index(timestep)
            i = self._step_index
        self.is_scale_input_called = True
        # float32 on CPU (every denoising step): one multiplication by a ready 0-d float32 reciprocal, within one
        # float32 rounding of the division (the loop parity tests hold the result to diffusers'). Right after a
        # UNet forward every Python call and every kernel pays cold caches: the table is read here directly, and
        # `mul` is a kernel the UNet has just run while `div` by a tensor is not (measured ~3 us per step)
        table = self._scale_table
        if table is not None and table[0] is self._sigma_values and sample.dtype is _F32 and sample.is_cpu:
            return sample.mul(table[1][i])
        return self._scale_by_sigma(sample)

    def _scale_by_sigma(self, sample: torch.Tensor) -> torch.Tensor:
        sigma = self._current_sigma_for_scaling()
        if sample.dtype is _F32 and sample.is_cpu:
            if type(self)._current_sigma_for_scaling is SigmaIndexMixin._current_sigma_for_scaling:
                values = self._sigma_values
                factors = [torch.tensor(1.0 / (s**2 + 1) ** 0.5, dtype=torch.float32) for s in values]
                self._scale_table = (values, factors)
                return sample.mul(factors[self._step_index])
            # schedulers scaling by in-between sigmas (KDPM2): divisors cached by value
            divisor = self._scale_divisors.get(sigma)
            if divisor is None:
                divisor = self._scale_divisor(sigma)
            return sample.div(divisor)
        return sample / ((sigma**2 + 1) ** 0.5)

    def _scale_divisor(self, sigma: float) -> torch.Tensor:
        divisors = self.__dict__.get("_scale_divisors")
        if divisors is None or len(divisors) >= 4096:
            divisors = self._scale_divisors = {}
        divisor = divisors[sigma] = torch.tensor((sigma**2 + 1) ** 0.5, dtype=torch.float32)
        return divisor


class AlphaNoiseMixin:
    """``add_noise`` of the alpha-parameterised schedulers: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        abar = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = torch.as_tensor(timesteps).to(original_samples.device)
        a = abar[timesteps]
        return broadcast_to(a**0.5, original_samples) * original_samples + broadcast_to((1 - a) ** 0.5, original_samples) * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target sqrt(abar) noise - sqrt(1 - abar) sample."""
        abar = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
        a = abar[torch.as_tensor(timesteps).to(sample.device)]
        return broadcast_to(a**0.5, sample) * noise - broadcast_to((1 - a) ** 0.5, sample) * sample


__all__ = [
    "AysSchedules",
    "KarrasDiffusionSchedulers",
    "SchedulerMixin",
    "SchedulerOutput",
]
