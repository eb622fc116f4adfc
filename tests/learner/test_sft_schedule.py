"""The SFT warm start's learning-rate schedule, worked by hand: warmup (k + 1) / w, then cosine to min."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from learner.sft import _schedule


def test_warmup_learns_from_the_first_step_then_cosine_decays_to_the_floor():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _schedule(optimizer, SimpleNamespace(warmup_steps=2, steps=6, min_lr_ratio=0.1))
    seen = []
    for _ in range(9):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # k = 0, 1: warmup 1/2, 2/2; k = 2..6: 0.1 + 0.9 * (1 + cos(pi * (k - 2) / 4)) / 2; held at 0.1 after
    assert seen == pytest.approx(
        [0.5, 1.0, 1.0, 0.9 * 0.853553 + 0.1, 0.55, 0.9 * 0.146447 + 0.1, 0.1, 0.1, 0.1], abs=1e-6
    )
