"""Points24: make 24 from four cards, one formula token per step (gym_cards semantics, exact).

The shared machinery for the formula card games lives here in ``CardFormulaEnv``; EZPoints
(``envs/ezpoints.py``) is the same game with two cards, a smaller vocabulary and target 12.

## Observation
``obs_mode="image"`` (default): the 300x300x3 uint8 table with the cards and the formula so far.
``obs_mode="text"``: the text view (also in ``info["text"]`` in both modes), e.g.::

    Cards: KH 5S AC 7D
    Card values: 10, 5, 1, 7
    Formula: ( 10 + 5

## Actions
``Discrete(17)``: 0..9 append the numbers 1..10, then ``+ - * / ( ) =``.

## Rewards and episode end (DESIGN.md section 3)
- A number used more often than the hand holds it: -1; the formula is unchanged and the episode
  continues (gym_cards appends a blank token instead, which breaks the formula; notes/gym_cards.md).
- ``=``: +10 when the formula is well formed, uses all four card values exactly once and equals 24
  in exact rational arithmetic; otherwise -1. The episode terminates either way.
- Any other token is appended; if the formula is then longer than 20 characters ("10" counts two):
  -1 and the episode is truncated. Otherwise 0.
- ``max_steps`` (default 40) truncates an episode that loops on rejected numbers; no extra penalty.
- J, Q and K are worth 10, A is worth 1.

## Info
``hand`` (ranks 1..13), ``suits``, ``values``, ``formula`` (tokens), ``solvable``, ``text``, and
after a step ``outcome`` (ok / overused / too_long / solved / wrong / step_limit) and ``success``.
``reset(options={"hand": [ranks], "suits": [...]})`` fixes the deal (suits optional).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import formula as F
from envs import render, solver
from envs.views import observation_space


class CardFormulaEnv(gym.Env):
    """A hand of cards and a formula built one token per step (Points24 and EZPoints)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    # Set by each game.
    n_cards: int
    target: int
    numbers: tuple[int, ...]
    operators: tuple[str, ...]
    max_formula_chars: int
    default_max_steps: int

    def __init__(self, obs_mode: str = "image", max_steps: int | None = None, render_mode: str | None = "rgb_array"):
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.max_steps = self.default_max_steps if max_steps is None else int(max_steps)
        self.action_tokens: tuple[str, ...] = tuple(str(n) for n in self.numbers) + self.operators
        self.action_space = spaces.Discrete(len(self.action_tokens))
        self.observation_space = observation_space(obs_mode)
        self._solver_ops = "".join(op for op in self.operators if op in solver.ALL_OPERATORS)
        self.hand: list[int] = []
        self.suits: list[str] = []
        self.formula: list[str] = []
        self.steps = 0

    # ------------------------------------------------------------------ the game

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "hand" in options:
            self.hand = self._checked_hand(options["hand"])
        else:
            self.hand = self._deal()
        suits = options.get("suits")
        if suits is None:
            suits = [render.SUITS[i] for i in self.np_random.integers(0, 4, size=self.n_cards)]
        elif len(suits) != self.n_cards or any(s not in render.SUITS for s in suits):
            raise ValueError(f"options['suits'] must be {self.n_cards} of {render.SUITS}, got {suits!r}")
        self.suits = list(suits)
        self.formula = []
        self.steps = 0
        return self._observation(), self._info()

    def step(self, action):
        token = self.action_tokens[int(action)]
        self.steps += 1
        terminated = truncated = False
        if token == "=":
            solved = self.is_solution(self.formula)
            reward, outcome, terminated = (10.0, "solved", True) if solved else (-1.0, "wrong", True)
        elif F.is_number(token) and self._overuses(int(token)):
            reward, outcome = -1.0, "overused"
        else:
            self.formula.append(token)
            if len(F.to_string(self.formula)) > self.max_formula_chars:
                reward, outcome, truncated = -1.0, "too_long", True
            else:
                reward, outcome = 0.0, "ok"
        if not (terminated or truncated) and self.steps >= self.max_steps:
            truncated, outcome = True, "step_limit"
        info = self._info()
        info["outcome"] = outcome
        info["success"] = outcome == "solved"
        return self._observation(), reward, terminated, truncated, info

    def is_solution(self, tokens) -> bool:
        """All cards used exactly once and the formula equals the target, exactly."""
        if sorted(F.numbers_in(tokens)) != sorted(self.values):
            return False
        return F.evaluate(tokens) == self.target

    @property
    def values(self) -> list[int]:
        return [min(rank, 10) for rank in self.hand]

    def _overuses(self, number: int) -> bool:
        return F.numbers_in(self.formula).count(number) + 1 > self.values.count(number)

    def _deal(self) -> list[int]:
        return [int(r) for r in self.np_random.integers(1, 14, size=self.n_cards)]

    def _checked_hand(self, hand) -> list[int]:
        ranks = [int(r) for r in hand]
        if len(ranks) != self.n_cards or any(not 1 <= r <= 13 for r in ranks):
            raise ValueError(f"options['hand'] must be {self.n_cards} ranks in 1..13, got {hand!r}")
        return ranks

    # ------------------------------------------------------------------ views

    def _observation(self):
        return self.render_frame() if self.obs_mode == "image" else self.text_view()

    def render(self):
        return self.render_frame()

    def render_frame(self) -> np.ndarray:
        return render.from_state(self.render_state())

    def render_state(self) -> tuple:
        """What the frame shows, compact and hashable: ``render.from_state`` redraws it exactly."""
        return ("formula", self.cards, tuple(self.formula))

    @property
    def cards(self) -> tuple[tuple[int, str], ...]:
        return tuple(zip(self.hand, self.suits, strict=True))

    def text_view(self) -> str:
        cards = " ".join(render.rank_label(rank) + suit for rank, suit in self.cards)
        values = ", ".join(str(v) for v in self.values)
        return f"Cards: {cards}\nCard values: {values}\nFormula: {' '.join(self.formula)}"

    def _info(self) -> dict[str, Any]:
        return {
            "hand": list(self.hand),
            "suits": list(self.suits),
            "values": self.values,
            "formula": list(self.formula),
            "solvable": solver.is_solvable(self.values, self.target, self._solver_ops),
            "text": self.text_view(),
        }


class Points24Env(CardFormulaEnv):
    """Four cards, target 24, numbers 1..10 and ``+ - * / ( ) =``; ranks and suits uniform."""

    n_cards = 4
    target = 24
    numbers = tuple(range(1, 11))
    operators = ("+", "-", "*", "/", "(", ")", "=")
    max_formula_chars = 20
    default_max_steps = 40
