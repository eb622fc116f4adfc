"""NumberLine: walk to the target on the positions 0..max_position (gym_cards semantics).

## Observation
``obs_mode="image"``: 300x300x3 uint8 with "Target: t" and "Current: c" (as gym_cards draws
them) above a drawn number line (target ringed, agent as a dot). ``obs_mode="text"``:
``"Target: t\\nCurrent: c"`` (also ``info["text"]``).

## Actions
``Discrete(2)``: 0 moves left ("-"), 1 moves right ("+"); the walls at 0 and max_position hold.

## Rewards and episode end
+1 on reaching the target (terminated); -1 for a move that does not get closer (a wall bump
included); 0 otherwise. Truncated after ``2 * max_position`` steps (10 by default).
Start and target are drawn uniformly among the pairs with start != target (gym_cards shifts an
equal target by one, which skews the pairs); ``reset(options={"start": s, "target": t})`` fixes them.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs import render
from envs.views import observation_space


class NumberLineEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}
    action_tokens = ("-", "+")

    def __init__(self, obs_mode: str = "image", max_position: int = 5, render_mode: str | None = "rgb_array"):
        if max_position < 1:
            raise ValueError(f"max_position must be at least 1, got {max_position}")
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.max_position = max_position
        self.max_steps = 2 * max_position
        self.action_space = gym.spaces.Discrete(2)
        self.observation_space = observation_space(obs_mode)
        self.position = self.target = self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "start" in options or "target" in options:
            self.position, self.target = int(options["start"]), int(options["target"])
            if not (0 <= self.position <= self.max_position and 0 <= self.target <= self.max_position):
                raise ValueError(f"start and target must lie in 0..{self.max_position}, got {options!r}")
            if self.position == self.target:
                raise ValueError(f"start and target must differ, got {options!r}")
        else:
            self.position = int(self.np_random.integers(0, self.max_position + 1))
            # Uniform over the other positions: draw from max_position values and skip the start.
            target = int(self.np_random.integers(0, self.max_position))
            self.target = target + 1 if target >= self.position else target
        self.steps = 0
        return self._observation(), self._info()

    def step(self, action):
        self.steps += 1
        before = abs(self.position - self.target)
        move = 1 if int(action) == 1 else -1
        self.position = min(max(self.position + move, 0), self.max_position)
        after = abs(self.position - self.target)
        terminated = after == 0
        reward = 1.0 if terminated else (-1.0 if after >= before else 0.0)
        truncated = not terminated and self.steps >= self.max_steps
        info = self._info()
        info["success"] = terminated
        return self._observation(), reward, terminated, truncated, info

    def text_view(self) -> str:
        return f"Target: {self.target}\nCurrent: {self.position}"

    def render(self):
        return self.render_frame()

    def render_frame(self) -> np.ndarray:
        return render.from_state(self.render_state())

    def render_state(self) -> tuple:
        return ("numberline", self.position, self.target, self.max_position)

    def _observation(self):
        return self.render_frame() if self.obs_mode == "image" else self.text_view()

    def _info(self) -> dict[str, Any]:
        return {"position": self.position, "target": self.target, "text": self.text_view()}
