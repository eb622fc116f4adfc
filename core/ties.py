"""TIES merging of task vectors, one tensor at a time (Yadav et al. 2023; DESIGN.md section 2).

A task vector here is the full weight update of one LoRA'd module at one checkpoint,
``dW_i = (alpha / r) * B_i @ A_i`` (never the A and B factors separately, the published code's
mistake). For task vectors ``tau_i`` with weights ``w_i``:

1. trim:   keep the ``density`` fraction of entries of each ``tau_i`` with the largest |value|;
2. elect:  ``s = sign(sum_i w_i * trimmed_i)`` per entry;
3. merge:  per entry, the ``w``-weighted mean of the trimmed values whose sign equals ``s``
           (entries where nothing agrees, or ``s = 0``, become 0).

``linear_merge`` (the weighted mean, the ablation TIES beats) and the checkpoint weightings SMA
(uniform) and EMA (recent checkpoints heavier) live here too. Everything is pure tensor math.
"""

from __future__ import annotations

import math

import torch


def keep_count(numel: int, density: float) -> int:
    """How many entries trimming keeps: round(density * numel), at least 1 when density > 0."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, round(density * numel))


def trim_threshold(task_vector: torch.Tensor, density: float) -> float:
    """The smallest |value| kept: entries with |value| >= threshold survive trimming.

    Exact (``kthvalue`` over the whole tensor). When several entries tie at the threshold all are
    kept, so slightly more than the density fraction can survive; random-valued updates never tie.
    """
    flat = task_vector.detach().abs().flatten().float()
    keep = keep_count(flat.numel(), density)
    return flat.kthvalue(flat.numel() - keep + 1).values.item()


def trim(task_vector: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(task_vector.abs() >= threshold, task_vector, torch.zeros_like(task_vector))


def signed_sums(trimmed: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(k, ...) trimmed task vectors, (k,) weights -> four (...) sums per entry: P = sum_i w_i relu(t_i),
    N = sum_i w_i relu(-t_i), and the weights behind each, Dp = sum of w_i where t_i > 0, Dn where t_i < 0."""
    w = weights.to(trimmed.dtype).view(-1, *([1] * (trimmed.dim() - 1)))
    positive, negative = (trimmed > 0).to(trimmed.dtype), (trimmed < 0).to(trimmed.dtype)
    magnitude = trimmed.abs()
    return (
        (w * magnitude * positive).sum(0),
        (w * magnitude * negative).sum(0),
        (w * positive).sum(0),
        (w * negative).sum(0),
    )


def elect_and_mean(
    pos_sum: torch.Tensor, neg_sum: torch.Tensor, pos_weight: torch.Tensor, neg_weight: torch.Tensor
) -> torch.Tensor:
    """Steps 2 and 3 from the four sums of ``signed_sums``; the reference and the streamed merge
    (teacher/merge.py) both end here.

    The elected sign is sign(P - N) = sign(sum_i w_i t_i); the merged value is the weighted mean of
    the entries with that sign: P / Dp for +, -N / Dn for -, and 0 where P == N (nothing to elect).
    Worked example (DESIGN.md): t = (0.3, -0.1, 0.2), w = 1 -> P = 0.5, N = 0.1, Dp = 2 -> 0.25.
    """
    return torch.where(
        pos_sum > neg_sum,
        pos_sum / pos_weight.clamp(min=1e-30),
        torch.where(neg_sum > pos_sum, -neg_sum / neg_weight.clamp(min=1e-30), 0.0),
    )


def ties_merge(task_vectors: torch.Tensor, weights: torch.Tensor, density: float) -> torch.Tensor:
    """(k, ...) stacked task vectors of one tensor, (k,) weights -> the merged (...) update."""
    thresholds = [trim_threshold(tv, density) for tv in task_vectors]
    return ties_merge_trimmed(task_vectors, weights, thresholds)


def ties_merge_trimmed(task_vectors: torch.Tensor, weights: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """TIES with precomputed trim thresholds, so a tensor can be merged in row chunks: the
    thresholds are properties of whole task vectors, the sign election and the mean are per entry."""
    trimmed = torch.stack([trim(tv, th) for tv, th in zip(task_vectors, thresholds, strict=True)])
    return elect_and_mean(*signed_sums(trimmed, weights))


def linear_merge(task_vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean sum_i w_i * tau_i / sum_i w_i."""
    w = weights.to(task_vectors.dtype)
    return torch.tensordot(w, task_vectors, dims=1) / w.sum()


def sma_weights(k: int) -> torch.Tensor:
    """Uniform weights over k checkpoints (oldest first)."""
    return torch.full((k,), 1.0 / k)


def ema_weights(k: int, alpha: float = 0.5) -> torch.Tensor:
    """Weights of an exponential moving average over k checkpoints, oldest first:
    m_1 = tau_1, m_i = alpha * tau_i + (1 - alpha) * m_{i-1}  =>  w_k = alpha, w_{k-1} = alpha(1-alpha),
    ..., w_2 = alpha (1-alpha)^(k-2), w_1 = (1-alpha)^(k-1); they sum to 1."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"EMA alpha must be in (0, 1], got {alpha}")
    weights = [alpha * (1 - alpha) ** (k - 1 - i) for i in range(k)]
    weights[0] = (1 - alpha) ** (k - 1)
    total = math.fsum(weights)
    return torch.tensor([w / total for w in weights])


WEIGHTINGS = {"sma": lambda k, alpha: sma_weights(k), "ema": ema_weights}
