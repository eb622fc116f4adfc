"""The one config schema. Each component receives only its own section.

Loaded with ``OmegaConf.structured(Config)``, merged with a YAML file and ``key=value`` overrides
(configs/loader.py); unknown keys and wrong types fail at start-up naming the key, and each
section's ``__post_init__`` checks values that a type cannot (choices, ranges).
Later issues add their sections (policy, rollout, learner, teacher, cluster) here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envs import ENV_IDS
from envs.alfworld import TASK_TYPES as ALFWORLD_TASK_TYPES
from envs.alfworld_data import SPLITS
from envs.views import OBS_MODES


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


@dataclass
class AlfworldConfig:
    split: str = "train"  # train | valid_seen | valid_unseen | valid_train
    task_types: list[str] = field(default_factory=lambda: list(ALFWORLD_TASK_TYPES))
    data_dir: str = ""  # folder holding json_2.1.1/<split>/; "" = the archive vendored in data/alfworld
    num_games: int = 0  # first N games of the split (0 = all)
    max_steps: int = 50  # hard episode cap, no penalty
    max_actions: int = 40  # GTR-Turbo truncation, with truncation_penalty (0 = off)
    max_repeats: int = 5  # identical commands in a row before truncation, with penalty (0 = off)
    truncation_penalty: float = -3.0

    def __post_init__(self):
        _choice("env.alfworld.split", self.split, SPLITS)
        for task_type in self.task_types:
            _choice("env.alfworld.task_types", task_type, ALFWORLD_TASK_TYPES)
        if not self.task_types:
            raise ValueError("env.alfworld.task_types is empty; name at least one task type")
        for key in ("num_games", "max_steps", "max_actions", "max_repeats"):
            if getattr(self, key) < 0:
                raise ValueError(f"env.alfworld.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class EnvConfig:
    id: str = "gym_cards/Points24-v0"
    obs_mode: str = "image"  # image | text (card games; ALFWorld is text)
    max_steps: int = 0  # Points24/EZPoints step cap against rejected-number loops (0 = env default)
    alfworld: AlfworldConfig = field(default_factory=AlfworldConfig)

    def __post_init__(self):
        _choice("env.id", self.id, ENV_IDS)
        _choice("env.obs_mode", self.obs_mode, OBS_MODES)
        if self.max_steps < 0:
            raise ValueError(f"env.max_steps must be >= 0, got {self.max_steps}")


@dataclass
class Config:
    seed: int = 0  # the one base seed; workers and evaluation derive theirs from it
    env: EnvConfig = field(default_factory=EnvConfig)
