"""CLIP's byte-level BPE tokenizer, written for diffblocks (reads and writes the files of SD/SDXL ``tokenizer`` folders).

It lives next to the CLIP text encoder it feeds (``models/clip_text.py``): together they are the text path of the
SD families, and one module keeps the package's lazy tables unchanged.

Token ids match transformers' ``CLIPTokenizer`` (the ``tokenizers``-backed one of transformers 5) for the same
files:

1. special tokens (bos/eos/unk/pad and ``added_tokens_decoder`` entries marked special) are cut out of the raw
   text first, longest match first; tokens added with :meth:`CLIPTokenizer.add_tokens` are cut out of the
   normalised text;
2. normalisation: Unicode NFC, every whitespace run becomes one space, lower case (character by character);
3. pre-tokenisation with CLIP's pattern (contractions, letter runs, single digits, other symbol runs; whitespace
   is dropped);
4. each piece is turned into its byte symbols (GPT-2's byte-to-printable table), the last symbol gets ``</w>``,
   and merges from ``merges.txt`` are applied lowest rank first (leftmost first among equal ranks); a symbol
   missing from the vocabulary becomes the unknown token;
5. ``<|startoftext|>`` ... ``<|endoftext|>`` around the ids, then truncation and padding as asked.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import unicodedata
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_FILE = "tokenizer.json"
#: transformers' "no limit" value of ``model_max_length``
VERY_LARGE_INTEGER = int(1e30)
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_PIECES = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache(maxsize=1)
def _byte_tables() -> Tuple[Dict[int, str], Dict[str, int]]:
    """GPT-2's reversible byte -> printable character table, and its inverse."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table, {c: b for b, c in table.items()}


@lru_cache(maxsize=1)
def _patterns():
    import regex

    return regex.compile(_PIECES), regex.compile(r"\s+")


class BatchEncoding(dict):
    """The tokenizer's result: a dict (``enc["input_ids"]``) with attribute access (``enc.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> "BatchEncoding":
        """Move tensor values to ``device`` (in place; returns self)."""
        for key, value in list(self.items()):
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


def _token_content(value: Any) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    content = getattr(value, "content", None)
    if isinstance(content, str):
        return content
    raise TypeError(f"a special token must be a string or {{'content': str}}, got {value!r}")


class _Added:
    __slots__ = ("content", "id", "special", "normalized", "lstrip", "rstrip", "single_word")

    def __init__(self, content: str, id: int, special: bool, normalized: Optional[bool] = None,
                 lstrip: bool = False, rstrip: bool = False, single_word: bool = False) -> None:
        self.content = content
        self.id = id
        self.special = special
        self.normalized = (not special) if normalized is None else bool(normalized)
        self.lstrip = lstrip
        self.rstrip = rstrip
        self.single_word = single_word

    def to_json(self) -> Dict[str, Any]:
        return {"content": self.content, "lstrip": self.lstrip, "normalized": self.normalized,
                "rstrip": self.rstrip, "single_word": self.single_word, "special": self.special}


class CLIPTokenizer:
    """CLIP BPE tokenizer; ``tokenizer(texts, padding="max_length", max_length=77, truncation=True,
    return_tensors="pt").input_ids`` gives the ids transformers' ``CLIPTokenizer`` gives."""

    vocab_files_names = {"vocab_file": VOCAB_FILE, "merges_file": MERGES_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    #: ``model_index.json`` names this class under the transformers library, so diffusers reads our folders
    _library_name = "transformers"

    def __init__(self, vocab: Dict[str, int], merges: Sequence[Union[str, Tuple[str, str]]], *,
                 unk_token: Any = "<|endoftext|>", bos_token: Any = "<|startoftext|>",
                 eos_token: Any = "<|endoftext|>", pad_token: Any = "<|endoftext|>",
                 model_max_length: Optional[int] = None, added_tokens: Optional[Iterable[_Added]] = None,
                 config: Optional[Dict[str, Any]] = None, name_or_path: str = "") -> None:
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError("`vocab` must be a non-empty dict {token: id}")
        self.encoder: Dict[str, int] = dict(vocab)
        self.decoder: Dict[int, str] = {i: t for t, i in self.encoder.items()}
        pairs = []
        for merge in merges:
            pair = tuple(merge.split()) if isinstance(merge, str) else tuple(merge)
            if len(pair) != 2:
                raise ValueError(f"each merge must be two symbols separated by a space, got {merge!r}")
            pairs.append(pair)
        self._merge_list: List[Tuple[str, str]] = pairs
        self.bpe_ranks: Dict[Tuple[str, str], int] = {}
        for rank, pair in enumerate(pairs):
            self.bpe_ranks[pair] = rank  # a repeated merge keeps its last rank, as the tokenizers library does
        self._cache: Dict[str, List[int]] = {}
        self.init_kwargs = dict(config or {})
        self.name_or_path = name_or_path
        self.model_max_length = VERY_LARGE_INTEGER if model_max_length is None else int(model_max_length)
        self._special: Dict[str, Optional[str]] = {}
        self._added: Dict[str, _Added] = {}
        for added in added_tokens or ():
            self._register(added)
        for name, value in (("bos_token", bos_token), ("eos_token", eos_token), ("unk_token", unk_token),
                            ("pad_token", pad_token)):
            content = _token_content(value)
            self._special[name] = content
            if content is not None and content not in self._added:
                self._register(_Added(content, self._id_for_new(content), True, False))
        self._matcher = None

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *args: Any,
                        subfolder: Optional[str] = None, **kwargs: Any) -> "CLIPTokenizer":
        """Read a tokenizer folder (``vocab.json`` + ``merges.txt`` or ``tokenizer.json``, with
        ``tokenizer_config.json`` / ``special_tokens_map.json`` / ``added_tokens.json``), a ``subfolder`` of it,
        or a Hub repo id through the HF cache. Keywords such as ``model_max_length=`` or ``pad_token=`` override
        the files."""
        if args:
            raise TypeError("CLIPTokenizer.from_pretrained takes no positional arguments besides the path")
        if not isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            raise TypeError(
                "`pretrained_model_name_or_path` must be a local folder or a Hub repo id (str), got "
                f"{type(pretrained_model_name_or_path).__name__}"
            )
        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "force_download", "proxies", "local_files_only",
                                                 "token", "revision") if k in kwargs}
        for ignored in ("use_fast", "trust_remote_code", "_from_pipeline", "_from_auto", "torch_dtype", "dtype",
                        "variant", "use_safetensors", "low_cpu_mem_usage", "legacy"):
            kwargs.pop(ignored, None)
        folder = _tokenizer_folder(os.fspath(pretrained_model_name_or_path), subfolder, hub_kwargs)
        config: Dict[str, Any] = {}
        config_path = os.path.join(folder, TOKENIZER_CONFIG_FILE)
        if os.path.isfile(config_path):
            config = _read_json(config_path)
        special_map_path = os.path.join(folder, SPECIAL_TOKENS_MAP_FILE)
        special_map = _read_json(special_map_path) if os.path.isfile(special_map_path) else {}
        vocab_path, merges_path = os.path.join(folder, VOCAB_FILE), os.path.join(folder, MERGES_FILE)
        tokenizer_json = os.path.join(folder, TOKENIZER_FILE)
        added: List[_Added] = []
        if os.path.isfile(tokenizer_json):
            data = _read_json(tokenizer_json)
            model = data.get("model") or {}
            if model.get("type") not in (None, "BPE") or not isinstance(model.get("vocab"), dict):
                raise ValueError(f"{tokenizer_json} does not describe a BPE tokenizer with a vocabulary")
            vocab, merges = model["vocab"], model.get("merges") or []
            for entry in data.get("added_tokens") or []:
                added.append(_Added(entry["content"], int(entry["id"]), bool(entry.get("special", False)),
                                    entry.get("normalized"), bool(entry.get("lstrip", False)),
                                    bool(entry.get("rstrip", False)), bool(entry.get("single_word", False))))
        elif os.path.isfile(vocab_path) and os.path.isfile(merges_path):
            vocab = _read_json(vocab_path)
            with open(merges_path, "r", encoding="utf-8") as handle:
                lines = handle.read().split("\n")
            merges = [line for i, line in enumerate(lines)
                      if line.strip() and not (i == 0 and line.startswith("#version"))]
        else:
            raise EnvironmentError(
                f"Can't load the CLIP tokenizer from {folder}: it needs {VOCAB_FILE} and {MERGES_FILE} (or "
                f"{TOKENIZER_FILE})."
            )
        decoder_entries = config.get("added_tokens_decoder") or {}
        for key, entry in decoder_entries.items():
            if isinstance(entry, dict) and "content" in entry:
                added.append(_Added(entry["content"], int(key), bool(entry.get("special", False)),
                                    entry.get("normalized"), bool(entry.get("lstrip", False)),
                                    bool(entry.get("rstrip", False)), bool(entry.get("single_word", False))))
        added_path = os.path.join(folder, ADDED_TOKENS_FILE)
        if os.path.isfile(added_path):
            for content, index in sorted(_read_json(added_path).items(), key=lambda kv: kv[1]):
                if not any(a.content == content for a in added):
                    added.append(_Added(content, int(index), False))
        settings = {**{k: v for k, v in special_map.items() if k in _SPECIAL_NAMES},
                    **{k: v for k, v in config.items() if k in _SPECIAL_NAMES}}
        settings.update({k: kwargs.pop(k) for k in list(kwargs) if k in _SPECIAL_NAMES})
        max_length = kwargs.pop("model_max_length", config.get("model_max_length"))
        if kwargs:
            config = {**config, **kwargs}
        return cls(vocab, merges, model_max_length=max_length, added_tokens=added, config=config,
                   name_or_path=os.fspath(pretrained_model_name_or_path),
                   **{k: settings.get(k, default) for k, default in (
                       ("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                       ("unk_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>"))})

    # ------------------------------------------------------------------------------------------------ vocabulary
    def _id_for_new(self, content: str) -> int:
        if content in self.encoder:
            return self.encoder[content]
        return len(self)

    def _register(self, added: _Added) -> None:
        self._added[added.content] = added
        if added.content not in self.encoder:
            # tokens matched on normalised text read back normalised (as transformers' backend returns them)
            self.decoder[added.id] = _normalize(added.content) if added.normalized else added.content
        self._matcher = None

    def __len__(self) -> int:
        ids = set(self.encoder.values()) | {a.id for a in self._added.values()}
        return max(ids) + 1 if ids else 0

    @property
    def vocab_size(self) -> int:
        """Size of the BPE vocabulary (without added tokens)."""
        return len(self.encoder)

    def get_vocab(self) -> Dict[str, int]:
        vocab = dict(self.encoder)
        vocab.update({a.content: a.id for a in self._added.values()})
        return vocab

    @property
    def added_tokens_encoder(self) -> Dict[str, int]:
        return {a.content: a.id for a in sorted(self._added.values(), key=lambda a: a.id)}

    @property
    def added_tokens_decoder(self) -> Dict[int, str]:
        return {a.id: a.content for a in sorted(self._added.values(), key=lambda a: a.id)}

    def add_tokens(self, new_tokens: Union[str, Sequence[str]], special_tokens: bool = False) -> int:
        """Add whole tokens (e.g. textual-inversion placeholders) after the current ids; returns how many were
        new. Call ``text_encoder.resize_token_embeddings(len(tokenizer))`` afterwards."""
        if isinstance(new_tokens, str):
            new_tokens = [new_tokens]
        if not isinstance(new_tokens, (list, tuple)):
            raise TypeError(f"`new_tokens` must be a str or a list of str, got {type(new_tokens).__name__}")
        count = 0
        for token in new_tokens:
            content = _token_content(token)
            if not isinstance(content, str) or not content:
                raise ValueError(f"`new_tokens` must hold non-empty strings, got {token!r}")
            if content in self._added or content in self.encoder:
                continue
            self._register(_Added(content, len(self), bool(special_tokens)))
            count += 1
        return count

    def add_special_tokens(self, special_tokens_dict: Dict[str, Any], replace_additional_special_tokens: bool = True
                           ) -> int:
        count = 0
        for name, value in special_tokens_dict.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                content = _token_content(item)
                if content not in self._added and content not in self.encoder:
                    count += 1
                if content not in self._added:
                    self._register(_Added(content, self._id_for_new(content), True, False))
            if name in _SPECIAL_NAMES:
                self._special[name] = _token_content(value)
        return count

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[Optional[int], List[Optional[int]]]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> Optional[int]:
        added = self._added.get(token)
        if added is not None:
            return added.id
        if token in self.encoder:
            return self.encoder[token]
        return self.unk_token_id

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self.decoder.get(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.decoder.get(int(i)) for i in ids if int(i) not in special]

    # ---------------------------------------------------------------------------------------------- special tokens
    def _special_id(self, name: str) -> Optional[int]:
        content = self._special.get(name)
        return None if content is None else self._token_to_id(content)

    bos_token = property(lambda self: self._special.get("bos_token"))
    eos_token = property(lambda self: self._special.get("eos_token"))
    unk_token = property(lambda self: self._special.get("unk_token"))
    pad_token = property(lambda self: self._special.get("pad_token"))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))

    @property
    def special_tokens_map(self) -> Dict[str, str]:
        return {k: v for k, v in self._special.items() if v is not None}

    @property
    def all_special_tokens(self) -> List[str]:
        seen: List[str] = []
        for token in list(self._special.values()) + [a.content for a in self._added.values() if a.special]:
            if token is not None and token not in seen:
                seen.append(token)
        return seen

    @property
    def all_special_ids(self) -> List[int]:
        return [self._token_to_id(t) for t in self.all_special_tokens]

    # ------------------------------------------------------------------------------------------------ encoding
    def _split_added(self, text: str, normalized: bool) -> List[Tuple[str, Optional[int]]]:
        """Cut the added tokens of one kind (raw-text specials or normalised ones) out of ``text``."""
        matchers = self._matcher
        if matchers is None:
            import regex

            matchers = {}
            for kind in (False, True):
                contents = sorted({a.content if not kind else _normalize(a.content)
                                   for a in self._added.values() if a.normalized == kind},
                                  key=lambda c: (-len(c), c))
                matchers[kind] = (regex.compile("|".join(regex.escape(c) for c in contents)) if contents else None,
                                  {(a.content if not kind else _normalize(a.content)): a.id
                                   for a in self._added.values() if a.normalized == kind})
            self._matcher = matchers
        pattern, ids = matchers[normalized]
        if pattern is None or not text:
            return [(text, None)] if text else []
        out: List[Tuple[str, Optional[int]]] = []
        start = 0
        for match in pattern.finditer(text):
            if match.start() > start:
                out.append((text[start:match.start()], None))
            out.append((match.group(0), ids[match.group(0)]))
            start = match.end()
        if start < len(text):
            out.append((text[start:], None))
        return out

    def _bpe(self, piece: str) -> List[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        table, _ = _byte_tables()
        chars = [table[b] for b in piece.encode("utf-8")]
        symbols = chars[:-1] + [chars[-1] + "</w>"]
        unk = self.unk_token_id
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best, best_rank = -1, None
            for i in range(len(symbols) - 1):
                rank = ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                break
            merged = symbols[best] + symbols[best + 1]
            if merged not in self.encoder:  # a merge whose result is not a token: not applicable
                ranks = dict(ranks)
                ranks.pop((symbols[best], symbols[best + 1]))
                continue
            symbols[best:best + 2] = [merged]
        ids: List[int] = []
        for symbol in symbols:
            index = self.encoder.get(symbol)
            if index is None:
                index = unk
            if index is not None:
                ids.append(index)
        if len(self._cache) < 10000:
            self._cache[piece] = ids
        return ids

    def _encode_one(self, text: str) -> List[int]:
        if not isinstance(text, str):
            raise ValueError(f"text input must be of type `str` or a list of `str`, got {type(text).__name__}")
        pieces_re, _ = _patterns()
        ids: List[int] = []
        for raw, raw_id in self._split_added(text, normalized=False):
            if raw_id is not None:
                ids.append(raw_id)
                continue
            for part, part_id in self._split_added(_normalize(raw), normalized=True):
                if part_id is not None:
                    ids.append(part_id)
                    continue
                for piece in pieces_re.findall(part):
                    ids.extend(self._bpe(piece))
        return ids

    def tokenize(self, text: str, **kwargs: Any) -> List[str]:
        """Token strings of ``text`` (no start/end tokens)."""
        return [self.decoder[i] for i in self._encode_one(text)]

    def encode(self, text: str, add_special_tokens: bool = True, padding: Any = False, truncation: Any = None,
               max_length: Optional[int] = None, return_tensors: Optional[str] = None, **kwargs: Any):
        out = self(text, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                   max_length=max_length, return_tensors=return_tensors)
        return out["input_ids"]

    def __call__(self, text: Union[str, Sequence[str], None] = None, text_pair: Any = None, *,
                 add_special_tokens: bool = True, padding: Union[bool, str] = False,
                 truncation: Union[bool, str, None] = None, max_length: Optional[int] = None,
                 return_tensors: Optional[str] = None, return_attention_mask: Optional[bool] = None,
                 return_length: bool = False, pad_to_multiple_of: Optional[int] = None, verbose: bool = True,
                 **kwargs: Any) -> BatchEncoding:
        """Tokenize one string or a list of strings.

        ``padding``: False/"do_not_pad", True/"longest" (to the longest in the batch) or "max_length" (to
        ``max_length``, default ``model_max_length``). ``truncation``: True/"longest_first" cuts to ``max_length``
        (start and end tokens included). ``return_tensors``: None (lists) or "pt" (LongTensors, shape (B, L)).
        """
        if text_pair is not None:
            raise ValueError("`text_pair` is not supported by diffblocks' CLIPTokenizer")
        side = kwargs.pop("padding_side", None) or self.padding_side
        if side not in ("right", "left"):
            raise ValueError(f"`padding_side` must be 'right' or 'left', got {side!r}")
        unknown = set(kwargs) - {"return_token_type_ids", "return_overflowing_tokens", "return_special_tokens_mask",
                                 "return_offsets_mapping", "stride", "is_split_into_words"}
        if unknown:
            raise TypeError(f"CLIPTokenizer.__call__ got unexpected keyword arguments {sorted(unknown)}")
        if isinstance(text, str):
            batch, single = [text], True
        elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            batch, single = list(text), False
        else:
            raise ValueError(
                "text input must be of type `str` (single example), `List[str]` (batch or single pretokenized "
                f"example) or `List[List[str]]` (batch of pretokenized examples), got {type(text).__name__}"
            )
        if padding is True or padding == "longest":
            pad_mode = "longest"
        elif padding is False or padding is None or padding == "do_not_pad":
            pad_mode = None
        elif padding == "max_length":
            pad_mode = "max_length"
        else:
            raise ValueError(f"`padding` must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if truncation is None:
            # transformers: a max_length without padding means "truncate to it"
            truncate = max_length is not None and pad_mode is None
        elif truncation in (True, "longest_first", "only_first"):
            truncate = True
        elif truncation in (False, "do_not_truncate"):
            truncate = False
        else:
            raise ValueError(f"`truncation` must be True, False, 'longest_first' or 'do_not_truncate', got "
                             f"{truncation!r}")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool)
                                       or max_length <= 0):
            raise ValueError(f"`max_length` must be a positive int or None, got {max_length!r}")
        limit = max_length
        if limit is None and (truncate or pad_mode == "max_length"):
            limit = self.model_max_length
        if return_tensors not in (None, "pt"):
            raise ValueError(f"`return_tensors` must be None or 'pt', got {return_tensors!r}")

        bos, eos = self.bos_token_id, self.eos_token_id
        rows: List[List[int]] = []
        for item in batch:
            ids = self._encode_one(item)
            extra = 2 if add_special_tokens else 0
            if truncate and limit is not None and len(ids) + extra > limit:
                ids = ids[: max(limit - extra, 0)]
            if add_special_tokens:
                ids = [bos] + ids + [eos]
            rows.append(ids)
        target = None
        if pad_mode == "longest":
            target = max((len(r) for r in rows), default=0)
        elif pad_mode == "max_length":
            target = limit
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        masks = [[1] * len(r) for r in rows]
        if target is not None:
            pad = self.pad_token_id
            if pad is None:
                raise ValueError("Asking to pad but the tokenizer does not have a padding token.")
            for r, m in zip(rows, masks):
                missing = target - len(r)
                if missing > 0:
                    if side == "right":
                        r.extend([pad] * missing)
                        m.extend([0] * missing)
                    else:
                        r[:0] = [pad] * missing
                        m[:0] = [0] * missing
        result = BatchEncoding()
        if return_tensors == "pt":
            import torch

            if len({len(r) for r in rows}) > 1:
                raise ValueError(
                    "Unable to create tensor, you should probably activate truncation and/or padding with "
                    "'padding=True' 'truncation=True' to have batched tensors with the same length."
                )
            result["input_ids"] = torch.tensor(rows, dtype=torch.long)
            if return_attention_mask is not False:
                result["attention_mask"] = torch.tensor(masks, dtype=torch.long)
        else:
            result["input_ids"] = rows[0] if single else rows
            if return_attention_mask is not False:
                result["attention_mask"] = masks[0] if single else masks
        if return_length:
            lengths = [sum(m) for m in masks]
            result["length"] = lengths[0] if single and return_tensors is None else lengths
        return result

    # ------------------------------------------------------------------------------------------------ decoding
    def decode(self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: Any = None,
               **kwargs: Any) -> str:
        """Text of ``token_ids`` (a list, or a 0-d/1-d tensor): word ends become spaces, outer spaces dropped."""
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        _, inverse = _byte_tables()
        data = bytearray()
        for index in token_ids:
            index = int(index)
            if index in skip:
                continue
            token = self.decoder.get(index)
            if token is None:
                continue
            for char in token:
                byte = inverse.get(char)
                if byte is None:
                    data.extend(char.encode("utf-8"))
                else:
                    data.append(byte)
        text = data.decode("utf-8", errors="replace")
        return text.replace("</w>", " ").strip()

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> List[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]

    # ------------------------------------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: Union[str, os.PathLike], legacy_format: Any = None,
                        filename_prefix: Optional[str] = None, push_to_hub: bool = False, **kwargs: Any
                        ) -> Tuple[str, ...]:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (the
        files transformers' ``CLIPTokenizer`` and diffusers read); the folder is replaced file by file after the
        files are written to a temporary sibling."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported by diffblocks (no network access is assumed).")
        if not isinstance(save_directory, (str, os.PathLike)):
            raise TypeError(f"`save_directory` must be a path, got {type(save_directory).__name__}")
        save_directory = os.path.abspath(os.fspath(save_directory))
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` ({save_directory}) is a file, expected a folder.")
        parent = os.path.dirname(save_directory)
        os.makedirs(parent, exist_ok=True)
        from ..utils.fs import normal_tree_permissions

        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(save_directory)}.tmp-", dir=parent)
        names = (VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
        try:
            _write_json(os.path.join(tmp, VOCAB_FILE), self.encoder, sort_keys=False)
            with open(os.path.join(tmp, MERGES_FILE), "w", encoding="utf-8") as handle:
                handle.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merge_list))
            config = {k: v for k, v in copy.deepcopy(self.init_kwargs).items()
                      if k not in ("added_tokens_decoder", "tokenizer_file", "name_or_path", "auto_map")}
            config.update(self.special_tokens_map)
            config["model_max_length"] = self.model_max_length
            config["tokenizer_class"] = "CLIPTokenizer"
            config.setdefault("do_lower_case", True)
            config.setdefault("errors", "replace")
            config.setdefault("add_prefix_space", False)
            config.setdefault("clean_up_tokenization_spaces", False)
            config["added_tokens_decoder"] = {str(a.id): a.to_json()
                                              for a in sorted(self._added.values(), key=lambda a: a.id)}
            _write_json(os.path.join(tmp, TOKENIZER_CONFIG_FILE), config)
            _write_json(os.path.join(tmp, SPECIAL_TOKENS_MAP_FILE), self.special_tokens_map)
            normal_tree_permissions(tmp)  # the modes open() would give under the current umask
            os.makedirs(save_directory, exist_ok=True)
            for name in names:
                os.replace(os.path.join(tmp, name), os.path.join(save_directory, name))
            # a tokenizer.json / added_tokens.json from an earlier save would be read before our files
            for stale in (TOKENIZER_FILE, ADDED_TOKENS_FILE):
                path = os.path.join(save_directory, stale)
                if os.path.isfile(path):
                    os.remove(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return tuple(os.path.join(save_directory, n) for n in names)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, special_tokens={self.special_tokens_map}, "
                f"added_tokens={len(self._added)})")


CLIPTokenizerFast = CLIPTokenizer


# ---------------------------------------------------------------------------------------------------- helpers
def _normalize(text: str) -> str:
    _, spaces = _patterns()
    text = spaces.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(ch.lower() for ch in text)


def _read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise EnvironmentError(f"The tokenizer file {path} is not valid JSON: {err}") from err


def _write_json(path: str, data: Any, sort_keys: bool = True) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def _tokenizer_folder(name: str, subfolder: Optional[str], hub_kwargs: Dict[str, Any]) -> str:
    if subfolder is not None and not isinstance(subfolder, str):
        raise TypeError(f"`subfolder` must be a string or None, got {type(subfolder).__name__}")
    if os.path.isdir(name):
        folder = os.path.join(name, subfolder) if subfolder else name
        if not os.path.isdir(folder):
            raise EnvironmentError(f"Can't load the CLIP tokenizer: {folder} is not a folder.")
        return folder
    from .. import hub

    wanted = (VOCAB_FILE, MERGES_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE,
              TOKENIZER_FILE)
    prefix = f"{subfolder}/" if subfolder else ""

    def select(files: List[str]) -> List[str]:
        return [f for f in files if f in {prefix + w for w in wanted}]

    root = hub.resolve_folder(name, select=select, **hub_kwargs)
    return os.path.join(root, subfolder) if subfolder else root
