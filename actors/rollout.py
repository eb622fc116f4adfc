"""RolloutWorker: K envs stepped in lock-step with one batched generate per step.

A plain class (no Ray): ``cluster/`` wraps it as an actor, tests and the local mode use it directly.
Each ``sample(rounds)`` returns ``rounds * K`` transitions in round-major order; finished envs are
reset at once and their episode statistics returned with the batch. ``evaluate`` plays held-out
seeds (disjoint from every training seed) greedily or at a set temperature.

Seeds: env ``i`` of worker ``w`` starts from ``train_seed(seed, w, i)`` (< 2**31) and continues its
own RNG across resets; evaluation episode ``j`` uses ``eval_seed(seed, j)`` (>= 2**31), and on ALFWorld
plays game ``j`` of the evaluation split (``envs.tasks.eval_reset_options``).

An env whose ``reset`` or ``step`` raises is reported as ``EnvCrashed`` (its own error chained), which
cluster/ takes for an infrastructure failure: the rollout actor is replaced, the run goes on (issue 16).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import envs
from core.answer import PromptSpec
from core.batch import Batch, EpisodeStats, Observation, Transition
from core.logprob import step_logprob
from envs.tasks import eval_reset_options, prompt_text, shows_image, spec_for
from models.engines.base import Generation, PolicyEngine, PromptInput, SamplingParams

EVAL_SEED_BASE = 2**31
INVALID_ACTIONS = ("random", "noop")


def train_seed(seed: int, worker: int, env_index: int) -> int:
    return (seed * 1_000_003 + worker * 10_007 + env_index) % EVAL_SEED_BASE


def eval_seed(seed: int, episode: int) -> int:
    return EVAL_SEED_BASE + (seed * 1_000_003 + episode) % EVAL_SEED_BASE


class EnvCrashed(RuntimeError):
    """An env's ``reset`` or ``step`` raised (a simulator such as ALFWorld's TextWorld that broke); the
    worker's envs can no longer be trusted mid-episode."""


@dataclass(frozen=True)
class RolloutSettings:
    num_envs: int = 8
    thought_weight: float = 0.5  # lambda: 0.5 card games, 0.2 ALFWorld
    format_valid: float = 3.0  # +3 / -2 card games, +5 / -5 ALFWorld (GTR-Turbo)
    format_invalid: float = -2.0
    invalid_action: str = "random"  # the paper's random action, or "noop" where the env has one
    sampling: SamplingParams = field(default_factory=SamplingParams)


class _EnvSlot:
    """One env and what the worker tracks about its current episode."""

    def __init__(self, env, index: int):
        self.env, self.index = env, index
        self.obs: Any = None
        self.info: dict[str, Any] = {}
        self.ret, self.length, self.valid = 0.0, 0, 0
        self.seed: int | None = None

    def start(self, seed: int | None, options: dict[str, Any] | None = None) -> None:
        self.obs, self.info = self._env("reset", seed=seed, **({"options": options} if options else {}))
        self.ret, self.length, self.valid, self.seed = 0.0, 0, 0, seed

    def step(self, action: int | str) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self._env("step", action)

    def _env(self, method: str, *args, **kwargs):
        try:
            return getattr(self.env, method)(*args, **kwargs)
        except Exception as error:
            raise EnvCrashed(f"env {self.index} crashed in {method}: {type(error).__name__}: {error}") from error


class RolloutWorker:
    def __init__(
        self,
        env_cfg,
        engine: PolicyEngine,
        settings: RolloutSettings,
        seed: int = 0,
        worker_index: int = 0,
        eval_env_cfg=None,
    ):
        if settings.invalid_action not in INVALID_ACTIONS:
            raise ValueError(f"invalid_action must be one of {INVALID_ACTIONS}, got {settings.invalid_action!r}")
        self.spec: PromptSpec = spec_for(env_cfg.id)
        if settings.invalid_action == "noop" and self.spec.noop is None:
            raise ValueError(f"{env_cfg.id} has no no-op action; use invalid_action=random")
        self.env_cfg, self.engine, self.settings = env_cfg, engine, settings
        self.eval_env_cfg = eval_env_cfg or env_cfg  # e.g. ALFWorld: train split vs valid_unseen
        self.seed, self.worker_index = seed, worker_index
        self.with_image = shows_image(env_cfg)
        self.rng = np.random.default_rng([seed, worker_index])  # fallback actions only
        self._slots: list[_EnvSlot] = []  # training envs, made on the first sample()
        self._eval_slots: list[_EnvSlot] = []

    @property
    def slots(self) -> list[_EnvSlot]:
        if not self._slots:
            self._slots = [_EnvSlot(envs.make_env(self.env_cfg), i) for i in range(self.settings.num_envs)]
            for slot in self._slots:
                slot.start(train_seed(self.seed, self.worker_index, slot.index))
        return self._slots

    # ------------------------------------------------------------------ training rollouts

    def sample(self, rounds: int) -> Batch:
        transitions: list[Transition] = []
        episodes: list[EpisodeStats] = []
        seconds = {"generate": 0.0, "env": 0.0}
        version = self.engine.adapter_version
        for _ in range(rounds):
            t0 = time.perf_counter()
            observations = [self._observation(slot) for slot in self.slots]
            gens = self.engine.generate(
                [
                    PromptInput(o.text, s.obs if self.with_image else None, o.tail)
                    for o, s in zip(observations, self.slots, strict=True)
                ],
                self.settings.sampling,
                self.spec,
            )
            t1 = time.perf_counter()
            for slot, obs, gen in zip(self.slots, observations, gens, strict=True):
                transition, finished = self._step(slot, obs, gen, version, self.rng)
                transitions.append(transition)
                if finished is not None:
                    episodes.append(finished)
                    slot.start(None)
            seconds["generate"] += t1 - t0
            seconds["env"] += time.perf_counter() - t1
        next_observations = [self._observation(slot) for slot in self.slots]
        return Batch(transitions, episodes, version, len(self.slots), next_observations, seconds)

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None:
        if self.engine.adapter_version != version:  # workers may share one engine in local mode
            self.engine.load_adapter(adapter, version)

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, episodes: int, sampling: SamplingParams | None = None, seed: int | None = None, first: int = 0
    ) -> list[EpisodeStats]:
        """Play held-out episodes ``first .. first + episodes - 1`` (seeds ``eval_seed(seed, j)``), K at a
        time; several workers split one evaluation by giving each its own ``first``."""
        sampling = sampling or SamplingParams(
            temperature=0.0, top_k=0, max_new_tokens=self.settings.sampling.max_new_tokens
        )
        seed = self.seed if seed is None else seed
        if not self._eval_slots:
            self._eval_slots = [_EnvSlot(envs.make_env(self.eval_env_cfg), i) for i in range(self.settings.num_envs)]
        pending = list(range(first, first + episodes))
        rng = np.random.default_rng([EVAL_SEED_BASE, seed, first])  # fallback actions: a function of the episodes
        active: list[_EnvSlot] = []
        for slot in self._eval_slots[: min(episodes, len(self._eval_slots))]:
            self._start_eval(slot, seed, pending.pop(0))
            active.append(slot)
        results: list[EpisodeStats] = []
        while active:
            observations = [self._observation(slot) for slot in active]
            gens = self.engine.generate(
                [
                    PromptInput(o.text, s.obs if self.with_image else None, o.tail)
                    for o, s in zip(observations, active, strict=True)
                ],
                sampling,
                self.spec,
            )
            still = []
            for slot, obs, gen in zip(active, observations, gens, strict=True):
                _, finished = self._step(slot, obs, gen, self.engine.adapter_version, rng)
                if finished is None:
                    still.append(slot)
                    continue
                results.append(finished)
                if pending:
                    self._start_eval(slot, seed, pending.pop(0))
                    still.append(slot)
            active = still
        return sorted(results, key=lambda e: e.seed)

    def _start_eval(self, slot: _EnvSlot, seed: int, episode: int) -> None:
        """Held-out episode ``episode``: its own seed; ALFWorld also plays game ``episode`` of the eval split."""
        slot.start(eval_seed(seed, episode), eval_reset_options(self.eval_env_cfg.id, episode))

    # ------------------------------------------------------------------ state (checkpoints, resume)

    def state_dict(self) -> dict[str, Any]:
        """What the next ``sample`` depends on: every training env mid-episode (envs pickle with their
        RNGs), the episode tallies, the fallback RNG and the engine's sampling generator."""
        return {
            "slots": pickle.dumps(self._slots),
            "rng": self.rng.bit_generator.state,
            "engine_rng": self.engine.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._slots = pickle.loads(state["slots"])
        self.rng.bit_generator.state = state["rng"]
        self.engine.set_rng_state(state["engine_rng"])

    # ------------------------------------------------------------------ one step

    def _observation(self, slot: _EnvSlot) -> Observation:
        frame = slot.env.unwrapped.render_state() if self.with_image else None
        prompt = prompt_text(self.env_cfg.id, slot.info, self.with_image)
        return Observation(prompt.text, prompt.tail, frame)

    def _step(self, slot: _EnvSlot, obs: Observation, gen: Generation, version: int, rng: np.random.Generator):
        parsed = gen.parsed
        recovered = parsed.action is not None
        action = parsed.action if recovered else self._fallback(slot, rng)
        slot.obs, reward, terminated, truncated, info = slot.step(action)
        slot.info = info
        slot.ret += reward
        slot.length += 1
        slot.valid += parsed.valid
        s = self.settings
        logprobs = torch.tensor([gen.logprobs])
        old_logprob = step_logprob(
            logprobs, torch.tensor([gen.thought_mask]), torch.tensor([gen.action_mask]), s.thought_weight
        )
        transition = Transition(
            observation=obs,
            prompt_ids=gen.prompt_ids,
            response_ids=gen.token_ids,
            old_logprobs=gen.logprobs,
            thought_mask=gen.thought_mask,
            action_mask=gen.action_mask,
            old_logprob=float(old_logprob[0]),
            response_text=gen.text,
            action=action,
            action_recovered=recovered,
            valid=parsed.valid,
            env_reward=float(reward),
            format_reward=s.format_valid if parsed.valid else s.format_invalid,
            terminated=bool(terminated),
            truncated=bool(truncated),
            env_index=slot.index,
            policy_version=version,
        )
        finished = None
        if terminated or truncated:
            finished = EpisodeStats(
                env_index=slot.index,
                ret=slot.ret,
                length=slot.length,
                success=bool(info.get("success", False)),
                valid_fraction=slot.valid / slot.length,
                solvable=info.get("solvable"),
                task_type=info.get("task_type"),
                seed=slot.seed,
                game=info.get("gamefile"),
            )
        return transition, finished

    def _fallback(self, slot: _EnvSlot, rng: np.random.Generator) -> int | str:
        if self.settings.invalid_action == "noop":
            return self.spec.noop
        if self.spec.actions is None:  # free-text actions: a random admissible command
            commands: Sequence[str] = slot.info.get("admissible_commands") or [self.spec.noop]
            return str(commands[int(rng.integers(len(commands)))])
        return int(rng.integers(len(self.spec.actions)))
