"""Test tiers: default (fast CPU), and markers alfworld / ray / slow / gpu (pyproject.toml)."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _has_alfworld() -> bool:
    return importlib.util.find_spec("textworld") is not None and importlib.util.find_spec("alfworld") is not None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    alfworld_missing = not _has_alfworld()
    if alfworld_missing and os.environ.get("REQUIRE_ALFWORLD") == "1":
        raise pytest.UsageError(
            "REQUIRE_ALFWORLD=1 but the alfworld extra is not installed: bash scripts/setup.sh dev,alfworld"
        )
    cuda_missing = not _has_cuda()
    for item in items:
        if alfworld_missing and "alfworld" in item.keywords:
            item.add_marker(
                pytest.mark.skip(reason="alfworld extra not installed (bash scripts/setup.sh dev,alfworld)")
            )
        if cuda_missing and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
