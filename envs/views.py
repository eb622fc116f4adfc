"""The two observation modes every card env offers: the rendered image or the text view."""

from __future__ import annotations

import string

import numpy as np
from gymnasium import spaces

from envs.render import SIZE

OBS_MODES = ("image", "text")
TEXT_CHARSET = string.printable
TEXT_MAX_LENGTH = 4096


def observation_space(obs_mode: str) -> spaces.Space:
    """Box(300, 300, 3) uint8 for "image", Text for "text"; any other mode is an error."""
    if obs_mode == "image":
        return spaces.Box(low=0, high=255, shape=(SIZE, SIZE, 3), dtype=np.uint8)
    if obs_mode == "text":
        return spaces.Text(max_length=TEXT_MAX_LENGTH, charset=TEXT_CHARSET)
    raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
