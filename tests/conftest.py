"""Shared pytest set-up: no network, tiny checkpoints built once per session.

The session fixtures below return folders that tests must treat as read-only (copy them before editing).
"""
from __future__ import annotations

import os

# No test may use the network: make huggingface_hub (which reads this at import) work from the cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> str:
    """A tiny SD 1.x pipeline folder (diffusers layout), default weights only."""
    from tests.fixtures.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(str(tmp_path_factory.mktemp("tiny-sd") / "sd"), kind="sd")


@pytest.fixture(scope="session")
def tiny_sd2_folder(tmp_path_factory) -> str:
    """A tiny SD 2.x (v-prediction, linear projection) pipeline folder."""
    from tests.fixtures.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(str(tmp_path_factory.mktemp("tiny-sd2") / "sd2"), kind="sd2")


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory) -> str:
    """A tiny SDXL base pipeline folder."""
    from tests.fixtures.tiny import build_tiny_sdxl_folder

    return build_tiny_sdxl_folder(str(tmp_path_factory.mktemp("tiny-sdxl") / "sdxl"), kind="base")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_folder(tmp_path_factory) -> str:
    """A tiny SDXL refiner (img2img) pipeline folder."""
    from tests.fixtures.tiny import build_tiny_sdxl_folder

    return build_tiny_sdxl_folder(str(tmp_path_factory.mktemp("tiny-refiner") / "refiner"), kind="refiner")
