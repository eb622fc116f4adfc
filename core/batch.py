"""The types that cross between roles: transitions, episode stats and teacher labels.

Rollout workers make them, the learner and the teacher read them; all three import them from here,
never from each other.

A transition is one env step of one env. Prompts and responses are kept unpadded (padding happens
per minibatch); the observation is kept compact, as the env's render state (a few bytes) rather than
pixels, and redrawn on demand: 1,024 Points24 steps cost kilobytes instead of the 33 GB of float32
images the published code's replay buffer held (DESIGN.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Observation:
    """What the policy saw at a step: its prompt text and, for image prompts, the frame's state.

    ``models.engines.base.prompt_input`` redraws the frame and makes the engine's input.
    """

    text: str  # the user message before the image (core.answer.PromptText)
    tail: str  # and after it
    frame: tuple | None  # an env render_state(); None for a text-only prompt


@dataclass
class Transition:
    observation: Observation
    prompt_ids: list[int]  # (P,) encoded prompt, image placeholders expanded
    response_ids: list[int]  # (T,) sampled tokens, stop token included
    old_logprobs: list[float]  # (T,) per-token log-probs under the sampling policy
    thought_mask: list[bool]  # (T,) tokens before the last "action" key
    action_mask: list[bool]  # (T,) the rest
    old_logprob: float  # lambda * sum(thought) + sum(action) (DESIGN.md section 2)
    response_text: str
    action: int | str  # what the env was given
    action_recovered: bool  # False when the fallback (random / no-op) action was used
    valid: bool  # well-formed answer (format reward +), else format penalty
    env_reward: float
    format_reward: float  # kept apart: the learner adds it after GAE (GTR-Turbo)
    terminated: bool
    truncated: bool
    env_index: int  # which env of the worker (GAE runs over each env's sequence of steps)
    policy_version: int

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class SFTLabel:
    """A teacher-written answer for a visited state: train on ``loss_mask`` tokens (its thoughts)."""

    observation: Observation
    token_ids: list[int]  # (T,) the label, end token included
    loss_mask: list[bool]  # (T,) thought tokens; the student's own action is context only


@dataclass
class EpisodeStats:
    env_index: int
    ret: float  # sum of env rewards
    length: int
    success: bool
    valid_fraction: float  # share of steps with a well-formed answer
    solvable: bool | None = None  # card hands; None where it does not apply
    task_type: str | None = None  # ALFWorld
    seed: int | None = None  # evaluation episodes
    game: str | None = None  # ALFWorld: the game file played (which split it came from)


@dataclass
class Batch:
    """``sample(T)`` of one worker: T rounds x K envs, in round-major order."""

    transitions: list[Transition]
    episodes: list[EpisodeStats]  # episodes that finished during this batch
    policy_version: int
    num_envs: int
    next_observations: list[Observation] = field(default_factory=list)  # (K,) where each env is now, for bootstrapping
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase (generate, env, parse)

    @property
    def env_steps(self) -> int:
        return len(self.transitions)


def summarize(episodes: list[EpisodeStats]) -> dict[str, float]:
    """Mean return, success (over all and over solvable hands), length and format validity."""
    if not episodes:
        return {}
    out = {
        "episodes": float(len(episodes)),
        "return": float(np.mean([e.ret for e in episodes])),
        "success": float(np.mean([e.success for e in episodes])),
        "length": float(np.mean([e.length for e in episodes])),
        "format_valid": float(np.mean([e.valid_fraction for e in episodes])),
    }
    solvable = [e for e in episodes if e.solvable]
    if any(e.solvable is not None for e in episodes):
        out["success_solvable"] = float(np.mean([e.success for e in solvable])) if solvable else 0.0
        out["solvable_share"] = len(solvable) / len(episodes)
    return out
