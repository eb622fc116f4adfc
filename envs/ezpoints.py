"""EZPoints: make 12 from two cards with ``+`` and ``*`` (gym_cards semantics, exact).

The Points24 machinery (``envs/points24.py``) with two cards, target 12, 13 actions
(0..9 append 1..10, then ``+ * =``) and truncation once the formula is longer than 5 characters.
Every hand is solvable: a deal is drawn uniformly from the ordered rank pairs (ranks 1..13,
J/Q/K worth 10) whose values make 12 by sum or product. gym_cards draws the first card and
derives the second instead, which never deals an ace or a face card second; the solvability
guarantee is the same. A hand passed in ``options["hand"]`` must be solvable too. ``max_steps``
(default 20) ends an episode that loops on rejected numbers.
"""

from __future__ import annotations

from functools import lru_cache

from envs import solver
from envs.points24 import CardFormulaEnv


class EZPointsEnv(CardFormulaEnv):
    n_cards = 2
    target = 12
    numbers = tuple(range(1, 11))
    operators = ("+", "*", "=")
    max_formula_chars = 5
    default_max_steps = 20

    def _deal(self) -> list[int]:
        hands = solvable_hands()
        return list(hands[int(self.np_random.integers(len(hands)))])

    def _checked_hand(self, hand) -> list[int]:
        ranks = super()._checked_hand(hand)
        if tuple(ranks) not in solvable_hands():
            raise ValueError(f"EZPoints hands are always solvable; {hand!r} cannot make {self.target} with + and *")
        return ranks


@lru_cache(maxsize=1)
def solvable_hands() -> tuple[tuple[int, int], ...]:
    """Every ordered rank pair whose card values make 12 with + or *."""
    return tuple(
        (a, b)
        for a in range(1, 14)
        for b in range(1, 14)
        if solver.is_solvable([min(a, 10), min(b, 10)], EZPointsEnv.target, "+*")
    )
