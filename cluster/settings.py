"""The plain settings objects the components take, made from the config in one place.

Components receive plain numbers and small dataclasses, never the config (STYLE.md 1 and 4); these are
the translations both the SFT trainer and the training roles use.
"""

from __future__ import annotations

import dataclasses

from actors.rollout import RolloutSettings
from configs.schema import Config
from envs.tasks import task
from models.engines.base import SamplingParams
from models.lora import LoraSettings


def lora_settings(cfg: Config) -> LoraSettings:
    return LoraSettings(cfg.policy.lora_rank, cfg.policy.lora_alpha, cfg.policy.lora_dropout)


def sampling(cfg: Config) -> SamplingParams:
    """How rollouts sample: the policy's temperature and top-k (log-probs at that temperature)."""
    return SamplingParams(cfg.policy.temperature, cfg.policy.top_k, cfg.policy.max_new_tokens)


def eval_sampling(cfg: Config) -> SamplingParams:
    """How evaluation samples: ``eval.temperature`` (0 = greedy)."""
    return SamplingParams(cfg.eval.temperature, cfg.policy.top_k, cfg.policy.max_new_tokens)


def rollout_settings(cfg: Config, num_envs: int | None = None) -> RolloutSettings:
    r = cfg.rollout
    return RolloutSettings(
        num_envs or r.num_envs, r.thought_weight, r.format_valid, r.format_invalid, r.invalid_action, sampling(cfg)
    )


def eval_env_config(cfg: Config):
    """The env section evaluation uses: the same, but ALFWorld plays ``eval.alfworld_split``, which must
    not be the training split (ValueError: evaluation would measure recall)."""
    if not task(cfg.env.id).split_by_file:
        return cfg.env
    if cfg.eval.alfworld_split == cfg.env.alfworld.split:
        raise ValueError(
            f"eval.alfworld_split={cfg.eval.alfworld_split} is the training split (env.alfworld.split): evaluation "
            "would measure recall; evaluate on another split, e.g. eval.alfworld_split=valid_unseen"
        )
    return dataclasses.replace(cfg.env, alfworld=dataclasses.replace(cfg.env.alfworld, split=cfg.eval.alfworld_split))


def eval_seed_base(cfg: Config) -> int:
    """The seed the held-out episodes derive from: ``eval.seed``, else the run's seed."""
    return cfg.seed if cfg.eval.seed < 0 else cfg.eval.seed
