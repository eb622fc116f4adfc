"""The one-adapter LoRA ops for vLLM's CPU build against vLLM's own ops, on seeded random inputs."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.vllm

lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
fast = pytest.importorskip("models.engines.vllm_cpu_lora")

SLOTS, N, IN, RANK, OUT = 3, 7, 16, 4, 12


def _originals():
    """vLLM's own ops, whether or not this process already replaced them."""
    ops = {}
    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        op = getattr(lora_ops, name)
        while getattr(op, fast._INSTALLED, False):
            op = op.__closure__[0].cell_contents  # the wrapped original
        ops[name] = op
    return ops


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(N, IN, generator=g),
        "h": torch.randn(N, RANK, generator=g),
        "a": torch.randn(SLOTS, 1, RANK, IN, generator=g),  # lora_a_stacked: (slots, 1, rank, in)
        "b": torch.randn(SLOTS, 1, OUT, RANK, generator=g),  # lora_b_stacked: (slots, 1, out, rank)
        "y": torch.randn(N, OUT + 4, generator=g),  # wider than the adapter: padding
    }


def test_one_slot():
    assert fast.one_slot(torch.tensor([2, 2, 2])) == 2
    assert fast.one_slot(torch.tensor([-1, -1])) == -1  # "no adapter": vLLM's gather reads the last slot
    assert fast.one_slot(torch.tensor([0, 1, 0])) is None
    assert fast.one_slot(torch.tensor([], dtype=torch.long)) is None


@pytest.mark.parametrize("indices", [[1] * N, [-1] * N, [0, 1, 2, 0, 1, 2, 0]], ids=["one", "none", "mixed"])
def test_each_op_matches_vllms(data, indices):
    ours = {"bgmv_shrink": fast.shrink, "bgmv_expand": fast.expand, "bgmv_expand_slice": fast.expand_slice}
    idx = torch.tensor(indices)
    for name, original in _originals().items():
        op = ours[name](original)
        for add in (False, True):
            want, got = data["y"].clone(), data["y"].clone()
            if name == "bgmv_shrink":
                want, got = torch.zeros(N, RANK + 2), torch.zeros(N, RANK + 2)
                original(data["x"], data["a"], want, idx, 0.5)
                op(data["x"], data["a"], got, idx, 0.5)
            elif name == "bgmv_expand":
                original(data["h"], data["b"], want, idx, add)
                op(data["h"], data["b"], got, idx, add)
            else:
                original(data["h"], data["b"], want, idx, 2, OUT, add)
                op(data["h"], data["b"], got, idx, 2, OUT, add)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_install_is_idempotent_and_reaches_the_cpu_wrapper():
    from vllm.lora.punica_wrapper import punica_cpu

    fast.install()
    first = lora_ops.bgmv_shrink
    fast.install()
    assert lora_ops.bgmv_shrink is first and punica_cpu.bgmv_shrink is first
    assert getattr(first, fast._INSTALLED) and getattr(punica_cpu.bgmv_expand_slice, fast._INSTALLED)
