"""PPO's clipped policy and value losses on per-step log-probs (DESIGN.md section 2: clip 0.1 both).

    ratio  = exp(log pi_new(a|s) - log pi_old(a|s))
    L_pi   = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))
    L_V    = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2))

Decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy optimization", arXiv 2110.00641;
AReaL, Fu et al. 2025, arXiv 2505.24298), for steps sampled by an older policy than the learner's (issue 19):
the ratio and its clip are taken against the proximal policy (the learner's at the update's start, "old"
above), and each step's term is weighted by ``w = pi_prox / pi_behaviour`` (capped), which corrects the
expectation from the behaviour policy's samples to the proximal policy's:

    L_pi   = -mean(w * min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))

Stats: ``clip_fraction`` (share of steps whose ratio left the clip range) and ``approx_kl`` (the k3
estimate mean((ratio - 1) - log ratio) of KL(old || new), always >= 0).
"""

from __future__ import annotations

import torch


def policy_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B,) step log-probs and advantages -> scalar loss and stats (0-d tensors: no host sync here).
    ``weights``: decoupled PPO's per-step ``pi_prox / pi_behaviour`` (None: every step on-policy)."""
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    surrogate = torch.minimum(unclipped, clipped)
    loss = -(surrogate if weights is None else weights * surrogate).mean()
    with torch.no_grad():
        stats = {
            "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        }
    return loss, stats


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """(B,) values -> scalar clipped value loss."""
    clipped = old_values + (new_values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((new_values - returns) ** 2, (clipped - returns) ** 2).mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target is constant."""
    var = target.var(unbiased=False)
    if var == 0:
        return float("nan")
    return (1.0 - (target - predicted).var(unbiased=False) / var).item()
