"""diffblocks' CLIP tokenizer against transformers' CLIPTokenizer (the oracle): same ids on varied text; files both ways."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from diffblocks.models.clip_tokenizer import CLIPTokenizer  # noqa: E402
from tests.fixtures.tiny import tokenizer_words, write_tiny_tokenizer  # noqa: E402

DIGITS = os.path.join(os.path.dirname(__file__), "..", "..", "src", "diffblocks", "default_models", "tiny-digits",
                      "tokenizer")
_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,!?'\"-_()[]{}<>|/\\@#$%^&*~`;:\t\n") + [
    "é", "ü", "ß", "Σ", "ς", "日本", "語", "😀", "ﬁ", "İ", "e\u0301", "’", "…", "\u00a0", "\u3000", "'s", "'ll", "n't",
    "<|endoftext|>", "<|startoftext|>", "ＡＢＣ", "١٢٣", "Ⅻ",
]
_FIXED = [
    "", " ", "a photo of a cat", "A PHOTO of an Astronaut riding a horse on the moon!!!", "seven",
    "a handwritten digit seven", "7", "  leading and trailing  ", "it's I'm we'll they'd you've", "123456", "3.14159",
    "x" * 200, "ΣΑΣ Ünïcode ｆｕｌｌ 123 4.5", "<|endoftext|>cat<|startoftext|>", "hello!", "a cat!!", "digit digit nine",
]


def _texts(seed: int = 0):
    rng = random.Random(seed)
    words = tokenizer_words + ("seven", "digit", "handwritten", "zero", "nine", "a", "3")
    texts = list(_FIXED)
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(150)]
    texts += ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 60))) for _ in range(150)]
    return texts


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {
        "sd": write_tiny_tokenizer(str(root / "sd")),
        "sd2_pad_bang": write_tiny_tokenizer(str(root / "sd2"), pad_token="!"),
        "short": write_tiny_tokenizer(str(root / "short"), model_max_length=12),
        "digits": DIGITS,
    }


def _quiet(tok):
    tok.deprecation_warnings = {"sequence-length-is-longer-than-the-specified-maximum": True}
    return tok


@pytest.mark.parametrize("name", ["sd", "sd2_pad_bang", "short", "digits"])
def test_token_ids_match_transformers(folders, name):
    ref = _quiet(transformers.CLIPTokenizer.from_pretrained(folders[name]))
    ours = CLIPTokenizer.from_pretrained(folders[name])
    assert (len(ours), ours.pad_token_id, ours.bos_token_id, ours.eos_token_id, ours.unk_token_id,
            ours.model_max_length) == (len(ref), ref.pad_token_id, ref.bos_token_id, ref.eos_token_id,
                                       ref.unk_token_id, ref.model_max_length)
    texts = _texts()
    mismatches = []
    for text in texts:
        for kw in ({}, {"padding": "max_length", "max_length": ref.model_max_length, "truncation": True},
                   {"padding": "longest", "truncation": True}):
            a, b = ref([text], **kw), ours([text], **kw)
            if a.input_ids != b.input_ids or a.attention_mask != b.attention_mask:
                mismatches.append((text, kw, a.input_ids, b.input_ids))
        ids = ref(text).input_ids
        for skip in (False, True):
            if ref.decode(ids, skip_special_tokens=skip) != ours.decode(ids, skip_special_tokens=skip):
                mismatches.append(("decode", text, skip))
    assert not mismatches, mismatches[:3]
    # batched, tensors: the SD text-encoding call
    a = ref(texts[:40], padding="max_length", max_length=ref.model_max_length, truncation=True, return_tensors="pt")
    b = ours(texts[:40], padding="max_length", max_length=ref.model_max_length, truncation=True, return_tensors="pt")
    assert b.input_ids.dtype == torch.long and b.input_ids.shape == (40, ref.model_max_length)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert ref.batch_decode(a.input_ids[:, 3:-1]) == ours.batch_decode(b.input_ids[:, 3:-1])


def test_known_ids_and_output_forms(folders):
    tok = CLIPTokenizer.from_pretrained(folders["sd"])
    single = tok("a photo of a cat")
    assert single.input_ids[0] == tok.bos_token_id and single.input_ids[-1] == tok.eos_token_id
    assert single["input_ids"] is single.input_ids and single.attention_mask == [1] * len(single.input_ids)
    assert tok.convert_ids_to_tokens(single.input_ids[1:-1]) == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert tok.tokenize("A Cat") == ["a</w>", "cat</w>"]
    assert tok.convert_tokens_to_ids("cat</w>") == single.input_ids[-2]
    assert tok.convert_tokens_to_ids(["no-such-token"]) == [tok.unk_token_id]
    assert tok.decode(single.input_ids, skip_special_tokens=True) == "a photo of a cat"
    pt = tok("a cat", padding="max_length", max_length=8, return_tensors="pt")
    assert pt.input_ids.shape == (1, 8) and pt.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    assert pt.input_ids[0, 4:].tolist() == [tok.pad_token_id] * 4
    assert tok("a cat " * 50, max_length=10).input_ids[-1] == tok.eos_token_id  # max_length alone truncates
    assert len(tok("a cat " * 50, max_length=10).input_ids) == 10
    assert tok.encode("a cat") == tok("a cat").input_ids
    assert pt.to("cpu") is pt
    left = tok("a cat", padding="max_length", max_length=6, padding_side="left").input_ids
    assert left[:2] == [tok.pad_token_id] * 2 and left[2:] == single_ids("a cat", tok)
    with pytest.raises(ValueError, match="padding_side"):
        tok("a", padding=True, padding_side="middle")


def single_ids(text, tok):
    return tok(text).input_ids


def test_errors(folders, tmp_path):
    tok = CLIPTokenizer.from_pretrained(folders["sd"])
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="np")
    with pytest.raises(ValueError, match="text input"):
        tok(3)
    with pytest.raises(ValueError, match="max_length"):
        tok("a", max_length=0, truncation=True)
    with pytest.raises(ValueError, match="truncation and/or padding"):
        tok(["a", "a photo of a cat"], return_tensors="pt")
    with pytest.raises(EnvironmentError, match="vocab.json"):
        CLIPTokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(TypeError, match="new_tokens"):
        tok.add_tokens(5)


def test_add_tokens_matches_transformers(folders):
    ref = transformers.CLIPTokenizer.from_pretrained(folders["sd"])
    ours = CLIPTokenizer.from_pretrained(folders["sd"])
    assert ours.add_tokens(["<Cat-Toy>", "sks", "sks"]) == ref.add_tokens(["<Cat-Toy>", "sks"]) == 2
    assert len(ours) == len(ref)
    for text in ["a <cat-toy> on a <Cat-Toy>", "sks dog", "asksb", "<CAT-TOY>!", "<|endoftext|><cat-toy>"]:
        assert ours(text).input_ids == ref(text).input_ids, text
    assert ours.convert_tokens_to_ids("<Cat-Toy>") == ref.convert_tokens_to_ids("<Cat-Toy>") == len(ours) - 2
    assert ours.convert_ids_to_tokens([len(ours) - 2]) == ref.convert_ids_to_tokens([len(ours) - 2]) == ["<cat-toy>"]
    ids = ref("a <Cat-Toy> sks").input_ids
    assert ours.decode(ids) == ref.decode(ids) and ours.decode(ids, skip_special_tokens=True) == \
        ref.decode(ids, skip_special_tokens=True)


def test_save_both_ways(folders, tmp_path):
    texts = _texts(1)[:80]
    ours = CLIPTokenizer.from_pretrained(folders["sd2_pad_bang"])
    ours.add_tokens(["<Cat-Toy>"])
    ours.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json",
                                                     "vocab.json"]
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "CLIPTokenizer" and config["pad_token"] == "!"
    ref = _quiet(transformers.CLIPTokenizer.from_pretrained(tmp_path / "ours"))
    assert len(ref) == len(ours) and ref.pad_token_id == ours.pad_token_id
    for text in texts + ["a <cat-toy>"]:
        assert ref([text], padding="max_length", truncation=True).input_ids == \
            ours([text], padding="max_length", truncation=True).input_ids, text
    # transformers 5 writes tokenizer.json + tokenizer_config.json only: we read that too
    ref.save_pretrained(tmp_path / "theirs")
    assert "tokenizer.json" in os.listdir(tmp_path / "theirs")
    back = CLIPTokenizer.from_pretrained(tmp_path / "theirs")
    assert len(back) == len(ref) and back.model_max_length == ref.model_max_length
    for text in texts + ["a <cat-toy>"]:
        assert back(text).input_ids == ref(text).input_ids, text


def test_subfolder_and_overrides(folders, tmp_path):
    import shutil

    shutil.copytree(folders["sd"], tmp_path / "pipe" / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "pipe"), subfolder="tokenizer", model_max_length=9)
    assert tok.model_max_length == 9
    assert tok("a cat " * 20, padding="max_length", truncation=True, return_tensors="pt").input_ids.shape == (1, 9)
