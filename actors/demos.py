"""Expert answers: the JSON a perfect agent writes at a step, with thoughts that say what it sees
and its plan. They are the SFT warm start's labels (learner/sft.py) and the tokenizer's corpus.

Card games follow the solver's shortest solution (one plan per hand, the same every step);
NumberLine walks toward the target; Blackjack hits below 17; ALFWorld replays the walkthrough.
``expert_answer`` returns None where the expert has no plan (an unsolvable Points24 hand).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import envs
from actors.prompts import format_answer
from envs.experts import expert_action, formula_plan


def expert_answer(env_id: str, env: gym.Env, info: dict[str, Any]) -> str | None:
    """The expert's answer for the env's current state (``info`` from its last reset/step)."""
    env = env.unwrapped
    action = expert_action(env)
    if action is None:
        return None
    return format_answer(env_id, _FIELDS[env_id](env, info, action))


def _card_fields(env, info: dict[str, Any], action: int) -> dict[str, Any]:
    plan = formula_plan(env)
    formula = "".join(info["formula"])
    solution = "".join(plan[:-1])
    token = env.action_tokens[action]
    thoughts = f"formula {formula} is complete, output =" if token == "=" else f"plan {solution}, next {token}"
    return {"cards": info["values"], "formula": formula, "thoughts": thoughts, "action": token}


def _numberline_fields(env, info: dict[str, Any], action: int) -> dict[str, Any]:
    current, target = info["position"], info["target"]
    relation, move = (">", "move left") if current > target else ("<", "move right")
    return {
        "current number": current,
        "target number": target,
        "thoughts": f"current {current} {relation} target {target}, {move}",
        "action": env.action_tokens[action],
    }


def _blackjack_fields(env, info: dict[str, Any], action: int) -> dict[str, Any]:
    total, dealer = info["player_sum"], min(info["dealer"][0], 10)
    choice = env.action_tokens[action]
    reason = "below 17" if choice == "hit" else "17 or more"
    return {"thoughts": f"my total {total} is {reason}, dealer shows {dealer}, {choice}", "action": choice}


def _alfworld_fields(env, info: dict[str, Any], action: str) -> dict[str, Any]:
    return {"thoughts": f"task: {info['task']} next: {action}", "action": action}


_FIELDS = {
    envs.POINTS24: _card_fields,
    envs.EZPOINTS: _card_fields,
    envs.NUMBERLINE: _numberline_fields,
    envs.BLACKJACK: _blackjack_fields,
    envs.ALFWORLD: _alfworld_fields,
}
