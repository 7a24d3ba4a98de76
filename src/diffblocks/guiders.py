"""Guidance strategies used by the modular denoise loops.

``ClassifierFreeGuidance`` follows the guider contract of Modular Diffusers (``set_state``, ``prepare_inputs``,
``prepare_models``/``cleanup_models``, ``__call__(batches)``, ``num_conditions``, ``is_conditional``,
``enable``/``disable``): a block written against diffusers' interface works unchanged::

    guider.set_state(i, num_inference_steps, t)
    batches = guider.prepare_inputs({"encoder_hidden_states": (cond, uncond)})  # conditional, then unconditional
    for batch in batches:
        guider.prepare_models(unet)
        batch.noise_pred = unet(latents, t, encoder_hidden_states=batch.encoder_hidden_states)[0]
        guider.cleanup_models(unet)
    noise_pred = guider(batches)[0]

Our denoisers use ``run``, which does a whole step in one call and, by default (``batch_conditions=True``), runs the
model ONCE per step on the concatenated batch (``cat([uncond, cond])`` for every pair, the latents included, as
the classic Stable Diffusion pipelines do) instead of twice at batch ``B``::

    noise_pred = guider.run(predict, {"sample": (x, x), "encoder_hidden_states": (cond, uncond)}, i, n, t, unet)

where ``predict(values, identifier)`` runs the model on one batch (``values`` maps each field to that batch's
value; ``identifier`` is ``"pred_cond"``, ``"pred_uncond"`` or ``"pred_merged"``). ``BaseGuidance.run`` drives the
contract (``drive_guider``) and works for any guider; ``ClassifierFreeGuidance.run`` does the same work without
batch objects (between two UNet calls every Python call and object touched pays cold caches), with the numbers of
the contract path.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from .configuration import ConfigMixin, register_to_config

__all__ = [
    "BaseGuidance",
    "ClassifierFreeGuidance",
    "GuiderBatch",
    "GuiderOutput",
    "drive_guider",
    "rescale_noise_cfg",
    "guider_runner",
]


class GuiderOutput(NamedTuple):
    """Result of a guider call: the guided prediction (index 0) and the two branch predictions."""

    pred: torch.Tensor
    pred_cond: Optional[torch.Tensor] = None
    pred_uncond: Optional[torch.Tensor] = None


class GuiderBatch:
    """One model call's worth of inputs: fields are attributes; the denoiser stores ``noise_pred`` on it.

    ``identifier`` is ``"pred_cond"`` or ``"pred_uncond"`` (a ``"pred_merged"`` batch, unconditional rows first,
    is combined too).
    """

    def __init__(self, identifier: str, fields: Dict[str, Any]) -> None:
        self.__dict__.update(fields)
        self.__dict__["identifier"] = identifier
        self.__dict__["noise_pred"] = None

    def as_dict(self) -> Dict[str, Any]:
        """The batch's input fields (diffusers' guider batches are BlockStates with ``as_dict``)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("identifier", "noise_pred")}

    def __repr__(self) -> str:
        return f"GuiderBatch({self.identifier}: {', '.join(self.as_dict())})"


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0):
    """Pull the guided prediction's per-sample std back towards the conditional one (arXiv 2305.08891, eq. 15-16).

    Returns ``r * cfg * std(text) / std(cfg) + (1 - r) * cfg`` with stds over all non-batch dimensions.
    """
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * noise_cfg


def _cat_pair(name: str, cond: Any, uncond: Any) -> Any:
    if cond is None and uncond is None:
        return None
    if cond is None or uncond is None:
        missing = "conditional" if cond is None else "unconditional"
        raise ValueError(f"Guider input {name!r}: the {missing} value is None while the other branch has a value.")
    if cond is uncond and isinstance(cond, torch.Tensor):
        return torch.cat([cond, cond])
    if isinstance(cond, (list, tuple)):
        if len(cond) != len(uncond):
            raise ValueError(
                f"Guider input {name!r}: conditional and unconditional lists differ in length "
                f"({len(cond)} vs {len(uncond)})."
            )
        return [_cat_pair(f"{name}[{k}]", c, u) for k, (c, u) in enumerate(zip(cond, uncond))]
    return torch.cat([uncond, cond])


class BaseGuidance(ConfigMixin):
    """Base of the guiders: subclasses implement diffusers' guider contract (``set_state``, ``prepare_inputs``,
    ``prepare_models``/``cleanup_models``, ``__call__``); ``run`` drives it for one denoising step."""

    def set_state(self, step: int, num_inference_steps: int, timestep: Any = None) -> None:
        raise NotImplementedError

    def prepare_inputs(self, data: Dict[str, Any]) -> List["GuiderBatch"]:
        raise NotImplementedError

    def prepare_models(self, model: torch.nn.Module) -> None:
        """Hook run before each model call."""

    def cleanup_models(self, model: torch.nn.Module) -> None:
        """Hook run after each model call."""

    def __call__(self, batches: List["GuiderBatch"]) -> GuiderOutput:
        raise NotImplementedError

    def run(
        self,
        predict: Callable[[Dict[str, Any], str], torch.Tensor],
        inputs: Dict[str, Any],
        step: int,
        num_inference_steps: int,
        timestep: Any = None,
        model: Optional[torch.nn.Module] = None,
    ) -> torch.Tensor:
        """The guided prediction of one denoising step.

        ``inputs`` maps each model input to a ``(cond, uncond)`` pair (or to one value shared by every batch);
        ``predict(values, identifier)`` is called once per batch the guider needs, with ``values`` mapping each input
        to that batch's value, and returns the model's prediction. ``model`` (if given) is passed to
        ``prepare_models``/``cleanup_models`` around each call.
        """
        return drive_guider(self, predict, inputs, step, num_inference_steps, timestep, model)


def drive_guider(guider: Any, predict: Callable[[Dict[str, Any], str], torch.Tensor], inputs: Dict[str, Any],
                 step: int, num_inference_steps: int, timestep: Any = None,
                 model: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """One step through the guider contract: ``BaseGuidance.run`` for any object implementing it (guiders
    without a ``run`` method of their own, e.g. written against diffusers' interface)."""
    guider.set_state(step, num_inference_steps, timestep)
    batches = guider.prepare_inputs(inputs)
    for batch in batches:
        if model is not None:
            guider.prepare_models(model)
        batch.noise_pred = predict(batch.__dict__, batch.identifier)
        if model is not None:
            guider.cleanup_models(model)
    return guider(batches)[0]


def _planned_setting(name: str, cast: type) -> property:
    """A guider setting stored as ``_<name>`` whose changes refresh the guider's per-step plan."""
    private = "_" + name

    def get(self):
        return self.__dict__[private]

    def set(self, value):
        self.__dict__[private] = cast(value)
        self._update_plan()

    return property(get, set, doc=f"``{name}`` (changing it takes effect from the next step).")


def guider_runner(guider: Any) -> Callable[..., torch.Tensor]:
    """What the denoisers call each step: ``guider.run``, or :func:`drive_guider` bound to a guider that has only
    diffusers' interface (no ``run``). Resolved once per run."""
    run = getattr(guider, "run", None)
    return run if run is not None else partial(drive_guider, guider)


class ClassifierFreeGuidance(BaseGuidance):
    """Classifier-free guidance: ``uncond + guidance_scale * (cond - uncond)``.

    Args:
        guidance_scale: strength of the guidance; values close to 1.0 (0.0 with the original formulation) turn
            guidance off and only the conditional branch runs.
        guidance_rescale: rescale factor of arXiv 2305.08891 (0 disables it).
        use_original_formulation: use ``cond + guidance_scale * (cond - uncond)``.
        start, stop: fractions of the denoising steps between which guidance is applied.
        enabled: master switch (``enable()`` / ``disable()``).
        batch_conditions: ``run`` puts both branches through the model in one call (default) or in two.
    """

    config_name = "guider_config.json"
    _input_predictions = ("pred_cond", "pred_uncond")
    #: ``run`` may skip the batch objects: False for subclasses overriding a method of the guider contract
    _run_shortcut = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = ("set_state", "prepare_inputs", "prepare_models", "cleanup_models", "__call__", "forward",
                 "_is_cfg_enabled")
        cls._run_shortcut = all(getattr(cls, n) is getattr(ClassifierFreeGuidance, n) for n in names)

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
        batch_conditions: bool = True,
    ) -> None:
        if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool):
            raise TypeError(f"`guidance_scale` must be a number, got {guidance_scale!r}.")
        if not isinstance(guidance_rescale, (int, float)) or not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"`guidance_rescale` must be a number in [0.0, 1.0], got {guidance_rescale!r}.")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"`start` must be in [0.0, 1.0), got {start!r}.")
        if not start <= stop <= 1.0:
            raise ValueError(f"`stop` must be in [start, 1.0] = [{start}, 1.0], got {stop!r}.")
        self._start = float(start)
        self._stop = float(stop)
        self._windowed = self._start > 0.0 or self._stop < 1.0
        self._enabled = bool(enabled)
        self._guidance_scale = float(guidance_scale)
        self._guidance_rescale = float(guidance_rescale)
        self._use_original_formulation = bool(use_original_formulation)
        self._batch_conditions = bool(batch_conditions)
        self._update_plan()
        self._step: Optional[int] = None
        self._num_inference_steps: Optional[int] = None
        self._timestep = None
        self._count_prepared = 0
        self._merged_cache: Dict[str, Tuple[Any, Any, Any]] = {}

    # ----------------------------------------------------------------------------------------------- state
    def enable(self) -> None:
        self._enabled = True
        self._update_plan()

    def disable(self) -> None:
        self._enabled = False
        self._update_plan()

    # the settings are properties so that ``run`` reads one precomputed value per step (``_plain_weight``)
    guidance_scale = _planned_setting("guidance_scale", float)
    guidance_rescale = _planned_setting("guidance_rescale", float)
    use_original_formulation = _planned_setting("use_original_formulation", bool)
    batch_conditions = _planned_setting("batch_conditions", bool)

    def _update_plan(self) -> None:
        # the guidance weight when ``run`` may take its shortcut (plain batched CFG, guidance on), else None
        plain = (
            self._run_shortcut
            and self._enabled
            and self._batch_conditions
            and self._guidance_rescale == 0.0
            and not self._use_original_formulation
            and not math.isclose(self._guidance_scale, 1.0)
        )
        self._plain_weight = self._guidance_scale if plain else None

    def set_state(self, step: int, num_inference_steps: int, timestep: Any = None) -> None:
        """Record the current step (guidance may be limited to ``[start, stop)`` of the steps)."""
        self._step = step
        self._num_inference_steps = num_inference_steps
        self._timestep = timestep
        self._count_prepared = 0

    def new(self, **overrides: Any) -> "ClassifierFreeGuidance":
        """A new guider with this one's config updated by ``overrides``."""
        return self.__class__.from_config(self.config, **overrides)

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled:
            return False
        reference = 0.0 if self.use_original_formulation else 1.0
        if math.isclose(self.guidance_scale, reference):
            return False
        n = self._num_inference_steps
        if n is not None and self._step is not None and (self._start > 0.0 or self._stop < 1.0):
            return int(self._start * n) <= self._step < int(self._stop * n)
        return True

    @property
    def num_conditions(self) -> int:
        """2 when the unconditional branch is needed at the current step, else 1."""
        return 2 if self._is_cfg_enabled() else 1

    @property
    def is_conditional(self) -> bool:
        """True while the conditional batch is being prepared (diffusers' ``is_conditional``)."""
        return self._count_prepared == 1

    # ----------------------------------------------------------------------------------------------- batches
    def prepare_inputs(self, data: Dict[str, Any]) -> List[GuiderBatch]:
        """Split ``{field: (cond, uncond)}`` into the batches to run: the conditional batch, then the unconditional
        one while guidance is on (diffusers' contract; plain values are shared by all batches). ``run`` is the one
        that batches both branches into one model call."""
        if not self._is_cfg_enabled():
            fields = {k: (v[0] if isinstance(v, tuple) else v) for k, v in data.items()}
            self._count_prepared = 1
            return [GuiderBatch("pred_cond", fields)]
        batches = []
        for idx, ident in enumerate(self._input_predictions):
            fields = {k: (v[idx] if isinstance(v, tuple) else v) for k, v in data.items()}
            batches.append(GuiderBatch(ident, fields))
        self._count_prepared = 2
        return batches

    @staticmethod
    def _merge(key: str, value: Tuple[Any, Any], cache: Dict[str, Tuple[Any, Any, Any]]) -> Any:
        cond, uncond = value
        merged = _cat_pair(key, cond, uncond)
        if cond is not uncond:
            cache[key] = (cond, uncond, merged)
        return merged

    def prepare_inputs_from_block_state(self, data: Any, input_fields: Dict[str, Any]) -> List[GuiderBatch]:
        """Like ``prepare_inputs`` with fields named as attributes of ``data``: ``{field: attr | (cond, uncond)}``."""
        resolved = {}
        for key, spec in input_fields.items():
            if isinstance(spec, tuple):
                resolved[key] = (getattr(data, spec[0], None), getattr(data, spec[1], None))
            else:
                resolved[key] = getattr(data, spec, None)
        return self.prepare_inputs(resolved)

    def run(self, predict, inputs, step, num_inference_steps, timestep=None, model=None) -> torch.Tensor:
        """``BaseGuidance.run``. With ``batch_conditions`` (default) both branches go through the model in ONE call
        on the concatenated batch (unconditional rows first, embeddings concatenated once per run); guidance off
        runs the conditional batch only; ``batch_conditions=False`` makes two calls. The numbers are those of the
        contract path (``forward``). Subclasses overriding a contract method go through it (``drive_guider``)."""
        self._step = step
        self._num_inference_steps = num_inference_steps
        self._timestep = timestep
        w = self._plain_weight
        if w is None or (
            self._windowed
            and not int(self._start * num_inference_steps) <= step < int(self._stop * num_inference_steps)
        ):
            # not plain CFG at this step (plain: every step of a usual run)
            if not self._run_shortcut:
                return drive_guider(self, predict, inputs, step, num_inference_steps, timestep, model)
            if not self._is_cfg_enabled():
                self._count_prepared = 1
                return predict({k: (v[0] if isinstance(v, tuple) else v) for k, v in inputs.items()}, "pred_cond")
            self._count_prepared = 2
            if not self._batch_conditions:
                pred_cond, pred_uncond = (
                    predict({k: (v[idx] if isinstance(v, tuple) else v) for k, v in inputs.items()}, ident)
                    for idx, ident in enumerate(self._input_predictions)
                )
                return self.forward(pred_cond, pred_uncond)[0]
        # one model call on the concatenated batch: cat([uncond, cond]) for every pair
        values = {}
        cache = self._merged_cache
        for key, value in inputs.items():
            if not isinstance(value, tuple):
                values[key] = value
                continue
            cond, uncond = value
            if cond is uncond and type(cond) is torch.Tensor:
                # the latents: the same tensor on both sides, a new one every step
                values[key] = torch.cat((cond, cond))
                continue
            hit = cache.get(key)
            # the embeddings are the same objects on every step: concatenated once per run
            if hit is not None and hit[0] is cond and hit[1] is uncond:
                values[key] = hit[2]
            else:
                values[key] = self._merge(key, value, cache)
        self._count_prepared = 2
        pred_uncond, pred_cond = predict(values, "pred_merged").chunk(2)
        if w is None:
            return self.forward(pred_cond, pred_uncond)[0]
        # plain CFG: forward()'s uncond + w * (cond - uncond) in `add` kernels, the kernel the scheduler step runs
        # next (its code is warm by then)
        return pred_uncond.add(pred_cond.add(pred_uncond, alpha=-1.0), alpha=w)

    def reset_cache(self) -> None:
        """Forget the concatenated embeddings kept between steps."""
        self._merged_cache = {}

    # ----------------------------------------------------------------------------------------------- combine
    def __call__(self, batches: List[GuiderBatch]) -> GuiderOutput:
        if len(batches) == 1:
            batch = batches[0]
            pred = batch.noise_pred
            if batch.identifier != "pred_merged":
                return self.forward(pred)
            pred_uncond, pred_cond = pred.chunk(2)
            return self.forward(pred_cond, pred_uncond)
        if not batches:
            raise ValueError("`batches` must hold at least one batch with a `noise_pred`.")
        preds = {b.identifier: b.noise_pred for b in batches}
        return self.forward(preds["pred_cond"], preds["pred_uncond"])

    def forward(self, pred_cond: torch.Tensor, pred_uncond: Optional[torch.Tensor] = None) -> GuiderOutput:
        """Combine branch predictions; with guidance off (or no ``pred_uncond``) the conditional one is returned."""
        if pred_uncond is None or not self._is_cfg_enabled():
            return GuiderOutput(pred_cond, pred_cond, pred_uncond)
        # diffusers' formulas, written as `add` kernels: add(a, b, alpha=w) = a + w * b
        if self.use_original_formulation:
            pred = pred_cond.add(pred_cond.add(pred_uncond, alpha=-1.0), alpha=self.guidance_scale)
        else:
            pred = pred_uncond.add(pred_cond.add(pred_uncond, alpha=-1.0), alpha=self.guidance_scale)
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred, pred_cond, pred_uncond)
