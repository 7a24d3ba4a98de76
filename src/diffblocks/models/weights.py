"""State-dict input/output in the diffusers file layout.

* file names: ``diffusion_pytorch_model[.<variant>][-00001-of-0000N].safetensors`` (+ ``.bin``), index files
  ``diffusion_pytorch_model.safetensors.index[.<variant>].json`` and the legacy variant shard layout;
* reading: safetensors files are memory-mapped and viewed in place (no copy when the dtype is kept),
  ``.bin`` files go through ``torch.load(weights_only=True)``;
* writing: shards by ``max_shard_size``, index json when there is more than one shard, safetensors metadata
  ``{"format": "pt"}``.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import re
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.bin"
SAFETENSORS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"
SAFE_WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
TRANSFORMERS_WEIGHTS_NAME = "pytorch_model.bin"
TRANSFORMERS_SAFE_WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_WEIGHT_PREFIXES = ("diffusion_pytorch_model", "model", "weights", "pytorch_model")
_WEIGHT_EXTS = ("bin", "safetensors", "onnx", "pb")
_SHARD = r"\d{5}-of-\d{5}"
_P = "(?:" + "|".join(_WEIGHT_PREFIXES) + ")"
_E = "(?:" + "|".join(_WEIGHT_EXTS) + ")"

LEGACY_VARIANT_WARNING = (
    "Warning: The repository contains sharded checkpoints for variant '{variant}' maybe in a deprecated format. "
    "Please check your files carefully:\n\n"
    "- Correct format example: diffusion_pytorch_model.fp16-00003-of-00003.safetensors\n"
    "- Deprecated format example: diffusion_pytorch_model-00001-of-00002.fp16.safetensors\n\n"
    "If you find any files in the deprecated format:\n"
    "1. Remove all existing checkpoint files for this variant.\n"
    "2. Re-obtain the correct files by running `save_pretrained()`.\n\n"
    "This will ensure you're using the most up-to-date and compatible checkpoint format."
)

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)


# ----------------------------------------------------------------------------------------------- file names
def add_variant(name: str, variant: Optional[str] = None) -> str:
    """Insert ``variant`` before the last extension: ``a.safetensors`` -> ``a.fp16.safetensors``."""
    if not variant:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        return f"{name}.{variant}"
    return f"{stem}.{variant}.{ext}"


def shard_file_name(weights_name: str, index: int, total: int, variant: Optional[str] = None) -> str:
    """``diffusion_pytorch_model[.variant]-0000i-of-0000n.ext`` (1-based ``index``)."""
    stem, _, ext = weights_name.rpartition(".")
    if variant:
        stem = f"{stem}.{variant}"
    return f"{stem}-{index:05d}-of-{total:05d}.{ext}"


def index_file_name(weights_name: str, variant: Optional[str] = None) -> str:
    """``<weights_name>.index[.variant].json``."""
    return add_variant(f"{weights_name}.index.json", variant)


def is_variant_weight_file(filename: str, variant: str) -> bool:
    """True for ``P.<variant>.E`` or ``P.<variant>-IDX.E`` (basename is used)."""
    v = re.escape(variant)
    return re.match(rf"^{_P}\.(?:{v}|{v}-{_SHARD})\.{_E}$", os.path.basename(filename)) is not None


def is_non_variant_weight_file(filename: str) -> bool:
    return re.match(rf"^{_P}(?:-{_SHARD})?\.{_E}$", os.path.basename(filename)) is not None


def is_variant_index_file(filename: str, variant: str) -> bool:
    return re.match(rf"^{_P}\.{_E}\.index\.{re.escape(variant)}\.json$", os.path.basename(filename)) is not None


def is_non_variant_index_file(filename: str) -> bool:
    return re.match(rf"^{_P}\.{_E}\.index\.json$", os.path.basename(filename)) is not None


def is_legacy_variant_weight_file(filename: str, variant: str) -> bool:
    return re.match(rf"^.*-{_SHARD}\.{re.escape(variant)}\.[a-z]+$", os.path.basename(filename)) is not None


def is_legacy_variant_index_file(filename: str, variant: str) -> bool:
    return re.match(rf"^{_P}\.{_E}\.{re.escape(variant)}\.index\.json$", os.path.basename(filename)) is not None


def parse_size(size: Union[int, str]) -> int:
    """``10GB`` / ``500MB`` / ``1.5GiB`` / int -> bytes (decimal units for B/KB/MB/GB, binary for KiB/MiB/GiB)."""
    if isinstance(size, bool):
        raise TypeError(f"max_shard_size must be an int (bytes) or a string like '10GB', got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"max_shard_size must be an int (bytes) or a string like '10GB', got {type(size).__name__}")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)\s*", size.upper().replace("IB", "iB"))
    if m is None:
        raise ValueError(f"max_shard_size={size!r} is not understood; use an int (bytes) or e.g. '10GB', '500MB'")
    number, unit = float(m.group(1)), m.group(2)
    base = 1024 if "i" in unit else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[:1] if unit[:1] in "KMGT" else ""]
    value = int(number * base**power)
    # transformers/diffusers treat "5GB" with a lower-case "b" as bits; we keep bytes for both spellings
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


# ----------------------------------------------------------------------------------------------- locate files
class WeightFiles:
    """What :func:`find_weight_files` found: the files to read (in order) and where from."""

    def __init__(self, files: List[str], index_file: Optional[str], safetensors: bool, variant: Optional[str]):
        self.files = files
        self.index_file = index_file
        self.safetensors = safetensors
        self.variant = variant

    @property
    def sharded(self) -> bool:
        return self.index_file is not None

    def __repr__(self) -> str:
        return f"WeightFiles(files={self.files!r}, index_file={self.index_file!r})"


def _read_index(index_path: str) -> Dict[str, str]:
    with open(index_path, "r", encoding="utf-8") as f:
        try:
            index = json.load(f)
        except json.JSONDecodeError as e:
            raise EnvironmentError(f"The index file at '{index_path}' is not a valid JSON file: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise EnvironmentError(f"The index file at '{index_path}' has no 'weight_map' dictionary.")
    for shard in weight_map.values():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or "/" in shard or "\\" in shard:
            raise ValueError(
                f"The index file at '{index_path}' names the shard {shard!r}; shard names must be plain file names "
                "without path separators."
            )
    return weight_map


def _files_from_index(folder: str, index_path: str) -> List[str]:
    weight_map = _read_index(index_path)
    shards = sorted(set(weight_map.values()))
    files = [os.path.join(folder, s) for s in shards]
    missing = [s for s, f in zip(shards, files) if not os.path.isfile(f)]
    if missing:
        raise EnvironmentError(
            f"The index file '{os.path.basename(index_path)}' in {folder} lists shards that are not present: "
            f"{missing[:5]}"
        )
    return files


def find_weight_files(
    folder: str,
    *,
    variant: Optional[str] = None,
    use_safetensors: Optional[bool] = None,
    weights_names: Tuple[str, str] = (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME),
) -> WeightFiles:
    """Pick the weight files of one model folder following diffusers' rules.

    ``use_safetensors``: ``None`` prefers safetensors and falls back to ``.bin`` (with a warning), ``True``
    requires safetensors, ``False`` reads ``.bin`` only. Sharded checkpoints are found through their index json
    (the legacy ``.safetensors.<variant>.index.json`` layout is accepted with a warning).
    """
    if use_safetensors not in (None, True, False):
        raise TypeError(f"use_safetensors must be None, True or False, got {use_safetensors!r}")
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant):
        raise ValueError(f"variant must be a non-empty string such as 'fp16' or None, got {variant!r}")
    if not os.path.isdir(folder):
        raise EnvironmentError(f"Error no file named {CONFIG_NAME} found in directory {folder}.")
    safe_name, bin_name = weights_names
    kinds: List[Tuple[str, bool]] = []
    if use_safetensors is not False:
        kinds.append((safe_name, True))
    if use_safetensors is not True:
        kinds.append((bin_name, False))

    for weights_name, is_safe in kinds:
        # sharded, new layout
        index = os.path.join(folder, index_file_name(weights_name, variant))
        if os.path.isfile(index):
            return WeightFiles(_files_from_index(folder, index), index, is_safe, variant)
        if variant is not None:
            legacy = os.path.join(folder, f"{weights_name}.{variant}.index.json")
            if os.path.isfile(legacy):
                logger.warning(LEGACY_VARIANT_WARNING.format(variant=variant))
                return WeightFiles(_files_from_index(folder, legacy), legacy, is_safe, variant)
        single = os.path.join(folder, add_variant(weights_name, variant))
        if os.path.isfile(single):
            if not is_safe and use_safetensors is None:
                logger.warning(
                    "No safetensors file found in %s; loading %s. Defaulting to unsafe serialization. Pass "
                    "`allow_pickle=False` to raise an error instead.",
                    folder, os.path.basename(single),
                )
            return WeightFiles([single], None, is_safe, variant)
        if is_safe and use_safetensors is True:
            break

    if variant is not None:
        present = os.listdir(folder)
        has_variant = any(is_variant_weight_file(f, variant) or is_legacy_variant_weight_file(f, variant)
                          for f in present)
        if not has_variant:
            raise ValueError(
                f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
                f"available. Files in {folder}: {sorted(present)[:10]}"
            )
    if use_safetensors is None:
        raise EnvironmentError(
            f"Error no file named {add_variant(safe_name, variant)} or {add_variant(bin_name, variant)} found in "
            f"directory {folder}."
        )
    name = add_variant(safe_name if use_safetensors else bin_name, variant)
    raise EnvironmentError(f"Error no file named {name} found in directory {folder}.")


# ----------------------------------------------------------------------------------------------- reading
def read_safetensors_header(path: str) -> Tuple[dict, int]:
    """Return ``(header, data_offset)`` of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise EnvironmentError(f"Unable to load weights from checkpoint file '{path}': file is too short.")
        (n,) = struct.unpack("<Q", head)
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise EnvironmentError(f"Unable to load weights from checkpoint file '{path}': corrupt header.")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise EnvironmentError(f"Unable to load weights from checkpoint file '{path}': invalid header.") from None
    return header, 8 + n


_ITEMSIZE: Dict[torch.dtype, int] = {}


def _itemsize(dtype: torch.dtype) -> int:
    size = _ITEMSIZE.get(dtype)
    if size is None:
        size = _ITEMSIZE[dtype] = torch.empty((), dtype=dtype).element_size()
    return size


def load_safetensors(
    path: str,
    *,
    dtype: Optional[torch.dtype] = None,
    keys: Optional[Iterable[str]] = None,
) -> Dict[str, torch.Tensor]:
    """Memory-map ``path`` and return its tensors as views of the mapping.

    The mapping is private (copy on write): the tensors are writable, writes never reach the file, and
    pages are read from the page cache on first touch. When ``dtype`` is given, floating tensors are cast
    (which allocates); other tensors keep their dtype.
    """
    header, start = read_safetensors_header(path)
    header.pop("__metadata__", None)
    wanted = None if keys is None else set(keys)
    out: Dict[str, torch.Tensor] = {}
    size = os.path.getsize(path)
    if size == start:  # no tensor data (empty state dict or only empty tensors)
        buf = torch.empty(0, dtype=torch.uint8)
    else:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        buf = torch.frombuffer(mm, dtype=torch.uint8)
    for name, info in header.items():
        if wanted is not None and name not in wanted:
            continue
        try:
            tdtype = _DTYPES[info["dtype"]]
        except KeyError:
            raise EnvironmentError(f"Unsupported dtype {info.get('dtype')!r} for '{name}' in {path}") from None
        shape = list(info["shape"])
        begin, end = info["data_offsets"]
        itemsize = _itemsize(tdtype)
        numel = 1
        for dim in shape:
            numel *= dim
        if not (0 <= begin <= end <= size - start) or end - begin != numel * itemsize:
            raise EnvironmentError(
                f"Unable to load weights from checkpoint file '{path}': the entry for '{name}' (shape {shape}, "
                f"bytes {begin}-{end}) does not fit the file; the file is truncated or corrupt."
            )
        raw = buf[start + begin: start + end]
        if (start + begin) % itemsize:
            raw = raw.clone()  # unaligned: a view of another dtype is impossible, copy this tensor
        tensor = raw.view(tdtype).reshape(shape) if raw.numel() else torch.empty(shape, dtype=tdtype)
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        out[name] = tensor
    return out


def load_torch_file(path: str, *, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """Read a pickle checkpoint with ``weights_only=True`` (memory-mapped when the zip format allows)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # pragma: no cover - depends on the file
        raise EnvironmentError(f"Unable to load weights from checkpoint file '{path}': {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EnvironmentError(f"The checkpoint file '{path}' does not contain a state dict.")
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state


def load_state_dict(path: str, *, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """Read one weight file (``.safetensors`` memory-mapped, anything else through ``torch.load``)."""
    if path.endswith(".safetensors"):
        return load_safetensors(path, dtype=dtype)
    return load_torch_file(path, dtype=dtype)


def load_weight_files(files: Sequence[str], *, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    state: Dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_state_dict(path, dtype=dtype))
    return state


# ----------------------------------------------------------------------------------------------- writing
def split_state_dict(
    state_dict: Dict[str, torch.Tensor], max_shard_size: Union[int, str]
) -> List[Dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than the limit gets a shard of its own."""
    limit = parse_size(max_shard_size)
    shards: List[Dict[str, torch.Tensor]] = [{}]
    current = 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and current + nbytes > limit:
            shards.append({})
            current = 0
        shards[-1][name] = tensor
        current += nbytes
    return shards


def _storage_key(t: torch.Tensor):
    try:
        return (t.untyped_storage().data_ptr(), t.device)
    except Exception:  # pragma: no cover
        return None


def _prepare_for_safetensors(shard: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses aliases)."""
    seen = set()
    out = {}
    for name, t in shard.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        key = _storage_key(t)
        if key is not None and key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous() if not t.is_contiguous() else t.clone()
        out[name] = t
    return out


def save_state_dict(
    state_dict: Dict[str, torch.Tensor],
    folder: str,
    *,
    variant: Optional[str] = None,
    safe_serialization: bool = True,
    max_shard_size: Union[int, str, None] = "10GB",
    weights_name: Optional[str] = None,
) -> List[str]:
    """Write ``state_dict`` into the existing ``folder``; return the written file names.

    Stale shards and index files of the same stem/variant that this call does not rewrite are deleted.
    """
    if weights_name is None:
        weights_name = SAFETENSORS_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    shards = split_state_dict(state_dict, max_shard_size if max_shard_size is not None else "10GB")
    total = len(shards)
    names = [add_variant(weights_name, variant)] if total == 1 else [
        shard_file_name(weights_name, i + 1, total, variant) for i in range(total)
    ]
    written = []
    for shard, name in zip(shards, names):
        path = os.path.join(folder, name)
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(_prepare_for_safetensors(shard), path, metadata={"format": "pt"})
        else:
            torch.save({k: v.detach().contiguous() for k, v in shard.items()}, path)
        written.append(name)
    index_name = index_file_name(weights_name, variant)
    if total > 1:
        weight_map = {k: name for shard, name in zip(shards, names) for k in shard}
        total_size = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(folder, index_name), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(index_name)
    _remove_stale(folder, weights_name, variant, keep=set(written))
    return written


def _remove_stale(folder: str, weights_name: str, variant: Optional[str], keep: set) -> None:
    stem, _, ext = weights_name.rpartition(".")
    prefix = f"{stem}.{variant}" if variant else stem
    shard_re = re.compile(rf"^{re.escape(prefix)}-{_SHARD}\.{re.escape(ext)}$")
    stale_names = {add_variant(weights_name, variant), index_file_name(weights_name, variant)}
    for name in os.listdir(folder):
        if name in keep:
            continue
        if shard_re.match(name) or name in stale_names:
            try:
                os.remove(os.path.join(folder, name))
            except OSError:  # pragma: no cover
                pass
