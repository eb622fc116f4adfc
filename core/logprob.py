"""The log-probability of one agent step (DESIGN.md section 2, RL4VLM):

    log pi(a | s) = lambda * sum(log p of thought tokens) + sum(log p of action tokens)

with lambda = 0.5 on the card games and 0.2 on ALFWorld: the long thoughts count, but less than the
action that is actually executed.
"""

from __future__ import annotations

import torch


def step_logprob(
    token_logprobs: torch.Tensor, thought_mask: torch.Tensor, action_mask: torch.Tensor, thought_weight: float
) -> torch.Tensor:
    """(B, T) token log-probs and boolean masks -> (B,) step log-probs."""
    thought = (token_logprobs * thought_mask).sum(-1)
    action = (token_logprobs * action_mask).sum(-1)
    return thought_weight * thought + action
