"""One entry per task: what the system knows of an env besides the env itself (issue 16 item 5).

A ``Task`` holds the env's gymnasium entry point and constructor arguments, the answer its prompt
asks for (keys and action vocabulary), the prompt text, the scripted expert's answer, what makes two
starts the same for the train/held-out split, and whether the env's frames can be shown to the
policy. Adding a task is its env module plus one entry in ``TASKS``; rollouts, SFT demonstrations,
evaluation and the embedded tokenizer's corpus all read it from here.

Expert answers are the JSON a perfect agent writes at a step, with thoughts that say what it sees
and its plan: the SFT warm start's labels and the tokenizer's corpus. Card games follow the solver's
shortest solution (one plan per hand, the same every step); NumberLine walks toward the target;
Blackjack hits below 17; ALFWorld replays the walkthrough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from core.answer import PromptSpec, PromptText, format_answer
from envs import ALFWORLD, BLACKJACK, EZPOINTS, NUMBERLINE, POINTS24
from envs.experts import expert_action, formula_plan


@dataclass(frozen=True)
class Task:
    entry_point: str  # "module:Class", registered with gymnasium under the task's id
    spec: PromptSpec  # the answer's keys (action last) and the action vocabulary
    prompt: Callable[[dict[str, Any], bool], PromptText]  # (info, with_image) -> the user message
    expert: Callable[[Any, dict[str, Any], Any], dict[str, Any]]  # (env, info, expert action) -> answer fields
    state_key: Callable[[dict[str, Any]], tuple]  # a start's identity for the train/held-out split; () = none
    env_kwargs: Callable[[Any], dict[str, Any]]  # constructor arguments from the ``env`` config section
    visual: bool  # draws frames: ``env.obs_mode: image`` puts them in the prompt
    split_by_file: bool = False  # evaluates on another data split, not on held-out starts (ALFWorld)


def task(env_id: str) -> Task:
    if env_id not in TASKS:
        raise ValueError(f"unknown task {env_id!r}; known: {', '.join(TASKS)}")
    return TASKS[env_id]


def spec_for(env_id: str) -> PromptSpec:
    return task(env_id).spec


def prompt_text(env_id: str, info: dict[str, Any], with_image: bool) -> PromptText:
    """The user message for one step of ``env_id`` in the state ``info`` describes."""
    return task(env_id).prompt(info, with_image)


def shows_image(env_cfg: Any) -> bool:
    """Whether prompts carry the frame: ``obs_mode: image`` on a task that draws one."""
    return env_cfg.obs_mode == "image" and task(env_cfg.id).visual


def state_key(env_id: str, info: dict[str, Any]) -> tuple:
    """What makes two episodes "the same" for the train/held-out split (``()``: seeds alone separate them)."""
    return task(env_id).state_key(info)


def eval_reset_options(env_id: str, episode: int) -> dict[str, Any] | None:
    """The ``reset`` options of held-out episode ``episode``. A task evaluated on another data split
    (ALFWorld) walks that split's games in order, episode j playing game j (wrapping), so N episodes
    over N games play each once; seeds would draw games with repeats. Elsewhere the seed alone picks the
    start (None)."""
    return {"game": episode} if task(env_id).split_by_file else None


def expert_answer(env_id: str, env: gym.Env, info: dict[str, Any]) -> str | None:
    """The expert's answer for the env's current state (``info`` from its last reset/step); None where
    the expert has no plan (an unsolvable Points24 hand)."""
    env = env.unwrapped
    action = expert_action(env)
    if action is None:
        return None
    t = task(env_id)
    return format_answer(t.spec, t.expert(env, info, action))


# ----------------------------------------------------------------------------- card-formula games

_CARD_KEYS = ("cards", "formula", "thoughts", "action")
_DIGITS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10")


def _card_prompt(n_cards: int, target: int, ops: str, actions: tuple[str, ...]):
    instruction = (
        f"You are an expert card game player. Make {target} from {n_cards} cards using each card's value exactly "
        f"once with {ops}; A counts as 1 and J, Q, K as 10. Each step appends one of {' '.join(actions)} to the "
        "formula; = submits it.\n"
        'Answer in JSON: {"cards": [values], "formula": "current formula", "thoughts": "your plan", '
        '"action": "next token"}'
    )

    def build(info: dict[str, Any], with_image: bool) -> PromptText:
        values = ", ".join(map(str, info["values"]))
        seen = "" if with_image else f"Your cards: {' '.join(_card_names(info))} (values {values}).\n"
        return PromptText(instruction, f"{seen}Current formula: {''.join(info['formula'])}")

    return build


def _card_names(info: dict[str, Any]) -> list[str]:
    labels = {1: "A", 11: "J", 12: "Q", 13: "K"}
    return [labels.get(rank, str(rank)) + suit for rank, suit in zip(info["hand"], info["suits"], strict=True)]


def _card_expert(env, info: dict[str, Any], action: int) -> dict[str, Any]:
    plan = formula_plan(env)
    formula = "".join(info["formula"])
    solution = "".join(plan[:-1])
    token = env.action_tokens[action]
    thoughts = f"formula {formula} is complete, output =" if token == "=" else f"plan {solution}, next {token}"
    return {"cards": info["values"], "formula": formula, "thoughts": thoughts, "action": token}


def _deal(info: dict[str, Any]) -> tuple:
    return tuple(zip(info["hand"], info["suits"], strict=True))


def _card_kwargs(cfg: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"obs_mode": cfg.obs_mode}
    if cfg.max_steps:
        kwargs["max_steps"] = cfg.max_steps
    return kwargs


def _card_game(entry_point: str, n_cards: int, target: int, ops: str, actions: tuple[str, ...], env_id: str) -> Task:
    return Task(
        entry_point,
        PromptSpec(env_id, _CARD_KEYS, actions),
        _card_prompt(n_cards, target, ops, actions),
        _card_expert,
        _deal,
        _card_kwargs,
        visual=True,
    )


# ----------------------------------------------------------------------------- NumberLine and Blackjack

_NUMBERLINE_INSTRUCTION = (
    "You are playing number line. Move the current number to the target number: "
    '"-" subtracts one, "+" adds one.\n'
    'Answer in JSON: {"current number": x, "target number": y, "thoughts": "your reasoning", '
    '"action": "-" or "+"}'
)


def _numberline_prompt(info: dict[str, Any], with_image: bool) -> PromptText:
    seen = "" if with_image else f"Target: {info['target']}. Current: {info['position']}."
    return PromptText(_NUMBERLINE_INSTRUCTION, seen)


def _numberline_expert(env, info: dict[str, Any], action: int) -> dict[str, Any]:
    current, target = info["position"], info["target"]
    relation, move = (">", "move left") if current > target else ("<", "move right")
    return {
        "current number": current,
        "target number": target,
        "thoughts": f"current {current} {relation} target {target}, {move}",
        "action": env.action_tokens[action],
    }


_BLACKJACK_INSTRUCTION = (
    "You are a blackjack player. Get closer to 21 than the dealer without going over.\n"
    'Answer in JSON: {"thoughts": "your total and the dealer\'s, then your choice", "action": "stand" or "hit"}'
)


def _blackjack_prompt(info: dict[str, Any], with_image: bool) -> PromptText:
    return PromptText(_BLACKJACK_INSTRUCTION, "" if with_image else info["text"])


def _blackjack_expert(env, info: dict[str, Any], action: int) -> dict[str, Any]:
    total, dealer = info["player_sum"], min(info["dealer"][0], 10)
    choice = env.action_tokens[action]
    reason = "below 17" if choice == "hit" else "17 or more"
    return {"thoughts": f"my total {total} is {reason}, dealer shows {dealer}, {choice}", "action": choice}


def _no_split(info: dict[str, Any]) -> tuple:
    """NumberLine (30 starts) and Blackjack (a deal is only its first two cards): the policy must handle
    every state, so seeds alone separate training from evaluation."""
    return ()


def _obs_mode_kwargs(cfg: Any) -> dict[str, Any]:
    return {"obs_mode": cfg.obs_mode}


# ----------------------------------------------------------------------------- ALFWorld (text)

_ALFWORLD_INSTRUCTION = (
    "You are an expert household agent.\n"
    'Answer in JSON: {"thoughts": "what you see and your plan", "action": "one admissible action"}'
)


def _alfworld_prompt(info: dict[str, Any], with_image: bool) -> PromptText:
    return PromptText(_ALFWORLD_INSTRUCTION, info["text"])


def _alfworld_expert(env, info: dict[str, Any], action: str) -> dict[str, Any]:
    return {"thoughts": f"task: {info['task']} next: {action}", "action": action}


def _game_file(info: dict[str, Any]) -> tuple:
    return (info["gamefile"],)


def _alfworld_kwargs(cfg: Any) -> dict[str, Any]:
    a = cfg.alfworld
    return {
        "split": a.split,
        "task_types": tuple(a.task_types),
        "data_dir": a.data_dir or None,
        "num_games": a.num_games,
        "max_steps": a.max_steps,
        "max_actions": a.max_actions,
        "max_repeats": a.max_repeats,
        "truncation_penalty": a.truncation_penalty,
    }


TASKS: dict[str, Task] = {
    POINTS24: _card_game(
        "envs.points24:Points24Env",
        4,
        24,
        "+ - * / and parentheses",
        (*_DIGITS, "+", "-", "*", "/", "(", ")", "="),
        POINTS24,
    ),
    EZPOINTS: _card_game("envs.ezpoints:EZPointsEnv", 2, 12, "+ and *", (*_DIGITS, "+", "*", "="), EZPOINTS),
    NUMBERLINE: Task(
        "envs.numberline:NumberLineEnv",
        PromptSpec(NUMBERLINE, ("current number", "target number", "thoughts", "action"), ("-", "+")),
        _numberline_prompt,
        _numberline_expert,
        _no_split,
        _obs_mode_kwargs,
        visual=True,
    ),
    BLACKJACK: Task(
        "envs.blackjack:BlackjackEnv",
        PromptSpec(BLACKJACK, ("thoughts", "action"), ("stand", "hit")),
        _blackjack_prompt,
        _blackjack_expert,
        _no_split,
        _obs_mode_kwargs,
        visual=True,
    ),
    ALFWORLD: Task(
        "envs.alfworld:ALFWorldEnv",
        PromptSpec(ALFWORLD, ("thoughts", "action"), None, noop="look"),
        _alfworld_prompt,
        _alfworld_expert,
        _game_file,
        _alfworld_kwargs,
        visual=False,
        split_by_file=True,
    ),
}
