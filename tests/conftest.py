"""Test tiers: default (fast CPU), and markers alfworld / vllm / ray / slow / gpu (pyproject.toml)."""

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


def vllm_device() -> str:
    """Where the installed vLLM runs: 'cpu' for the CPU build, else 'cuda'."""
    from models.engines.vllm import installed_build

    return "cpu" if installed_build() == "cpu" else "cuda"


def _vllm_missing() -> str | None:
    """Why vLLM cannot run here, or None."""
    from models.engines.vllm import VLLMUnavailable, check_available

    try:
        check_available(vllm_device())
    except VLLMUnavailable as error:
        return str(error)
    return None


def pytest_collection_modifyitems(config, items):
    alfworld_missing = not _has_alfworld()
    if alfworld_missing and os.environ.get("REQUIRE_ALFWORLD") == "1":
        raise pytest.UsageError(
            "REQUIRE_ALFWORLD=1 but the alfworld extra is not installed: bash scripts/setup.sh dev,alfworld"
        )
    vllm_missing = _vllm_missing() if any("vllm" in item.keywords for item in items) else None
    if vllm_missing and os.environ.get("REQUIRE_VLLM") == "1":
        raise pytest.UsageError(f"REQUIRE_VLLM=1 but {vllm_missing}")
    cuda_missing = not _has_cuda()
    for item in items:
        if vllm_missing and "vllm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=vllm_missing))
        if alfworld_missing and "alfworld" in item.keywords:
            item.add_marker(
                pytest.mark.skip(reason="alfworld extra not installed (bash scripts/setup.sh dev,alfworld)")
            )
        if cuda_missing and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
