"""Build an env from the ``env`` config section (configs/schema.py: EnvConfig)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from envs.tasks import task


def env_kwargs(cfg: Any) -> dict[str, Any]:
    """The constructor arguments an env id takes from its config section."""
    return task(cfg.id).env_kwargs(cfg)


def make_env(cfg: Any) -> gym.Env:
    """One env instance for ``cfg`` (an EnvConfig); seed it with ``reset(seed=...)``."""
    return gym.make(cfg.id, **env_kwargs(cfg)).unwrapped
