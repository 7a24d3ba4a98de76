"""LoRA loading for pipelines through ``peft``.

Reads the LoRA files people download (peft/diffusers ``lora_A``/``lora_B``, the older attention-processor and
``lora_linear_layer`` layouts, kohya/A1111 ``lora_unet_...`` files with ``.alpha``), converts them to one peft layout
and injects them into the pipeline's ``unet`` and text encoders.  Adapter management (weights, enable/disable,
fuse/unfuse, delete, unload) works on any object that exposes those components as attributes, so the same mixin
serves classic pipelines and ModularPipelines.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"

_COMPONENT_PREFIXES = ("unet", "text_encoder", "text_encoder_2")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2"}

# words that keep their underscore when a kohya name is split without a model to look names up in
_COMPOUND_WORDS = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "proj_in",
    "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "add_embedding", "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "final_layer_norm", "layer_norm1", "layer_norm2", "text_projection", "conv_act", "norm_out",
}


# --------------------------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------------------------


def _read_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, str]]]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        tensors = {}
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
        return tensors, metadata
    return torch.load(path, map_location="cpu", weights_only=True), None


def _pick_local_file(folder: str, use_safetensors: Optional[bool]) -> str:
    names = sorted(os.listdir(folder))
    if use_safetensors is not False:
        if LORA_WEIGHT_NAME_SAFE in names:
            return os.path.join(folder, LORA_WEIGHT_NAME_SAFE)
        candidates = [n for n in names if n.endswith(".safetensors")
                      and not any(bad in n for bad in ("scheduler", "optimizer", "checkpoint"))]
        if candidates:
            if len(candidates) > 1:
                logger.warning("Several .safetensors files in %s (%s); loading %s. Pass `weight_name` to choose.",
                               folder, candidates, candidates[0])
            return os.path.join(folder, candidates[0])
        if use_safetensors:
            raise ValueError(f"`use_safetensors=True` but no .safetensors LoRA file was found in {folder!r}")
    if LORA_WEIGHT_NAME in names:
        return os.path.join(folder, LORA_WEIGHT_NAME)
    bins = [n for n in names if n.endswith(".bin")
            and not any(bad in n for bad in ("scheduler", "optimizer", "checkpoint"))]
    if bins:
        return os.path.join(folder, bins[0])
    raise ValueError(f"No LoRA weight file (.safetensors or .bin) was found in {folder!r}; pass `weight_name`.")


def _resolve_lora_file(
    name_or_path: str, weight_name: Optional[str], subfolder: Optional[str], use_safetensors: Optional[bool],
    hub_kwargs: Dict[str, Any],
) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    folder = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
    if os.path.isdir(folder):
        if weight_name is not None:
            path = os.path.join(folder, weight_name)
            if not os.path.isfile(path):
                raise ValueError(f"`weight_name` {weight_name!r} was not found in {folder!r}")
            return path
        return _pick_local_file(folder, use_safetensors)
    from ..hub import resolve_file

    if weight_name is None:
        if hub_kwargs.get("local_files_only"):
            raise ValueError("When using the offline mode, you must specify a `weight_name`.")
        order = [LORA_WEIGHT_NAME_SAFE, LORA_WEIGHT_NAME] if use_safetensors is not False else [LORA_WEIGHT_NAME]
        error: Optional[Exception] = None
        for name in order:
            try:
                return resolve_file(name_or_path, name, subfolder=subfolder, **hub_kwargs)
            except Exception as exc:  # try the next conventional name
                error = exc
        raise ValueError(
            f"Could not find a LoRA file named {order} in {name_or_path!r}; pass `weight_name`."
        ) from error
    return resolve_file(name_or_path, weight_name, subfolder=subfolder, **hub_kwargs)


# --------------------------------------------------------------------------------------------------------------
# key layouts -> peft layout
# --------------------------------------------------------------------------------------------------------------


def _split_words(name: str) -> str:
    """``down_blocks_0_attentions_0_proj_in`` -> ``down_blocks.0.attentions.0.proj_in`` without a model."""
    tokens = name.split("_")
    parts: List[str] = []
    i = 0
    while i < len(tokens):
        for width in (3, 2):
            joined = "_".join(tokens[i:i + width])
            if i + width <= len(tokens) and joined in _COMPOUND_WORDS:
                parts.append(joined)
                i += width
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


_SGM_RESNET = (("in_layers_0", "norm1"), ("in_layers_2", "conv1"), ("out_layers_0", "norm2"),
               ("out_layers_3", "conv2"), ("emb_layers_1", "time_emb_proj"), ("skip_connection", "conv_shortcut"))
_SGM_TOP = {"time_embed_0": "time_embedding_linear_1", "time_embed_2": "time_embedding_linear_2",
            "label_emb_0_0": "add_embedding_linear_1", "label_emb_0_2": "add_embedding_linear_2",
            "out_0": "conv_norm_out", "out_2": "conv_out", "input_blocks_0_0": "conv_in"}


def _resnet_part(rest: str) -> str:
    for old, new in _SGM_RESNET:
        if rest == old or rest.startswith(old + "_"):
            return new + rest[len(old):]
    return rest


def _sgm_to_diffusers(name: str, layers_per_block: int) -> str:
    """Kohya SDXL UNet names use the original (SGM) block numbering; rewrite them to diffusers' block names."""
    if name in _SGM_TOP:
        return _SGM_TOP[name]
    per = layers_per_block + 1
    match = re.match(r"^input_blocks_(\d+)_(\d+)_(.*)$", name)
    if match:
        i, j, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        block, layer = (i - 1) // per, (i - 1) % per
        if layer == layers_per_block:
            return f"down_blocks_{block}_downsamplers_0_conv"
        if j == 0:
            return f"down_blocks_{block}_resnets_{layer}_{_resnet_part(rest)}"
        return f"down_blocks_{block}_attentions_{layer}_{rest}"
    match = re.match(r"^middle_block_(\d+)_(.*)$", name)
    if match:
        j, rest = int(match.group(1)), match.group(2)
        if j == 1:
            return f"mid_block_attentions_0_{rest}"
        return f"mid_block_resnets_{0 if j == 0 else 1}_{_resnet_part(rest)}"
    match = re.match(r"^output_blocks_(\d+)_(\d+)_(.*)$", name)
    if match:
        i, j, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        block, layer = i // per, i % per
        if j == 0:
            return f"up_blocks_{block}_resnets_{layer}_{_resnet_part(rest)}"
        if j == 2 or rest.startswith("conv"):
            return f"up_blocks_{block}_upsamplers_0_conv"
        return f"up_blocks_{block}_attentions_{layer}_{rest}"
    return name


def _kohya_lookup(module_names: Iterable[str]) -> Dict[str, str]:
    table: Dict[str, str] = {}
    for name in module_names:
        if not name:
            continue
        flat = name.replace(".", "_")
        table[flat] = name
        # transformers 5 CLIP models have no `text_model` level; kohya files always name it
        table.setdefault("text_model_" + flat, name)
    return table


def _is_kohya(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return bool(keys) and all(k.startswith(tuple(_KOHYA_PREFIXES)) for k in keys)


def _convert_kohya(
    state_dict: Dict[str, torch.Tensor], module_names: Any,
    layers_per_block: Optional[int] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    if callable(module_names):
        module_names = module_names()
    tables = {c: _kohya_lookup(names) for c, names in (module_names or {}).items()}
    out: Dict[str, torch.Tensor] = {}
    alphas: Dict[str, float] = {}
    leftovers: List[str] = []
    dropped_dora = False
    for key, value in state_dict.items():
        prefix = max((p for p in _KOHYA_PREFIXES if key.startswith(p)), key=len)
        component = _KOHYA_PREFIXES[prefix]
        rest = key[len(prefix):]
        name, _, suffix = rest.partition(".")
        if suffix == "dora_scale":
            dropped_dora = True
            continue
        if component == "unet" and name.startswith(("input_blocks_", "middle_block_", "output_blocks_",
                                                     "time_embed_", "label_emb_", "out_")):
            name = _sgm_to_diffusers(name, 2 if layers_per_block is None else int(layers_per_block))
        if component in tables:
            module = tables[component].get(name)
        else:
            module = _split_words(name)
        if module is None or suffix not in ("lora_down.weight", "lora_up.weight", "alpha"):
            leftovers.append(key)
            continue
        if suffix == "alpha":
            alphas[f"{component}.{module}.alpha"] = float(value.item() if torch.is_tensor(value) else value)
        else:
            kind = "lora_A" if suffix.startswith("lora_down") else "lora_B"
            out[f"{component}.{module}.{kind}.weight"] = value
    if dropped_dora:
        warnings.warn("DoRA `dora_scale` entries are not supported and were dropped from the LoRA state dict.")
    if leftovers:
        raise ValueError(f"The following keys have not been correctly renamed: {', '.join(sorted(leftovers)[:10])}")
    return out, alphas


_OLD_ATTN = re.compile(r"\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.")


def _convert_diffusers(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    keys = list(state_dict)
    prefixed = any(k.split(".", 1)[0] in _COMPONENT_PREFIXES for k in keys)
    out: Dict[str, torch.Tensor] = {}
    alphas: Dict[str, float] = {}
    dropped_dora = False
    for key, value in state_dict.items():
        new = key if prefixed else f"unet.{key}"
        if new.endswith("dora_scale"):
            dropped_dora = True
            continue
        new = new.replace(".processor.", ".")

        def old(match: "re.Match[str]") -> str:
            layer = "to_out.0" if match.group(1) == "to_out" else match.group(1)
            return f".{layer}.{'lora_A' if match.group(2) == 'down' else 'lora_B'}."

        new = _OLD_ATTN.sub(old, new)
        for old_part, new_part in ((".lora_linear_layer.down.", ".lora_A."), (".lora_linear_layer.up.", ".lora_B."),
                                   (".lora.down.", ".lora_A."), (".lora.up.", ".lora_B."),
                                   (".lora_down.", ".lora_A."), (".lora_up.", ".lora_B.")):
            new = new.replace(old_part, new_part)
        if new.endswith(".alpha"):
            alphas[new] = float(value.item() if torch.is_tensor(value) else value)
            continue
        out[new] = value
    if dropped_dora:
        warnings.warn("DoRA `dora_scale` entries are not supported and were dropped from the LoRA state dict.")
    return out, alphas


def _check_lora_keys(state_dict: Dict[str, Any]) -> None:
    if not isinstance(state_dict, dict):
        raise TypeError(f"a LoRA state dict must be a dict of tensors, got {type(state_dict).__name__}")
    if not state_dict:
        raise ValueError("The LoRA state dict is empty.")
    bad = [k for k in state_dict if "lora" not in k and not k.endswith(".alpha")]
    if bad:
        raise ValueError(
            "Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring. Keys that match no "
            f"known LoRA layout (peft `lora_A`/`lora_B`, `lora.down`/`lora.up`, kohya `lora_unet_`/`lora_te_`): "
            f"{sorted(bad)[:5]}{' ...' if len(bad) > 5 else ''} ({len(bad)} of {len(state_dict)} keys)"
        )


def convert_lora_state_dict(
    state_dict: Dict[str, torch.Tensor],
    module_names: Optional[Dict[str, Iterable[str]]] = None,
    unet_config: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Convert any supported LoRA layout to prefixed peft keys.

    Returns ``(state_dict, network_alphas)`` with keys ``<component>.<module>.lora_A.weight`` / ``lora_B.weight``
    and ``<component>.<module>.alpha``.  ``module_names`` maps a component to its module names; kohya names are
    looked up there (without it they are split on a list of known words).  Kohya SDXL files with the original
    ``input_blocks``/``middle_block``/``output_blocks`` numbering are remapped with ``unet_config``'s
    ``layers_per_block`` (2 when not given).
    """
    _check_lora_keys(state_dict)
    if _is_kohya(state_dict):
        layers = None
        if unet_config is not None:
            layers = unet_config.get("layers_per_block") if isinstance(unet_config, dict) else getattr(
                unet_config, "layers_per_block", None)
        if isinstance(layers, (list, tuple)):
            layers = layers[0]
        return _convert_kohya(state_dict, module_names, layers)
    return _convert_diffusers(state_dict)


# --------------------------------------------------------------------------------------------------------------
# model side
# --------------------------------------------------------------------------------------------------------------


def _tuner_layers(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    # an MRO lookup, not isinstance: BaseTunerLayer is an ABC, whose first check per module class scans all of
    # peft's layer classes
    return [m for m in model.modules() if BaseTunerLayer in type(m).__mro__]


def _model_adapters(model: Optional[nn.Module]) -> List[str]:
    config = getattr(model, "peft_config", None) if model is not None else None
    return list(config.keys()) if isinstance(config, dict) else []


def _resolve_module_name(name: str, names: set) -> Optional[str]:
    if name in names:
        return name
    if name.startswith("text_model.") and name[len("text_model."):] in names:
        return name[len("text_model."):]
    if "text_model." + name in names:
        return "text_model." + name
    return None


def _most_common(values: Dict[str, Any]) -> Any:
    return Counter(values.values()).most_common(1)[0][0]


def _build_config(
    state_dict: Dict[str, torch.Tensor], alphas: Dict[str, float], metadata: Optional[Dict[str, Any]]
):
    from peft import LoraConfig

    if metadata:
        return LoraConfig(**metadata)
    ranks = {k[: -len(".lora_B.weight")]: v.shape[1] for k, v in state_dict.items() if k.endswith(".lora_B.weight")}
    if not ranks:
        raise ValueError(f"the LoRA weights hold no `lora_B` (up) matrix; keys: {sorted(state_dict)[:5]}")
    r = _most_common(ranks)
    rank_pattern = {m: rank for m, rank in ranks.items() if rank != r}
    if alphas:
        per_module = {m: alphas.get(f"{m}.alpha", float(ranks[m])) for m in ranks}
        lora_alpha = _most_common(per_module)
        alpha_pattern = {m: a for m, a in per_module.items() if a != lora_alpha}
    else:
        lora_alpha, alpha_pattern = r, {}
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        target_modules=sorted(ranks),
        init_lora_weights=False,
        use_dora=any("lora_magnitude_vector" in k for k in state_dict),
        lora_bias=any(k.endswith("lora_B.bias") for k in state_dict),
    )


_PARAM_KINDS = ("A.weight", "B.weight", "B.bias", "magnitude_vector", "magnitude_vector.weight")


class _LoraPlan:
    """Everything needed to inject one adapter into one model, checked before the model is touched."""

    def __init__(self, model, component, adapter_name, config, weights):
        self.model = model
        self.component = component
        self.adapter_name = adapter_name
        self.config = config
        self.weights = weights  # {module name: {param kind: tensor}}
        self.undo: Optional[Any] = None  # set by inject_lora_plan


def _base_of(module: nn.Module) -> nn.Module:
    # an already injected peft layer wraps the original module
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def _expected_shapes(base: nn.Module, rank: int) -> Dict[str, Tuple[int, ...]]:
    if isinstance(base, nn.Linear):
        return {"A.weight": (rank, base.in_features), "B.weight": (base.out_features, rank),
                "B.bias": (base.out_features,)}
    if isinstance(base, nn.Conv2d):
        kh, kw = base.kernel_size
        return {"A.weight": (rank, base.in_channels // base.groups, kh, kw),
                "B.weight": (base.out_channels, rank, 1, 1), "B.bias": (base.out_channels,)}
    return {}


def plan_lora_for_model(
    model: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    network_alphas: Optional[Dict[str, float]] = None,
    adapter_name: Optional[str] = None,
    metadata: Optional[Dict[str, Any]] = None,
    component: str = "model",
) -> _LoraPlan:
    """Check one adapter (un-prefixed peft keys) against ``model`` without changing it.

    Every key must name an existing Linear/Conv2d module and a LoRA parameter of the right shape; the adapter name must
    be free.  Raises ValueError naming the offending keys.
    """
    existing = _model_adapters(model)
    if adapter_name is None:
        adapter_name = f"default_{len(existing)}"
    if adapter_name in existing:
        raise ValueError(f"Adapter name {adapter_name} already in use in the model - please select a new adapter name.")
    modules = dict(model.named_modules())
    names = set(modules)
    renamed: Dict[str, torch.Tensor] = {}
    weights: Dict[str, Dict[str, torch.Tensor]] = {}
    missing: List[str] = []
    bad_kind: List[str] = []
    for key, value in state_dict.items():
        module, sep, param = key.partition(".lora_")
        target = _resolve_module_name(module, names) if sep else None
        if target is None:
            missing.append(key)
            continue
        if param not in _PARAM_KINDS:
            bad_kind.append(key)
            continue
        if not torch.is_tensor(value):
            raise TypeError(f"LoRA weight {key!r} must be a tensor, got {type(value).__name__}")
        renamed[f"{target}.lora_{param}"] = value
        weights.setdefault(target, {})[param] = value
    if missing:
        raise ValueError(
            f"LoRA weights for {component} ({type(model).__name__}) name modules it does not have: "
            f"{sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    if bad_kind:
        raise ValueError(
            f"LoRA weights for {component} hold parameters other than lora_A/lora_B weights, lora_B bias and DoRA "
            f"magnitudes: {sorted(bad_kind)[:5]}"
        )
    wrong: List[str] = []
    for target, params in weights.items():
        if "A.weight" not in params or "B.weight" not in params:
            raise ValueError(f"LoRA weights for {component} module {target!r} need both lora_A and lora_B weights; "
                             f"got {sorted('lora_' + p for p in params)}")
        base = _base_of(modules[target])
        expected = _expected_shapes(base, int(params["A.weight"].shape[0]))
        if not expected:
            raise ValueError(f"LoRA on {component} module {target!r} ({type(base).__name__}) is not supported; "
                             "expected a Linear or Conv2d layer")
        for kind, shape in expected.items():
            if kind in params and tuple(params[kind].shape) != shape:
                wrong.append(f"{target}.lora_{kind}: {tuple(params[kind].shape)} (expected {shape})")
    if wrong:
        raise ValueError(f"LoRA weights for {component} do not fit the model's layers: {wrong[:5]}")
    network_alphas = network_alphas or {}
    alphas: Dict[str, float] = {}
    for key, value in network_alphas.items():
        target = _resolve_module_name(key[: -len(".alpha")], names)
        if target is not None:
            alphas[f"{target}.alpha"] = value
    config = _build_config(renamed, alphas, metadata)
    return _LoraPlan(model, component, adapter_name, config, weights)


class _Node(nn.Module):
    """A bare container of the injection tree (see :func:`_injection_tree`)."""


def _injection_tree(model: nn.Module, targets: Iterable[str]) -> nn.Module:
    """A stand-in model holding only the target modules, under their real names in ``model``.

    peft is handed this tree instead of the model: it then walks a few dozen modules rather than the whole network
    (its ``isinstance`` checks against its abstract layer class cost a subclass scan per new module class), and it
    does not take our CLIP encoders (whose ``config`` has a ``model_type``) for transformers models, for which it
    would first build transformers' whole checkpoint-conversion table.  Our target names are already the model's
    real module names, so neither is needed.  The layers peft creates are moved into ``model`` afterwards.
    """
    root = _Node()
    for name in targets:
        parts = name.split(".")
        node = root
        for part in parts[:-1]:
            child = node._modules.get(part)
            if child is None:
                child = _Node()
                node.add_module(part, child)
            node = child
        node.add_module(parts[-1], model.get_submodule(name))
    return root


def inject_lora_plan(plan: _LoraPlan) -> str:
    """Inject a checked adapter and write its weights; on any error the adapter is removed again.

    ``plan.undo()`` takes a successful injection back out (used when a later component fails).
    """
    from peft import inject_adapter_in_model

    model, adapter_name = plan.model, plan.adapter_name
    targets = list(plan.weights)
    existing = getattr(model, "peft_config", None)
    first = not isinstance(existing, dict) or not existing
    had_config = hasattr(model, "peft_config")
    active_before = [(layer, list(layer.active_adapters)) for layer in _tuner_layers(model)]
    root = _injection_tree(model, targets)
    if not first:
        root.peft_config = existing
    replaced: List[Tuple[nn.Module, str, nn.Module]] = []
    grads: List[Tuple[nn.Parameter, bool]] = []

    def undo() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for parent, leaf, old in reversed(replaced):
                setattr(parent, leaf, old)
            for layer, active in active_before:
                if adapter_name in getattr(layer, "lora_A", {}):
                    layer.delete_adapter(adapter_name)
                layer.set_adapter(active)
            config = getattr(root, "peft_config", None)
            if isinstance(config, dict):
                config.pop(adapter_name, None)
            if first:
                if had_config:
                    model.peft_config = existing
                elif hasattr(model, "peft_config"):
                    del model.peft_config
            for param, flag in grads:
                param.requires_grad_(flag)

    try:
        if first:
            # like peft on a whole model: the base weights stop requiring gradients once an adapter is injected
            grads = [(param, param.requires_grad) for param in model.parameters()]
            for param, _ in grads:
                param.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(plan.config, root, adapter_name=adapter_name)
        model.peft_config = root.peft_config
        for name in targets:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            old = parent._modules[leaf]
            new = root.get_submodule(name)
            if new is not old:
                setattr(parent, leaf, new)
                replaced.append((parent, leaf, old))
        with torch.no_grad():
            for target, params in plan.weights.items():
                layer = model.get_submodule(target)
                if adapter_name not in getattr(layer, "lora_A", {}):
                    raise ValueError(
                        f"the LoRA config (adapter metadata) of {plan.component} does not target {target!r}, which "
                        f"the weights name; target_modules: {plan.config.target_modules!r}"
                    )
                for kind, value in params.items():
                    param = _lora_parameter(layer, kind, adapter_name)
                    if param.shape != value.shape:
                        raise ValueError(f"LoRA weight {target}.lora_{kind} has shape {tuple(value.shape)}, the "
                                         f"layer expects {tuple(param.shape)}")
                    param.copy_(value)
        # as with peft on a whole model (and in diffusers): the adapter just loaded becomes the only active one
        for layer in _tuner_layers(model):
            layer.set_adapter([adapter_name])
    except Exception:
        undo()
        raise
    plan.undo = undo
    return adapter_name


def _lora_parameter(layer: nn.Module, kind: str, adapter_name: str) -> torch.Tensor:
    if kind == "A.weight":
        return layer.lora_A[adapter_name].weight
    if kind == "B.weight":
        return layer.lora_B[adapter_name].weight
    if kind == "B.bias":
        bias = layer.lora_B[adapter_name].bias
        if bias is None:
            raise ValueError(f"the injected LoRA layer {type(layer).__name__} has no lora_B bias")
        return bias
    return layer.lora_magnitude_vector[adapter_name].weight


def load_lora_into_model(
    model: nn.Module,
    state_dict: Dict[str, torch.Tensor],
    network_alphas: Optional[Dict[str, float]] = None,
    adapter_name: Optional[str] = None,
    metadata: Optional[Dict[str, Any]] = None,
    component: str = "model",
) -> str:
    """Inject one LoRA adapter (un-prefixed peft keys) into ``model``; returns the adapter name used.

    The weights are checked against the model first; a failed load leaves the model as it was.
    """
    return inject_lora_plan(plan_lora_for_model(model, state_dict, network_alphas, adapter_name, metadata, component))


def _active_adapters(model: nn.Module) -> List[str]:
    for layer in _tuner_layers(model):
        active = layer.active_adapter
        return [active] if isinstance(active, str) else list(active)
    return []


def _delete_adapter(model: nn.Module, adapter_name: str) -> None:
    for layer in _tuner_layers(model):
        if adapter_name in getattr(layer, "lora_A", {}) or adapter_name in getattr(layer, "lora_embedding_A", {}):
            layer.delete_adapter(adapter_name)
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict):
        config.pop(adapter_name, None)
        if not config:
            _remove_lora_layers(model)


def _remove_lora_layers(model: nn.Module) -> None:
    """Replace every peft layer by its base layer (the original module object, weights untouched unless fused)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def walk(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if BaseTunerLayer in type(child).__mro__:
                setattr(parent, name, child.get_base_layer())
            else:
                walk(child)

    walk(model)
    if hasattr(model, "peft_config"):
        del model.peft_config
    for flag in ("_hf_peft_config_loaded",):
        if getattr(model, flag, False):
            setattr(model, flag, False)


# --------------------------------------------------------------------------------------------------------------
# block-wise UNet scales
# --------------------------------------------------------------------------------------------------------------


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"LoRA scale for {where} must be a number, got {value!r}")
    return float(value)


def expand_unet_block_scales(unet: nn.Module, scales: Dict[str, Any], default: float = 1.0) -> Dict[str, float]:
    """``{"down": ..., "mid": ..., "up": ...}`` -> a scale per UNet attention block (``down_blocks.1.attentions.0``).

    ``down``/``up`` take a number (every transformer of that half), or ``{"block_<i>": number | [per transformer]}``
    for the blocks that have attentions (``layers_per_block`` transformers per down block, one more per up block);
    ``mid`` takes a number (or a one-element list).  Anything left out keeps ``default``.
    """
    if not isinstance(scales, dict):
        raise TypeError(f"block-wise LoRA scales must be a dict, got {type(scales).__name__}")
    unknown = sorted(set(scales) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"block-wise LoRA scales take the keys 'down', 'mid' and 'up'; got {unknown}")
    layers = getattr(getattr(unet, "config", None), "layers_per_block", None)
    out: Dict[str, float] = {}
    mid = scales.get("mid", default)
    if isinstance(mid, (list, tuple)):
        if len(mid) != 1:
            raise ValueError(f"Expected 1 scales for mid, got {len(mid)}.")
        mid = mid[0]
    out["mid_block.attentions.0"] = _number(mid, "mid")
    for half in ("up", "down"):
        blocks = getattr(unet, f"{half}_blocks", None) or []
        with_attention = [i for i, block in enumerate(blocks) if hasattr(block, "attentions")]
        value = scales.get(half, default)
        if not isinstance(value, dict):
            value = {f"block_{i}": value for i in with_attention}
        wrong = sorted(set(value) - {f"block_{i}" for i in with_attention})
        if wrong:
            raise ValueError(
                f"Can't set lora scale for {half} blocks {wrong}: this unet's {half} blocks with attentions are "
                f"{[f'block_{i}' for i in with_attention]}"
            )
        for i in with_attention:
            per = layers[i] if isinstance(layers, (list, tuple)) else layers
            if per is None:
                per = len(blocks[i].attentions) - (1 if half == "up" else 0)
            count = int(per) + (1 if half == "up" else 0)
            block_value = value.get(f"block_{i}", default)
            if not isinstance(block_value, (list, tuple)):
                block_value = [block_value] * count
            elif len(block_value) == 1:
                block_value = list(block_value) * count
            elif len(block_value) != count:
                raise ValueError(f"Expected {count} scales for {half}.block_{i}, got {len(block_value)}.")
            for j, v in enumerate(block_value):
                out[f"{half}_blocks.{i}.attentions.{j}"] = _number(v, f"{half}.block_{i}[{j}]")
    return out


def _block_scale(scales: Dict[str, float], module_name: str) -> float:
    for prefix, value in scales.items():
        if module_name == prefix or module_name.startswith(prefix + "."):
            return value
    # like diffusers: a LoRA layer outside the attention blocks (e.g. a resnet conv) takes the scale of the attention
    # with the same block and layer index, else 1.0
    parts = module_name.split(".")
    if len(parts) >= 4:
        return scales.get(f"{parts[0]}.{parts[1]}.attentions.{parts[3]}", 1.0)
    return 1.0


# --------------------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------------------


def get_lora_state_dict(model: nn.Module, adapter_name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The LoRA weights of one adapter of ``model``, keyed like peft's ``get_peft_model_state_dict``.

    Keys are ``<module>.lora_A.weight`` / ``lora_B.weight`` (plus ``lora_B.bias`` and DoRA's
    ``lora_magnitude_vector.weight`` when present), without the adapter name, ready for ``save_lora_weights``.
    ``adapter_name`` may be left out when the model holds a single adapter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    adapters = _model_adapters(model)
    if not adapters:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter loaded")
    if adapter_name is None:
        if len(adapters) > 1:
            raise ValueError(f"`adapter_name` is required: {type(model).__name__} holds several adapters {adapters}")
        adapter_name = adapters[0]
    if adapter_name not in adapters:
        raise ValueError(f"Adapter {adapter_name!r} is not loaded in {type(model).__name__}; loaded: {adapters}")
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: Dict[str, torch.Tensor] = {}
    for name, layer in model.named_modules():
        if BaseTunerLayer not in type(layer).__mro__ or adapter_name not in getattr(layer, "lora_A", {}):
            continue
        out[f"{name}.lora_A.weight"] = layer.lora_A[adapter_name].weight.detach()
        up = layer.lora_B[adapter_name]
        out[f"{name}.lora_B.weight"] = up.weight.detach()
        if getattr(up, "bias", None) is not None:
            out[f"{name}.lora_B.bias"] = up.bias.detach()
        magnitude = getattr(layer, "lora_magnitude_vector", {})
        if adapter_name in magnitude:
            out[f"{name}.lora_magnitude_vector.weight"] = magnitude[adapter_name].weight.detach()
    return out


def get_lora_adapter_metadata(model: nn.Module, adapter_name: Optional[str] = None) -> Dict[str, Any]:
    """The peft ``LoraConfig`` of one adapter as a plain dict (what ``*_lora_adapter_metadata`` expects).

    Module names in ``target_modules`` and the rank/alpha patterns are written without a leading ``text_model.``.
    """
    adapters = _model_adapters(model)
    if adapter_name is None and len(adapters) == 1:
        adapter_name = adapters[0]
    if adapter_name not in adapters:
        raise ValueError(f"Adapter {adapter_name!r} is not loaded in {type(model).__name__}; loaded: {adapters}")
    config = model.peft_config[adapter_name].to_dict()
    out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}

    def relative(name: str) -> str:
        # peft matches these names as suffixes; without the CLIP `text_model.` level they match the module names
        # of transformers 4 and 5 CLIP models (and ours) alike
        return name[len("text_model."):] if name.startswith("text_model.") else name

    if isinstance(out.get("target_modules"), list):
        out["target_modules"] = sorted(relative(n) for n in out["target_modules"])
    for key in ("rank_pattern", "alpha_pattern"):
        if isinstance(out.get(key), dict):
            out[key] = {relative(n): v for n, v in out[key].items()}
    return out


def _layers_state_dict(layers: Any, argument: str) -> Dict[str, torch.Tensor]:
    if isinstance(layers, nn.Module):
        layers = layers.state_dict()
    if not isinstance(layers, dict):
        raise TypeError(f"`{argument}` must be a dict of tensors or an nn.Module, got {type(layers).__name__}")
    bad = [k for k, v in layers.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"`{argument}` must map names to tensors; bad entries: {bad[:5]}")
    return layers


def write_lora_weights(
    save_directory: Union[str, os.PathLike],
    lora_layers: Dict[str, Any],
    lora_metadata: Optional[Dict[str, Optional[Dict[str, Any]]]] = None,
    weight_name: Optional[str] = None,
    safe_serialization: bool = True,
    is_main_process: bool = True,
    save_function: Optional[Any] = None,
) -> Optional[str]:
    """Write ``{component: layers}`` as one LoRA file with ``<component>.`` key prefixes; returns its path.

    The file is written to a temporary name in ``save_directory`` and moved into place, so an interrupted save
    never leaves a partial file under the final name.
    """
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"`save_directory` must be a path, got {type(save_directory).__name__}")
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"`save_directory` ({save_directory}) should be a directory, not a file")
    state_dict: Dict[str, torch.Tensor] = {}
    for component, layers in lora_layers.items():
        for key, value in _layers_state_dict(layers, f"{component}_lora_layers").items():
            state_dict[f"{component}.{key}"] = value
    if not state_dict:
        raise ValueError("the LoRA layers to save are empty")
    metadata: Dict[str, Any] = {}
    for component, meta in (lora_metadata or {}).items():
        if meta:
            if not isinstance(meta, dict):
                raise TypeError(f"`{component}_lora_adapter_metadata` must be a dict, got {type(meta).__name__}")
            metadata.update({f"{component}.{k}": (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()})
    if metadata and not safe_serialization:
        raise ValueError("`lora_adapter_metadata` cannot be specified when not using `safe_serialization`.")
    if weight_name is None:
        weight_name = LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME
    if not isinstance(weight_name, str) or not weight_name or os.sep in weight_name:
        raise ValueError(f"`weight_name` must be a plain file name, got {weight_name!r}")
    if not is_main_process:
        return None
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, weight_name)
    from ..models.weights import _prepare_for_safetensors
    from ..utils.fs import atomic_file

    state_dict = _prepare_for_safetensors(state_dict)  # contiguous CPU tensors, no shared storage
    with atomic_file(path) as tmp:
        if save_function is not None:
            save_function(state_dict, tmp)
        elif safe_serialization:
            from safetensors.torch import save_file

            file_meta = {"format": "pt"}
            if metadata:
                file_meta[LORA_ADAPTER_METADATA_KEY] = json.dumps(metadata, indent=2, sort_keys=True)
            save_file(state_dict, tmp, metadata=file_meta)
        else:
            torch.save(state_dict, tmp)
    logger.info("LoRA weights saved in %s", path)
    return path


# --------------------------------------------------------------------------------------------------------------
# the pipeline mixin
# --------------------------------------------------------------------------------------------------------------


class _LoadableModules:
    """Class-level: the declared component list; on an instance: also ``text_encoder_2`` when the pipeline has one
    (so a pipeline class that inherits the SD mixin but carries a second text encoder still gets it)."""

    def __init__(self, names: List[str]):
        self.names = list(names)

    def __get__(self, obj: Any, owner: type) -> List[str]:
        names = list(self.names)
        if obj is not None and "text_encoder_2" not in names and isinstance(
            getattr(obj, "text_encoder_2", None), nn.Module
        ):
            names.append("text_encoder_2")
        return names


class LoraLoaderMixin:
    """LoRA loading and adapter management for pipelines with ``unet`` and text encoder components."""

    _lora_loadable_modules = _LoadableModules(["unet", "text_encoder", "text_encoder_2"])

    # ------------------------------------------------------------------ helpers
    def _lora_models(self) -> Dict[str, nn.Module]:
        models = {}
        for name in self._lora_loadable_modules:
            model = getattr(self, name, None)
            if isinstance(model, nn.Module):
                models[name] = model
        return models

    @property
    def lora_scale(self) -> float:
        return getattr(self, "_lora_scale", 1.0)

    @property
    def num_fused_loras(self) -> int:
        return len(self.fused_loras)

    @property
    def fused_loras(self) -> set:
        return set(getattr(self, "_diffblocks_fused_loras", set()))

    # ------------------------------------------------------------------ reading
    @classmethod
    def lora_state_dict(
        cls,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, torch.Tensor]],
        weight_name: Optional[str] = None,
        subfolder: Optional[str] = None,
        use_safetensors: Optional[bool] = None,
        return_lora_metadata: bool = False,
        unet_config: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ):
        """Read a LoRA file, folder, repo or dict and convert it to prefixed peft keys.

        Returns ``(state_dict, network_alphas)`` (plus the adapter metadata with ``return_lora_metadata=True``).
        """
        module_names = kwargs.pop("_module_names", None)
        state_dict, metadata = _read_lora(pretrained_model_name_or_path_or_dict, weight_name, subfolder,
                                          use_safetensors, kwargs)
        state_dict, alphas = convert_lora_state_dict(state_dict, module_names, unet_config)
        if return_lora_metadata:
            return state_dict, alphas, metadata
        return state_dict, alphas

    # ------------------------------------------------------------------ loading
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Dict[str, torch.Tensor]],
        adapter_name: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        """Load LoRA weights into ``unet`` and the text encoders as the peft adapter ``adapter_name``."""
        if adapter_name is not None and not isinstance(adapter_name, str):
            raise TypeError(f"`adapter_name` must be a string or None, got {type(adapter_name).__name__}")
        if kwargs.pop("hotswap", False):
            raise NotImplementedError("`hotswap=True` is not supported; unload or delete the adapter first")
        kwargs.pop("low_cpu_mem_usage", None)
        models = self._lora_models()
        if not models:
            raise ValueError(
                f"{type(self).__name__} has none of the LoRA-loadable components {self._lora_loadable_modules} loaded"
            )
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        def module_names() -> Dict[str, List[str]]:  # only kohya files need the names
            return {name: [n for n, _ in model.named_modules()] for name, model in models.items()}

        state_dict, alphas, metadata = self.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, _module_names=module_names,
            unet_config=kwargs.pop("unet_config", getattr(models.get("unet"), "config", None)), **kwargs
        )
        by_component: Dict[str, Dict[str, torch.Tensor]] = {}
        unknown = []
        for key, value in state_dict.items():
            component, _, rest = key.partition(".")
            if component not in _COMPONENT_PREFIXES:
                unknown.append(key)
                continue
            by_component.setdefault(component, {})[rest] = value
        if unknown:
            raise ValueError(f"LoRA keys name no component among {list(_COMPONENT_PREFIXES)}: {sorted(unknown)[:5]}")
        # check every component before touching any, so that a bad file leaves the pipeline unchanged
        plans: List[_LoraPlan] = []
        for component, sub in by_component.items():
            model = models.get(component)
            if model is None:
                logger.warning("LoRA weights for `%s` were ignored: %s has no such component.", component,
                               type(self).__name__)
                continue
            comp_alphas = {k[len(component) + 1:]: v for k, v in alphas.items() if k.startswith(component + ".")}
            comp_meta = _component_metadata(metadata, component)
            plans.append(plan_lora_for_model(model, sub, comp_alphas, adapter_name, comp_meta, component))
        try:
            for plan in plans:
                inject_lora_plan(plan)
        except Exception:
            for plan in reversed(plans):
                if plan.undo is not None:
                    plan.undo()
            raise
        if "unet" in models and "unet" not in by_component:
            logger.warning("No LoRA keys associated to %s found with the prefix='unet'.", type(models["unet"]).__name__)

    # ------------------------------------------------------------------ adapters
    def get_list_adapters(self) -> Dict[str, List[str]]:
        """Adapters per component, e.g. ``{"unet": ["a", "b"], "text_encoder": ["a"]}``."""
        return {name: _model_adapters(model) for name, model in self._lora_models().items()
                if _model_adapters(model)}

    def get_active_adapters(self) -> List[str]:
        """Active adapter names (read from the first LoRA layer of the unet, else of a text encoder)."""
        for model in self._lora_models().values():
            active = _active_adapters(model)
            if active:
                return active
        return []

    def set_adapters(
        self,
        adapter_names: Union[str, List[str]],
        adapter_weights: Optional[Union[float, Dict[str, Any], List[Any]]] = None,
    ) -> None:
        """Activate ``adapter_names`` with per-adapter weights (a number, a list, or per-component dicts)."""
        if isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        if not isinstance(adapter_names, (list, tuple)) or not all(isinstance(n, str) for n in adapter_names):
            raise TypeError(f"`adapter_names` must be a string or a list of strings, got {adapter_names!r}")
        adapter_names = list(adapter_names)
        if not isinstance(adapter_weights, list):
            adapter_weights = [adapter_weights] * len(adapter_names)
        if len(adapter_weights) != len(adapter_names):
            raise ValueError(
                f"Length of adapter names {len(adapter_names)} is not equal to the length of the weights "
                f"{len(adapter_weights)}"
            )
        listed = self.get_list_adapters()
        everything = sorted({n for names in listed.values() for n in names})
        missing = [n for n in adapter_names if n not in everything]
        if missing:
            raise ValueError(f"Adapter name(s) {missing} not in the list of present adapters: {everything}.")
        models = self._lora_models()
        per_component: Dict[str, Dict[str, float]] = {c: {} for c in models}
        for name, weight in zip(adapter_names, adapter_weights):
            if isinstance(weight, dict):
                for key in list(weight):
                    if key not in models:
                        logger.warning("Lora weight dict contains `%s` which is not a LoRA-loadable component; "
                                       "it is ignored.", key)
                for component in models:
                    per_component[component][name] = weight.get(component, 1.0)
            else:
                for component in models:
                    per_component[component][name] = weight
        # work out every layer's scale first, so that a bad weight changes nothing
        settings: List[Tuple[nn.Module, List[str], Dict[str, Any]]] = []
        for component, model in models.items():
            present = _model_adapters(model)
            names = [n for n in adapter_names if n in present]
            if not present:
                continue
            weights: Dict[str, Any] = {}
            for n in names:
                w = per_component[component][n]
                w = 1.0 if w is None else w
                if isinstance(w, dict):
                    if component != "unet":
                        raise ValueError(
                            f"block-wise LoRA weights are only supported for the unet; got {w!r} for {component!r} "
                            f"(adapter {n!r})"
                        )
                    weights[n] = expand_unet_block_scales(model, w)
                    continue
                if not isinstance(w, (int, float)) or isinstance(w, bool):
                    raise TypeError(f"adapter weight for {n!r} must be a number, got {type(w).__name__}")
                weights[n] = float(w)
            settings.append((model, names, weights))
        for model, names, weights in settings:
            from peft.tuners.tuners_utils import BaseTunerLayer

            for module_name, layer in model.named_modules():
                if BaseTunerLayer not in type(layer).__mro__:
                    continue
                layer.set_adapter(names)
                for n, w in weights.items():
                    layer.set_scale(n, _block_scale(w, module_name) if isinstance(w, dict) else w)

    def disable_lora(self) -> None:
        """Turn every LoRA layer off (the adapters stay loaded)."""
        for model in self._lora_models().values():
            for layer in _tuner_layers(model):
                layer.enable_adapters(False)

    def enable_lora(self) -> None:
        """Turn the LoRA layers back on after :meth:`disable_lora`."""
        for model in self._lora_models().values():
            for layer in _tuner_layers(model):
                layer.enable_adapters(True)

    def delete_adapters(self, adapter_names: Union[str, List[str]]) -> None:
        """Remove adapters from every component; a model left without adapters gets its plain layers back."""
        if isinstance(adapter_names, str):
            adapter_names = [adapter_names]
        for model in self._lora_models().values():
            for name in adapter_names:
                if name in _model_adapters(model):
                    _delete_adapter(model, name)
        fused = getattr(self, "_diffblocks_fused_loras", set()) - set(adapter_names)
        object.__setattr__(self, "_diffblocks_fused_loras", fused)

    def unload_lora_weights(self) -> None:
        """Remove all LoRA layers; the original weights come back unchanged (fused LoRAs stay fused)."""
        for model in self._lora_models().values():
            if _tuner_layers(model) or hasattr(model, "peft_config"):
                _remove_lora_layers(model)
        object.__setattr__(self, "_diffblocks_fused_loras", set())

    def set_lora_device(self, adapter_names: List[str], device: Union[str, torch.device, int]) -> None:
        """Move the LoRA matrices of ``adapter_names`` to ``device``."""
        for model in self._lora_models().values():
            for layer in _tuner_layers(model):
                for name in adapter_names:
                    for attr in ("lora_A", "lora_B", "lora_magnitude_vector"):
                        holder = getattr(layer, attr, None)
                        if holder is not None and name in holder:
                            holder[name].to(device)

    # ------------------------------------------------------------------ fusing
    def _check_components(self, components: Optional[List[str]]) -> List[str]:
        if components is None:
            return list(self._lora_loadable_modules)
        if isinstance(components, str):
            components = [components]
        if len(components) == 0:
            raise ValueError("`components` cannot be an empty list.")
        for c in components:
            if c not in self._lora_loadable_modules:
                raise ValueError(f"{c} is not found in self._lora_loadable_modules={self._lora_loadable_modules}.")
        return list(components)

    def fuse_lora(
        self,
        components: Optional[List[str]] = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> None:
        """Merge the (active or named) adapters into the base weights of ``components``, scaled by ``lora_scale``."""
        components = self._check_components(components)
        if not isinstance(lora_scale, (int, float)) or isinstance(lora_scale, bool):
            raise TypeError(f"`lora_scale` must be a number, got {lora_scale!r}")
        models = self._lora_models()
        fused = set(getattr(self, "_diffblocks_fused_loras", set()))
        for component in components:
            model = models.get(component)
            if model is None:
                continue
            for layer in _tuner_layers(model):
                if lora_scale != 1.0:
                    layer.scale_layer(lora_scale)
                base = layer.get_base_layer()
                if not layer.merged_adapters and not hasattr(layer, "_diffblocks_unfused"):
                    # keep the exact pre-fusion weights so that unfuse_lora restores them bit for bit
                    layer._diffblocks_unfused = {n: p.detach().clone() for n, p in base.named_parameters()}
                layer.merge(safe_merge=safe_fusing, adapter_names=adapter_names)
                fused.update(layer.merged_adapters)
        object.__setattr__(self, "_diffblocks_fused_loras", fused)

    def unfuse_lora(self, components: Optional[List[str]] = None, **kwargs: Any) -> None:
        """Take fused adapters back out of the base weights of ``components``."""
        components = self._check_components(components)
        models = self._lora_models()
        for component in components:
            model = models.get(component)
            if model is None:
                continue
            for layer in _tuner_layers(model):
                saved = getattr(layer, "_diffblocks_unfused", None)
                if saved is None:
                    layer.unmerge()
                    continue
                base = layer.get_base_layer()
                with torch.no_grad():
                    for n, p in base.named_parameters():
                        p.copy_(saved[n])
                layer.merged_adapters.clear()
                del layer._diffblocks_unfused
        still = set()
        for model in models.values():
            for layer in _tuner_layers(model):
                still.update(layer.merged_adapters)
        object.__setattr__(self, "_diffblocks_fused_loras", still)


def _read_lora(source, weight_name, subfolder, use_safetensors, hub_kwargs):
    if isinstance(source, dict):
        return dict(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "`pretrained_model_name_or_path_or_dict` must be a path, a repo id or a dict of tensors, got "
            f"{type(source).__name__}"
        )
    allowed = {k: v for k, v in hub_kwargs.items()
               if k in ("cache_dir", "local_files_only", "token", "revision", "force_download", "proxies")}
    ignored = sorted(set(hub_kwargs) - set(allowed) - {"weight_name", "subfolder", "use_safetensors"})
    if ignored:
        raise TypeError(f"load_lora_weights() got unexpected keyword argument(s) {ignored}")
    path = _resolve_lora_file(os.fspath(source), weight_name, subfolder, use_safetensors, allowed)
    state_dict, file_meta = _read_weights(path)
    metadata = None
    if file_meta and LORA_ADAPTER_METADATA_KEY in file_meta:
        metadata = json.loads(file_meta[LORA_ADAPTER_METADATA_KEY])
    return state_dict, metadata


def _component_metadata(metadata: Optional[Dict[str, Any]], component: str) -> Optional[Dict[str, Any]]:
    if not metadata:
        return None
    prefix = component + "."
    picked = {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)}
    return picked or None


class StableDiffusionLoraLoaderMixin(LoraLoaderMixin):
    """LoRA for SD 1.x/2.x pipelines (``unet``, ``text_encoder``)."""

    _lora_loadable_modules = _LoadableModules(["unet", "text_encoder"])

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: Union[str, os.PathLike],
        unet_lora_layers: Optional[Dict[str, torch.Tensor]] = None,
        text_encoder_lora_layers: Optional[Dict[str, torch.Tensor]] = None,
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Any] = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: Optional[Dict[str, Any]] = None,
        text_encoder_lora_adapter_metadata: Optional[Dict[str, Any]] = None,
    ) -> Optional[str]:
        """Save UNet / text-encoder LoRA layers (e.g. from :func:`get_lora_state_dict`) in the diffusers layout.

        Keys get ``unet.`` / ``text_encoder.`` prefixes; the file is ``pytorch_lora_weights.safetensors`` (or
        ``.bin`` without safetensors) unless ``weight_name`` says otherwise.  Returns the written path.
        """
        return _save_components(
            save_directory, {"unet": (unet_lora_layers, unet_lora_adapter_metadata),
                             "text_encoder": (text_encoder_lora_layers, text_encoder_lora_adapter_metadata)},
            weight_name, safe_serialization, is_main_process, save_function)


def _save_components(save_directory, components: Dict[str, Tuple[Any, Any]], weight_name, safe_serialization,
                     is_main_process, save_function) -> Optional[str]:
    """``save_lora_weights`` of a family: ``components`` maps a component name to ``(layers, metadata)``."""
    layers = {name: value for name, (value, _) in components.items() if value}
    if not layers:
        names = [f"`{name}_lora_layers`" for name in components]
        raise ValueError(f"You must pass at least one of {', '.join(names[:-1])} or {names[-1]}.")
    metadata = {name: meta for name, (_, meta) in components.items() if name in layers}
    return write_lora_weights(save_directory, layers, metadata, weight_name, safe_serialization, is_main_process,
                              save_function)


class StableDiffusionXLLoraLoaderMixin(LoraLoaderMixin):
    """LoRA for SDXL pipelines (``unet``, ``text_encoder``, ``text_encoder_2``)."""

    _lora_loadable_modules = _LoadableModules(["unet", "text_encoder", "text_encoder_2"])

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: Union[str, os.PathLike],
        unet_lora_layers: Optional[Dict[str, torch.Tensor]] = None,
        text_encoder_lora_layers: Optional[Dict[str, torch.Tensor]] = None,
        text_encoder_2_lora_layers: Optional[Dict[str, torch.Tensor]] = None,
        is_main_process: bool = True,
        weight_name: Optional[str] = None,
        save_function: Optional[Any] = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: Optional[Dict[str, Any]] = None,
        text_encoder_lora_adapter_metadata: Optional[Dict[str, Any]] = None,
        text_encoder_2_lora_adapter_metadata: Optional[Dict[str, Any]] = None,
    ) -> Optional[str]:
        """SDXL variant of :meth:`StableDiffusionLoraLoaderMixin.save_lora_weights` (adds ``text_encoder_2.``)."""
        return _save_components(
            save_directory, {"unet": (unet_lora_layers, unet_lora_adapter_metadata),
                             "text_encoder": (text_encoder_lora_layers, text_encoder_lora_adapter_metadata),
                             "text_encoder_2": (text_encoder_2_lora_layers, text_encoder_2_lora_adapter_metadata)},
            weight_name, safe_serialization, is_main_process, save_function)
