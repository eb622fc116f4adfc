"""The teacher's KL penalty on the student's thoughts (GTR-Turbo, DESIGN.md section 2).

Per thought token, with student log-prob ``s`` (the rollout's, i.e. the old policy that sampled it)
and teacher log-prob ``t`` of the same sampled token:

- ``k1_clip`` (the paper's choice): clamp(s - t, 0, max): only where the student is more confident
  than the teacher; the paper's code caps at 10.
- ``abs``: |s - t|.
- ``k3``: exp(t - s) - (t - s) - 1, >= 0, an unbiased low-variance estimate of KL(student || teacher).

The step's penalty is the mean over its thought tokens (0 for a step without thought tokens); the
advantage becomes ``A - beta * KL``. Reverse KL on sampled tokens: the samples come from the student.
"""

from __future__ import annotations

import torch

K1_CLIP_MAX = 10.0


def k1_clip(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student - teacher).clamp(0.0, K1_CLIP_MAX)


def k1_abs(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student - teacher).abs()


def k3(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    log_ratio = teacher - student
    return log_ratio.exp() - log_ratio - 1.0


ESTIMATORS = {"k1_clip": k1_clip, "abs": k1_abs, "k3": k3}


def thought_kl(
    student: torch.Tensor, teacher: torch.Tensor, thought_mask: torch.Tensor, estimator: str = "k1_clip"
) -> torch.Tensor:
    """(B, T) token log-probs and thought mask -> (B,) mean per-token penalty over thought tokens."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    mask = thought_mask.float()
    per_token = ESTIMATORS[estimator](student.float(), teacher.float()) * mask
    return per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)
