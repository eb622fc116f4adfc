"""Build an env from the ``env`` config section (configs/schema.py: EnvConfig)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import envs


def env_kwargs(cfg: Any) -> dict[str, Any]:
    """The constructor arguments an env id takes from its config section."""
    if cfg.id == envs.ALFWORLD:
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
    kwargs: dict[str, Any] = {"obs_mode": cfg.obs_mode}
    if cfg.id in (envs.POINTS24, envs.EZPOINTS) and cfg.max_steps:
        kwargs["max_steps"] = cfg.max_steps
    return kwargs


def make_env(cfg: Any) -> gym.Env:
    """One env instance for ``cfg`` (an EnvConfig); seed it with ``reset(seed=...)``."""
    return gym.make(cfg.id, **env_kwargs(cfg)).unwrapped
