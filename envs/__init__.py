"""Task environments; importing this package registers their gymnasium ids (one entry each in envs/tasks.py).

Card games (gym_cards ids, our exact rules): Points24, EZPoints, NumberLine, Blackjack.
Text ALFWorld: ``alfworld/ALFWorld-v0`` (needs the ``alfworld`` extra, imported on first make).
"""

from __future__ import annotations

import gymnasium as gym

POINTS24 = "gym_cards/Points24-v0"
EZPOINTS = "gym_cards/EZPoints-v0"
NUMBERLINE = "gym_cards/NumberLine-v0"
BLACKJACK = "gym_cards/Blackjack-v0"
ALFWORLD = "alfworld/ALFWorld-v0"

CARD_ENV_IDS = (POINTS24, EZPOINTS, NUMBERLINE, BLACKJACK)
ENV_IDS = CARD_ENV_IDS + (ALFWORLD,)

from envs.tasks import TASKS  # noqa: E402  (needs the ids above)

for _env_id, _task in TASKS.items():
    if _env_id not in gym.registry:
        # No TimeLimit wrapper: each env applies its own step limit (documented per env), so the
        # raw class and gym.make behave the same and pickling needs no wrapper state.
        gym.register(id=_env_id, entry_point=_task.entry_point, disable_env_checker=True)

from envs.factory import make_env  # noqa: E402

__all__ = ["ENV_IDS", "CARD_ENV_IDS", "make_env", "POINTS24", "EZPOINTS", "NUMBERLINE", "BLACKJACK", "ALFWORLD"]
