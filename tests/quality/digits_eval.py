"""Shared helpers of the tiny-digits quality gate (tests/quality) and bench/quality_table.py.

A logistic-regression classifier is fit on scikit-learn's digits (8x8, the data the model was trained on);
generated 32x32 images are turned back into 8x8 digits (grey level, 4x4 average pooling) and classified.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def prompt_for(digit: int) -> str:
    return f"a handwritten digit {DIGIT_NAMES[digit]}"


def fit_digit_classifier():
    """Logistic regression on all 1797 sklearn digits, features = pixels / 16 (values in [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    clf = LogisticRegression(max_iter=3000, C=1.0)
    clf.fit(digits.data / 16.0, digits.target)
    return clf


def to_8x8(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) float images in [0, 1] -> (N, 64) grey 8x8 features in [0, 1]."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] % 8 or images.shape[2] % 8:
        raise ValueError(f"`images` must be (N, H, W, C) with H and W multiples of 8, got shape {images.shape}")
    grey = images.mean(axis=-1)
    n, h, w = grey.shape
    pooled = grey.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))
    return pooled.reshape(n, 64)


def classify(clf, images: np.ndarray) -> np.ndarray:
    return clf.predict(to_8x8(images))


def digit_requests(seeds: Sequence[int]) -> Tuple[List[str], List[int], List[int]]:
    """Prompts, target digits and seeds for every digit x seed (digit-major order)."""
    prompts, targets, all_seeds = [], [], []
    for d in range(10):
        for s in seeds:
            prompts.append(prompt_for(d))
            targets.append(d)
            all_seeds.append(s)
    return prompts, targets, all_seeds


def generators(seeds: Sequence[int]):
    import torch

    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
