"""Small torch helpers shared by pipelines, blocks and schedulers.

``randn_tensor`` draws Gaussian noise with exactly the same random stream as diffusers for the same
generator(s), so seeded outputs match pixel for pixel.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

GeneratorInput = Union[torch.Generator, List[torch.Generator], None]


def _as_device(device: Union[str, torch.device, None]) -> Optional[torch.device]:
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, (str, int)):
        return torch.device(device)
    raise TypeError(f"`device` must be a str, torch.device or None, got {type(device).__name__}: {device!r}")


def randn_tensor(
    shape: Union[Sequence[int], torch.Size],
    generator: GeneratorInput = None,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    layout: Optional[torch.layout] = None,
) -> torch.Tensor:
    """Draw a standard-normal tensor of ``shape`` on ``device`` with ``dtype``.

    * One generator: a single ``torch.randn`` call with it.
    * A list of generators: one draw of shape ``(1, *shape[1:])`` per batch item, item ``i`` from
      ``generator[i]``, concatenated along dim 0 (a list of length 1 behaves like one generator).
    * A CPU generator with a non-CPU ``device``: the noise is drawn on the CPU and then moved, so the numbers
      do not depend on the target device.  An accelerator generator for a different device type is an error.
    """
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(isinstance(s, int) for s in shape):
        raise TypeError(f"`shape` must be a tuple or list of ints, got {shape!r}")
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError("`shape` must have at least one dimension (the batch size), got ()")
    target = _as_device(device)
    layout = layout or torch.strided

    gens: Optional[List[torch.Generator]] = None
    single: Optional[torch.Generator] = None
    if isinstance(generator, (list, tuple)):
        if len(generator) == 0:
            raise ValueError("`generator` is an empty list; pass None, one torch.Generator or one per batch item")
        if not all(isinstance(g, torch.Generator) for g in generator):
            bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
            raise TypeError(f"`generator` list must contain only torch.Generator objects, found {bad}")
        if len(generator) == 1:
            single = generator[0]
        else:
            gens = list(generator)
    elif generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator, a list of them or None, got {type(generator).__name__}"
            )
        single = generator

    draw_device = target
    out_device = target if target is not None else torch.device("cpu")
    first = single if single is not None else (gens[0] if gens else None)
    if first is not None and first.device.type != out_device.type:
        if first.device.type == "cpu":
            draw_device = torch.device("cpu")
            if out_device.type != "mps":
                logger.info(
                    "The generator is on 'cpu' but the tensor is wanted on %s: drawing on 'cpu' and moving it. "
                    "A generator on %s would avoid the copy.",
                    out_device,
                    out_device,
                )
        else:
            raise ValueError(
                f"Cannot draw a tensor for device {out_device} from a generator on {first.device.type}; "
                f"use a generator on 'cpu' or on {out_device.type}"
            )

    if gens is not None:
        if len(gens) != shape[0]:
            raise ValueError(
                f"`generator` is a list of {len(gens)} generators but the batch size (shape[0]) is {shape[0]}; "
                "pass exactly one generator per batch item"
            )
        item_shape = (1,) + shape[1:]
        parts = [torch.randn(item_shape, generator=g, device=draw_device, dtype=dtype, layout=layout) for g in gens]
        return torch.cat(parts, dim=0).to(out_device)
    return torch.randn(shape, generator=single, device=draw_device, dtype=dtype, layout=layout).to(out_device)


def is_compiled_module(module: object) -> bool:
    """True when ``module`` is the wrapper returned by ``torch.compile``."""
    # only an imported torch._dynamo can have compiled anything; `torch._dynamo` as an attribute would import it
    # (seconds) on the first pipeline construction
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        return False
    try:
        return isinstance(module, dynamo.eval_frame.OptimizedModule)
    except AttributeError:  # pragma: no cover - torch internals moved
        return False


def unwrap_module(module: object) -> object:
    """Return the original module behind ``torch.compile`` (and a peft ``PeftModel``'s base model)."""
    if is_compiled_module(module):
        module = module._orig_mod  # type: ignore[attr-defined]
    base = getattr(module, "base_model", None)
    if base is not None and type(module).__name__.startswith("PeftModel"):
        module = getattr(base, "model", module)
    return module
