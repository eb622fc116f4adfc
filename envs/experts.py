"""Scripted experts: the action a perfect player takes now, for demos, tests and SFT data.

Card-formula games follow the solver's shortest solution token by token; NumberLine walks toward
the target; Blackjack hits below 17 (the dealer's rule); ALFWorld replays the game's stored
walkthrough. Each returns an action for ``env.step``; where no plan applies (an unsolvable hand,
a formula that left the plan, a walkthrough run out) it returns None.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import gymnasium as gym

from envs import solver
from envs.alfworld import ALFWorldEnv
from envs.blackjack import BlackjackEnv, hand_sum
from envs.numberline import NumberLineEnv
from envs.points24 import CardFormulaEnv


def expert_action(env: gym.Env):
    env = env.unwrapped
    for kind, policy in _POLICIES.items():
        if isinstance(env, kind):
            return policy(env)
    raise TypeError(f"no expert for {type(env).__name__}")


def formula_plan(env: CardFormulaEnv) -> tuple[str, ...] | None:
    """The tokens of the shortest solution of the current hand, then '='."""
    plan = solver.shortest_solution(env.values, env.target, env._solver_ops)
    return None if plan is None else plan + ("=",)


def _formula_expert(env: CardFormulaEnv):
    plan = formula_plan(env)
    done = len(env.formula)
    if plan is None or tuple(env.formula) != plan[:done]:
        return None
    return env.action_tokens.index(plan[done])


def _numberline_expert(env: NumberLineEnv):
    return 1 if env.target > env.position else 0


def _blackjack_expert(env: BlackjackEnv):
    return 1 if hand_sum(env.player_ranks) < 17 else 0


@lru_cache(maxsize=4096)
def walkthrough(gamefile: str) -> tuple[str, ...]:
    return tuple(json.loads(Path(gamefile).read_text())["walkthrough"])


def _alfworld_expert(env: ALFWorldEnv):
    steps = walkthrough(env.games[env.game_index][0])
    done = len(env.previous_actions)
    if list(env.previous_actions) != list(steps[:done]) or done >= len(steps):
        return None
    return steps[done]


_POLICIES = {
    CardFormulaEnv: _formula_expert,
    NumberLineEnv: _numberline_expert,
    BlackjackEnv: _blackjack_expert,
    ALFWorldEnv: _alfworld_expert,
}
