"""CLIP text encoders written for diffblocks (SD 1.x/2.x ``text_encoder``, SDXL ``text_encoder``/``text_encoder_2``).

The modules keep the parameter names of the CLIP text checkpoints found in diffusers folders
(``text_model.embeddings.token_embedding.weight``, ``text_model.encoder.layers.N.self_attn.q_proj.weight``, ...),
so the same ``config.json`` + ``model.safetensors`` files load here, in transformers 4 and in transformers 5
(which drops the ``text_model.`` level of ``CLIPTextModel`` when it loads; such files load here too).

Why not transformers' classes: importing transformers' CLIP modelling code costs seconds (it pulls in torch's
compiler and distributed packages) and text encoding is on the path to the first image. transformers' classes can
still be passed to pipelines as components; the vision encoders (safety checker, IP-Adapter image encoder) keep
using transformers.

The forward pass matches transformers' for the same weights: token + position embeddings, pre-norm encoder layers
with causal self-attention (``scaled_dot_product_attention``), final layer norm, pooled output at the end token
(highest id when ``eos_token_id == 2`` -- the legacy configs -- otherwise the first ``eos_token_id``).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.fs import normal_tree_permissions
from . import weights as W
from .modeling_utils import ModelMixin, _assign_state_dict, _check_dtype, _default_dtype, _skip_init
from .outputs import BaseOutput

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
PT_WEIGHTS_NAME = "pytorch_model.bin"
#: the transformers version recorded in configs we write from scratch (a release whose loaders read this layout)
_WRITTEN_TRANSFORMERS_VERSION = "4.46.0"
_PREFIX = "text_model."


# ----------------------------------------------------------------------------------------------------- config
class CLIPTextConfig:
    """Hyper-parameters of a CLIP text encoder, read and written as transformers' ``config.json``.

    Attributes are plain (``config.hidden_size``); keys this class does not know are kept as attributes too and
    written back by :meth:`to_dict`, so a loaded and re-saved config loses nothing.
    """

    model_type = "clip_text_model"
    _defaults: Dict[str, Any] = {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "projection_dim": 512,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "pad_token_id": 1,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
    }
    #: keys that describe the file rather than the model
    _bookkeeping = ("model_type", "transformers_version", "_name_or_path", "_commit_hash")

    def __init__(self, **kwargs: Any) -> None:
        for key, value in self._defaults.items():
            setattr(self, key, copy.deepcopy(value))
        self.architectures: Optional[list] = None
        self.name_or_path = kwargs.pop("_name_or_path", kwargs.pop("name_or_path", ""))
        self.transformers_version = kwargs.pop("transformers_version", None)
        kwargs.pop("model_type", None)
        kwargs.pop("_commit_hash", None)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self._validate()

    def _validate(self) -> None:
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"CLIPTextConfig: `{key}` must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIPTextConfig: `hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"CLIPTextConfig: `hidden_act` must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}"
            )

    # ---------------------------------------------------------------- dict / json
    @classmethod
    def from_dict(cls, data: Dict[str, Any], **overrides: Any) -> "CLIPTextConfig":
        if not isinstance(data, dict):
            raise TypeError(f"CLIPTextConfig.from_dict expects a dict, got {type(data).__name__}")
        data = dict(data)
        if data.get("model_type") == "clip" and isinstance(data.get("text_config"), dict):
            data = dict(data["text_config"])  # a full CLIP config: its text half
        data.update(overrides)
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str) -> "CLIPTextConfig":
        with open(path, "r", encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise EnvironmentError(f"It looks like the config file at '{path}' is not a valid JSON file.") from err
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], subfolder: Optional[str] = None,
                        **kwargs: Any) -> "CLIPTextConfig":
        from ..hub import resolve_file

        _check_subfolder(subfolder)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
        # only config.json is fetched for a repo id (the weights are not needed to read a config)
        path = resolve_file(os.fspath(pretrained_model_name_or_path), CONFIG_NAME, subfolder=subfolder or None,
                            **hub_kwargs)
        config = cls.from_json_file(path)
        for key, value in kwargs.items():
            setattr(config, key, value)
        return config

    def to_dict(self) -> Dict[str, Any]:
        """Every attribute (known or kept from the file) plus ``model_type``, as transformers writes them."""
        out = {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_") and k != "name_or_path"}
        out["model_type"] = self.model_type
        if out.get("transformers_version") is None:
            out["transformers_version"] = _WRITTEN_TRANSFORMERS_VERSION
        if out.get("architectures") is None:
            out.pop("architectures")
        for key in ("dtype", "torch_dtype"):
            if isinstance(out.get(key), torch.dtype):
                out[key] = str(out[key]).replace("torch.", "")
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> None:
        save_directory = os.fspath(save_directory)
        os.makedirs(save_directory, exist_ok=True)
        from ..utils.fs import atomic_file

        with atomic_file(os.path.join(save_directory, CONFIG_NAME)) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(self.to_json_string())

    @property
    def _name_or_path(self) -> str:
        return self.name_or_path

    @_name_or_path.setter
    def _name_or_path(self, value: str) -> None:
        self.name_or_path = value

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, CLIPTextConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


# ----------------------------------------------------------------------------------------------- layers
def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "quick_gelu": _quick_gelu,
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        # built on the CPU even under a meta-device context: arange on "meta" goes through a decomposition that
        # imports sympy (over a second on the first load)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings, device="cpu")
                             .expand((1, -1)), persistent=False)

    def forward(self, input_ids: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        length = input_ids.shape[-1] if input_ids is not None else inputs_embeds.shape[-2]
        limit = self.position_embedding.weight.shape[0]
        if length > limit:
            raise ValueError(
                f"`input_ids` has {length} tokens but the text encoder takes at most {limit} "
                "(max_position_embeddings); truncate the prompt with the tokenizer (truncation=True)."
            )
        if position_ids is None:
            position_ids = self.position_ids[:, :length]
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        return inputs_embeds + self.position_embedding(position_ids)


class CLIPAttention(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = float(config.attention_dropout or 0.0)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        if attention_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout,
                                                 scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.activation_fn = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                collect: Optional[list] = None) -> torch.Tensor:
        for layer in self.layers:
            if collect is not None:
                collect.append(hidden_states)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                hidden_states = checkpoint(layer, hidden_states, attention_mask, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states, attention_mask)
        if collect is not None:
            collect.append(hidden_states)
        return hidden_states


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder and final layer norm; ``forward`` returns (last hidden state, pooled, hidden states)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.eos_token_id = config.eos_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_hidden_states: bool = False,
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[Tuple[torch.Tensor, ...]]]:
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"`input_ids` must be a torch.LongTensor of token ids, got {type(input_ids).__name__}")
        shape = input_ids.shape
        input_ids = input_ids.view(-1, shape[-1])
        hidden = self.embeddings(input_ids=input_ids, position_ids=position_ids)
        mask = None
        if attention_mask is not None:
            mask = _causal_padding_mask(attention_mask.view(-1, shape[-1]), hidden.shape[1], hidden.device)
        collected: Optional[list] = [] if output_hidden_states else None
        hidden = self.encoder(hidden, mask, collected)
        last = self.final_layer_norm(hidden)
        rows = torch.arange(last.shape[0], device=last.device)
        ids = input_ids.to(dtype=torch.int, device=last.device)
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos == 2 or eos is None:
            # legacy configs (eos_token_id 2): the end token is the highest id of each row
            pooled = last[rows, ids.argmax(dim=-1)]
        else:
            pooled = last[rows, (ids == eos).int().argmax(dim=-1)]
        return last, pooled, (tuple(collected) if collected is not None else None)


def _causal_padding_mask(attention_mask: torch.Tensor, length: int, device: torch.device) -> torch.Tensor:
    """Boolean (B, 1, L, L) mask: a query attends to earlier keys that the padding mask keeps."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    keep = attention_mask.to(device=device).bool()[:, None, None, :]
    return causal[None, None] & keep


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class BaseModelOutputWithPooling(BaseOutput):
    """``CLIPTextModel`` output: ``out[0]`` is the last hidden state, ``out[1]`` the pooled (end token) state."""

    last_hidden_state: Optional[torch.Tensor] = None
    pooler_output: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


@dataclass
class CLIPTextModelOutput(BaseOutput):
    """``CLIPTextModelWithProjection`` output: ``out[0]`` is ``text_embeds`` (projected pooled state)."""

    text_embeds: Optional[torch.Tensor] = None
    last_hidden_state: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None


# ----------------------------------------------------------------------------------------------- models
class _CLIPTextBase(ModelMixin):
    """Loading/saving in transformers' folder layout on top of diffblocks' weight helpers."""

    config_class = CLIPTextConfig
    main_input_name = "input_ids"
    base_model_prefix = "text_model"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer"]
    #: ``model_index.json`` names this class under the transformers library, so diffusers reads our folders
    _library_name = "transformers"

    def __init__(self, config: Optional[CLIPTextConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = CLIPTextConfig(**kwargs)
        elif isinstance(config, dict):
            config = CLIPTextConfig.from_dict(config, **kwargs)
        elif not isinstance(config, CLIPTextConfig):
            if hasattr(config, "to_dict"):  # e.g. transformers' CLIPTextConfig
                config = CLIPTextConfig.from_dict(config.to_dict(), **kwargs)
            else:
                raise TypeError(
                    f"`config` must be a CLIPTextConfig, a dict or None, got {type(config).__name__}"
                )
        self.config = config
        self.name_or_path = config.name_or_path

    # ---------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """CLIP's initialisation (normal weights scaled by width and depth, zero biases, unit layer norms), so a
        model trained from scratch starts like the original; loading replaces every value anyway."""
        cfg = self.config
        factor = float(getattr(cfg, "initializer_factor", 1.0) or 1.0)
        width, depth = cfg.hidden_size, cfg.num_hidden_layers
        init = nn.init
        for module in self.modules():
            if isinstance(module, CLIPTextEmbeddings):
                init.normal_(module.token_embedding.weight, std=0.02 * factor)
                init.normal_(module.position_embedding.weight, std=0.02 * factor)
            elif isinstance(module, CLIPAttention):
                for proj in (module.q_proj, module.k_proj, module.v_proj):
                    init.normal_(proj.weight, std=width ** -0.5 * (2 * depth) ** -0.5 * factor)
                init.normal_(module.out_proj.weight, std=width ** -0.5 * factor)
            elif isinstance(module, CLIPMLP):
                init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
                init.normal_(module.fc2.weight, std=width ** -0.5 * (2 * depth) ** -0.5 * factor)
            elif isinstance(module, nn.LayerNorm):
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if isinstance(module, nn.Linear) and module.bias is not None:
                init.zeros_(module.bias)
        projection = getattr(self, "text_projection", None)
        if projection is not None:
            init.normal_(projection.weight, std=width ** -0.5 * factor)

    # ---------------------------------------------------------------- embeddings
    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        if not isinstance(value, nn.Embedding):
            raise TypeError(f"`value` must be a torch.nn.Embedding, got {type(value).__name__}")
        self.text_model.embeddings.token_embedding = value

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                **kwargs: Any) -> nn.Embedding:
        """Grow or shrink the token table to ``new_num_tokens`` rows (e.g. after ``tokenizer.add_tokens``).

        Kept rows are copied; new rows start at the mean of the old ones. ``config.vocab_size`` follows.
        """
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        if new_num_tokens is None:
            new_num_tokens = old.num_embeddings
        if not isinstance(new_num_tokens, int) or isinstance(new_num_tokens, bool) or new_num_tokens <= 0:
            raise ValueError(f"`new_num_tokens` must be a positive int, got {new_num_tokens!r}")
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"`pad_to_multiple_of` must be a positive int, got {pad_to_multiple_of!r}")
            new_num_tokens = int(math.ceil(new_num_tokens / pad_to_multiple_of) * pad_to_multiple_of)
        if new_num_tokens == old.num_embeddings:
            return old
        weight = old.weight
        new = nn.Embedding(new_num_tokens, weight.shape[1], device=weight.device, dtype=weight.dtype)
        keep = min(old.num_embeddings, new_num_tokens)
        with torch.no_grad():
            new.weight[:keep] = weight[:keep]
            if new_num_tokens > keep:
                new.weight[keep:] = weight.float().mean(dim=0).to(weight.dtype)
        new.weight.requires_grad_(weight.requires_grad)
        self.set_input_embeddings(new)
        self.config.vocab_size = new_num_tokens
        return new

    # ---------------------------------------------------------------- transformers-style helpers
    # transformers' names for ModelMixin's enable/disable_gradient_checkpointing
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        self.enable_gradient_checkpointing()

    def gradient_checkpointing_disable(self) -> None:
        self.disable_gradient_checkpointing()

    def can_generate(self) -> bool:
        return False

    # ---------------------------------------------------------------- state dict keys
    @classmethod
    def _convert_state_dict_keys(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Accept the transformers 5 layout (no ``text_model.`` level) and drop persisted ``position_ids``."""
        out: Dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            if key.endswith("embeddings.position_ids"):
                continue
            if not key.startswith(_PREFIX) and key.split(".", 1)[0] in ("embeddings", "encoder", "final_layer_norm"):
                key = _PREFIX + key
            out[key] = tensor
        return out

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, config: Union[CLIPTextConfig, Dict[str, Any]], **kwargs: Any) -> "_CLIPTextBase":
        return cls(config, **kwargs)

    @classmethod
    def _from_config(cls, config: Union[CLIPTextConfig, Dict[str, Any]], **kwargs: Any) -> "_CLIPTextBase":
        dtype = kwargs.pop("torch_dtype", kwargs.pop("dtype", None))
        with _default_dtype(dtype):
            return cls(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *model_args: Any,
                        **kwargs: Any) -> "_CLIPTextBase":
        """Load from a folder holding ``config.json`` + ``model[.variant].safetensors`` (or ``pytorch_model.bin``,
        or shards with their index), a ``subfolder`` of it, or a Hub repo id (through the HF cache).

        Keywords: ``subfolder``, ``torch_dtype``/``dtype`` (default float32; ``"auto"`` keeps the checkpoint's),
        ``variant``, ``use_safetensors``, ``config`` (a config to use instead of ``config.json``),
        ``device_map`` (one device), ``output_loading_info``, the hub keywords, and config overrides.
        """
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional arguments besides the path")
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError(
                "`pretrained_model_name_or_path` must be a local folder or a Hub repo id (str), got "
                f"{type(pretrained_model_name_or_path).__name__}"
            )
        subfolder = kwargs.pop("subfolder", None) or None
        variant = kwargs.pop("variant", None)
        use_safetensors = kwargs.pop("use_safetensors", None)
        dtype = kwargs.pop("torch_dtype", None)
        dtype_kw = kwargs.pop("dtype", None)
        if dtype is None:
            dtype = dtype_kw
        config = kwargs.pop("config", None)
        device_map = kwargs.pop("device_map", None)
        output_loading_info = kwargs.pop("output_loading_info", False)
        for ignored in ("low_cpu_mem_usage", "attn_implementation", "trust_remote_code", "_from_pipeline",
                        "_from_auto", "mirror", "user_agent", "resume_download", "offload_folder", "offload_state_dict",
                        "max_memory", "ignore_mismatched_sizes", "weights_only", "key_mapping"):
            kwargs.pop(ignored, None)
        if variant is not None and (not isinstance(variant, str) or not variant):
            raise ValueError(f"`variant` must be a non-empty string such as 'fp16' or None, got {variant!r}")
        if use_safetensors not in (None, True, False):
            raise TypeError(f"`use_safetensors` must be None, True or False, got {use_safetensors!r}")
        keep_checkpoint_dtype = isinstance(dtype, str) and dtype == "auto"
        target_dtype = None if keep_checkpoint_dtype else _check_dtype(cls.__name__, dtype)
        from ..hub import resolve_model_folder

        _check_subfolder(subfolder)
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
        folder = resolve_model_folder(os.fspath(pretrained_model_name_or_path), subfolder=subfolder,
                                      variant=variant, use_safetensors=use_safetensors,
                                      weights_names=(SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME), **hub_kwargs)
        if config is None:
            path = os.path.join(folder, CONFIG_NAME)
            if not os.path.isfile(path):
                raise EnvironmentError(f"Error no file named {CONFIG_NAME} found in directory {folder}.")
            config = CLIPTextConfig.from_json_file(path)
        elif isinstance(config, dict):
            config = CLIPTextConfig.from_dict(config)
        elif not isinstance(config, CLIPTextConfig):
            config = CLIPTextConfig.from_dict(config.to_dict())
        else:
            config = copy.deepcopy(config)
        for key, value in kwargs.items():
            setattr(config, key, value)
        config._validate()
        config.name_or_path = os.fspath(pretrained_model_name_or_path)

        files = W.find_weight_files(folder, variant=variant, use_safetensors=use_safetensors,
                                    weights_names=(SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME))
        state_dict = cls._convert_state_dict_keys(W.load_weight_files(files.files))
        if keep_checkpoint_dtype:
            stored = [t.dtype for t in state_dict.values() if t.is_floating_point()]
            target_dtype = stored[0] if stored else None
        with torch.device("meta"), _skip_init(), _default_dtype(target_dtype):
            model = cls(config)
        if target_dtype is None:
            target_dtype = torch.float32
        info = _assign_state_dict(model, state_dict, path=folder, dtype=target_dtype, meta=True,
                                  ignore_mismatched_sizes=False)
        del state_dict
        model._init_non_persistent_buffers()
        model.config.dtype = target_dtype  # a torch.dtype, as transformers' configs hold it (written as a string)
        model.config.__dict__.pop("torch_dtype", None)
        if device_map is not None:
            from .modeling_utils import _check_device_map

            device = _check_device_map(device_map)
            if device is not None and device.type != "cpu":
                model.to(device)
        model.eval()
        if output_loading_info:
            return model, info
        return model

    def _init_non_persistent_buffers(self) -> None:
        embeddings = self.text_model.embeddings
        count = embeddings.position_embedding.num_embeddings
        device = embeddings.position_embedding.weight.device
        if device.type == "meta":
            device = torch.device("cpu")
        embeddings.register_buffer("position_ids", torch.arange(count, device=device).expand((1, -1)),
                                   persistent=False)

    # ---------------------------------------------------------------- saving
    def save_pretrained(self, save_directory: Union[str, os.PathLike], is_main_process: bool = True,
                        state_dict: Optional[Dict[str, torch.Tensor]] = None, save_function: Any = None,
                        push_to_hub: bool = False, max_shard_size: Union[int, str] = "5GB",
                        safe_serialization: bool = True, variant: Optional[str] = None, **kwargs: Any) -> None:
        """Write ``config.json`` and ``model[.variant].safetensors`` (sharded past ``max_shard_size``) the way
        transformers does, into a temporary sibling folder first and then into ``save_directory``."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by diffblocks (no network access is assumed).")
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"`save_directory` must be a path, got {type(save_directory).__name__}")
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) is a file, expected a folder.")
        if variant is not None and (not isinstance(variant, str) or not variant or os.sep in variant):
            raise ValueError(f"`variant` must be a non-empty string such as 'fp16' or None, got {variant!r}")
        if not is_main_process:
            return
        W.parse_size(max_shard_size if max_shard_size is not None else "5GB")
        weights_name = SAFE_WEIGHTS_NAME if safe_serialization else PT_WEIGHTS_NAME
        if state_dict is None:
            state_dict = self.state_dict()
        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        config.__dict__.pop("torch_dtype", None)
        config.dtype = self.dtype
        target = os.path.abspath(save_directory)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
        try:
            config.save_pretrained(tmp)
            W.save_state_dict(state_dict, tmp, variant=variant, safe_serialization=safe_serialization,
                              max_shard_size=max_shard_size, weights_name=weights_name)
            normal_tree_permissions(tmp)
            if not os.path.exists(target):
                os.replace(tmp, target)
            else:
                written = os.listdir(tmp)
                for name in written:
                    os.replace(os.path.join(tmp, name), os.path.join(target, name))
                W._remove_stale(target, weights_name, variant, keep=set(written))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class CLIPTextModel(_CLIPTextBase):
    """CLIP text encoder without projection (SD 1.x/2.x ``text_encoder``, SDXL ``text_encoder``).

    ``forward`` returns :class:`BaseModelOutputWithPooling` (``last_hidden_state``, ``pooler_output`` and, with
    ``output_hidden_states=True``, ``hidden_states``: the embeddings then each layer's output, before the final
    layer norm), or a tuple with ``return_dict=False``.
    """

    _keys_to_ignore_on_load_unexpected = [r"^text_projection\.", r"^logit_scale$"]

    def __init__(self, config: Optional[CLIPTextConfig] = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.text_model = CLIPTextTransformer(self.config)
        self.init_weights()

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                **kwargs: Any) -> Union[BaseModelOutputWithPooling, Tuple[torch.Tensor, ...]]:
        if output_attentions:
            raise ValueError("`output_attentions=True` is not supported by diffblocks' CLIPTextModel "
                             "(attention runs through scaled_dot_product_attention); use transformers' class.")
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected keyword arguments {sorted(kwargs)}")
        last, pooled, hidden = self.text_model(input_ids, attention_mask, position_ids, bool(output_hidden_states))
        if return_dict is False:
            return tuple(x for x in (last, pooled, hidden) if x is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden)


class CLIPTextModelWithProjection(_CLIPTextBase):
    """CLIP text encoder with the text projection (SDXL ``text_encoder_2``): ``text_embeds`` is the projected
    pooled state; ``out[0]`` is ``text_embeds``."""

    def __init__(self, config: Optional[CLIPTextConfig] = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.text_model = CLIPTextTransformer(self.config)
        self.text_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)
        self.init_weights()

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None,
                **kwargs: Any) -> Union[CLIPTextModelOutput, Tuple[torch.Tensor, ...]]:
        if output_attentions:
            raise ValueError("`output_attentions=True` is not supported by diffblocks' CLIPTextModelWithProjection "
                             "(attention runs through scaled_dot_product_attention); use transformers' class.")
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected keyword arguments {sorted(kwargs)}")
        last, pooled, hidden = self.text_model(input_ids, attention_mask, position_ids, bool(output_hidden_states))
        embeds = self.text_projection(pooled)
        if return_dict is False:
            return tuple(x for x in (embeds, last, hidden) if x is not None)
        return CLIPTextModelOutput(text_embeds=embeds, last_hidden_state=last, hidden_states=hidden)


# ----------------------------------------------------------------------------------------------- helpers
_HUB_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def _check_subfolder(subfolder: Any) -> None:
    if subfolder is not None and not isinstance(subfolder, str):
        raise TypeError(f"`subfolder` must be a string or None, got {type(subfolder).__name__}")