"""Blackjack with gymnasium's rules, seen as a card table (gym_cards/Blackjack-v0).

Infinite deck: ranks uniform in 1..13 (J/Q/K worth 10, an ace 11 while that does not bust) and
suits uniform. The dealer shows one card and hides the other until the player stands.

## Observation
``obs_mode="image"``: 300x300x3 uint8, the dealer's row above the player's row.
``obs_mode="text"`` (also ``info["text"]``), e.g.::

    Dealer: KH ?? (showing 10)
    Player: 7S 9D (sum 16, usable ace: no)

## Actions
``Discrete(2)``: 0 stands (gymnasium's "stick"), 1 hits.

## Rewards and episode end (gymnasium ``Blackjack-v1`` with ``natural=False, sab=False`` by default)
Hit: -1 and terminated on a bust, else 0. Stand: the dealer draws to 17 or more, then +1 / 0 / -1
by comparing scores (a bust scores 0); terminated. ``natural=True`` pays 1.5 for a winning natural;
``sab=True`` follows Sutton and Barto (a natural beats a non-natural dealer).
``reset(options={"player": [ranks], "dealer": [ranks]})`` fixes the opening cards (suits random).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs import render
from envs.views import observation_space


def card_value(rank: int) -> int:
    return min(rank, 10)


def usable_ace(ranks: list[int]) -> bool:
    values = [card_value(r) for r in ranks]
    return 1 in values and sum(values) + 10 <= 21


def hand_sum(ranks: list[int]) -> int:
    total = sum(card_value(r) for r in ranks)
    return total + 10 if usable_ace(ranks) else total


def score(ranks: list[int]) -> int:
    total = hand_sum(ranks)
    return 0 if total > 21 else total


def is_natural(ranks: list[int]) -> bool:
    return sorted(card_value(r) for r in ranks) == [1, 10]


class BlackjackEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}
    action_tokens = ("stand", "hit")

    def __init__(
        self, obs_mode: str = "image", natural: bool = False, sab: bool = False, render_mode: str | None = "rgb_array"
    ):
        self.obs_mode = obs_mode
        self.natural = natural
        self.sab = sab
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(2)
        self.observation_space = observation_space(obs_mode)
        self.player: list[tuple[int, str]] = []
        self.dealer: list[tuple[int, str]] = []
        self.done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        self.dealer = self._cards(options.get("dealer"), "dealer")
        self.player = self._cards(options.get("player"), "player")
        self.done = False
        return self._observation(), self._info()

    def step(self, action):
        if int(action) == 1:
            self.player.append(self._draw())
            terminated = hand_sum(self.player_ranks) > 21
            reward = -1.0 if terminated else 0.0
        else:
            terminated = True
            while hand_sum(self.dealer_ranks) < 17:
                self.dealer.append(self._draw())
            reward = self._settle()
        self.done = terminated
        info = self._info()
        info["success"] = terminated and reward > 0
        return self._observation(), reward, terminated, False, info

    def _settle(self) -> float:
        player, dealer = score(self.player_ranks), score(self.dealer_ranks)
        reward = float((player > dealer) - (player < dealer))
        if self.sab and is_natural(self.player_ranks) and not is_natural(self.dealer_ranks):
            return 1.0
        if not self.sab and self.natural and is_natural(self.player_ranks) and reward == 1.0:
            return 1.5
        return reward

    def _draw(self) -> tuple[int, str]:
        rank = int(self.np_random.integers(1, 14))
        return rank, render.SUITS[int(self.np_random.integers(0, 4))]

    def _cards(self, ranks, who: str) -> list[tuple[int, str]]:
        if ranks is None:
            return [self._draw(), self._draw()]
        if len(ranks) != 2 or any(not 1 <= int(r) <= 13 for r in ranks):
            raise ValueError(f"options[{who!r}] must be 2 ranks in 1..13, got {ranks!r}")
        return [(int(r), render.SUITS[int(self.np_random.integers(0, 4))]) for r in ranks]

    @property
    def player_ranks(self) -> list[int]:
        return [rank for rank, _ in self.player]

    @property
    def dealer_ranks(self) -> list[int]:
        return [rank for rank, _ in self.dealer]

    def text_view(self) -> str:
        def label(cards):
            return " ".join(render.rank_label(rank) + suit for rank, suit in cards)

        if self.done:
            dealer = f"Dealer: {label(self.dealer)} (sum {hand_sum(self.dealer_ranks)})"
        else:
            dealer = f"Dealer: {label(self.dealer[:1])} ?? (showing {card_value(self.dealer[0][0])})"
        ace = "yes" if usable_ace(self.player_ranks) else "no"
        return f"{dealer}\nPlayer: {label(self.player)} (sum {hand_sum(self.player_ranks)}, usable ace: {ace})"

    def render(self):
        return self.render_frame()

    def render_frame(self) -> np.ndarray:
        return render.from_state(self.render_state())

    def render_state(self) -> tuple:
        return ("blackjack", tuple(self.dealer), tuple(self.player), self.done)

    def _observation(self):
        return self.render_frame() if self.obs_mode == "image" else self.text_view()

    def _info(self) -> dict[str, Any]:
        return {
            "player": self.player_ranks,
            "dealer": self.dealer_ranks if self.done else self.dealer_ranks[:1],
            "player_sum": hand_sum(self.player_ranks),
            "usable_ace": usable_ace(self.player_ranks),
            "text": self.text_view(),
        }
