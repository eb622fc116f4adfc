"""Generalised advantage estimation over each env's sequence of agent steps (DESIGN.md section 6).

The discount runs over env steps, not tokens: one transition is one agent turn. A rollout batch is
``rounds x K`` transitions in round-major order, so column ``k`` of the (rounds, K) arrays is env
``k``'s steps in time order. ``dones[t, k]`` means the episode ended at step t (terminated or
truncated; truncation is treated as an end, as RL4VLM does), so nothing flows back across it.
``next_values[k]`` is the value of the state env k is in after the last round (0 when that last step
ended an episode).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    R_t     = A_t + V(s_t)
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rounds, K) rewards, values, dones and (K,) next_values -> advantages and returns, (rounds, K)."""
    rounds = rewards.shape[0]
    advantages = torch.zeros_like(rewards, dtype=torch.float32)
    carry = torch.zeros_like(next_values, dtype=torch.float32)
    next_value = next_values.float()
    for t in reversed(range(rounds)):
        alive = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * next_value * alive - values[t]
        carry = delta + gamma * lam * alive * carry
        advantages[t] = carry
        next_value = values[t]
    return advantages, advantages + values
