"""The three roles of a run, each built from the config around one plain component.

A role is what one Ray actor holds (cluster/remote.py wraps these classes with ``ray.remote`` and
nothing else); in local mode the driver holds them directly. No Ray import here. Every method's
arguments and results are plain picklable values, so the same call works in both modes.

- ``RolloutRole``: an engine and a ``RolloutWorker`` (K envs), plus an evaluator over the same engine.
- ``LearnerRole``: the ``Learner`` and the SFT-guidance replay of teacher labels.
- ``TeacherRole``: the merged ``Teacher`` and the guidance it gives (KL penalties or SFT labels).

No role reads or writes the run's folder: a role's node need not see the driver's disk (issue 20). A role's
state for a checkpoint is bytes that it returns (``save``) and is handed back (``load``): the driver writes
them (cluster/checkpoint.py). The teacher keeps its checkpoints in a scratch folder on its own node and is
built from the versions the driver hands it (the driver keeps the durable copy).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.rollout import RolloutWorker
from cluster.settings import eval_env_config, eval_sampling, eval_seed_base, lora_settings, rollout_settings, sampling
from configs import Config
from core import metric_names as names
from core.batch import Batch, EpisodeStats, SFTLabel
from envs.tasks import spec_for
from learner.learner import Learner
from models.engines.hf import HFEngine
from teacher.guidance import sft_labels, teacher_logprobs
from teacher.teacher import Teacher


def updates_per_iteration(cfg: Config) -> int:
    steps = cfg.train.rounds * cfg.rollout.num_envs * cfg.train.num_workers
    return cfg.learner.epochs * -(-steps // cfg.learner.minibatch_size)


def derived_seed(seed: int, role: str, index: int = 0) -> int:
    """A seed of its own for each role and index, from the one base seed (STYLE.md 11)."""
    return int(np.random.SeedSequence([seed, sum(map(ord, role)), index]).generate_state(1)[0])


def make_engine(cfg: Config, device: str, seed: int, index: int = 0):
    """The rollout engine ``policy.engine`` names: transformers (any device) or vLLM (its CPU build, or its
    CUDA build on a GPU)."""
    p = cfg.policy
    if p.engine == "vllm":
        from models.engines.vllm import VLLMEngine

        return VLLMEngine(
            p.path,
            lora_settings(cfg),
            dtype=p.dtype,
            device=device,
            seed=seed,
            gpu_memory_utilization=p.vllm_gpu_memory_utilization,
            cpu_kv_cache_gib=p.vllm_cpu_kv_cache_gib,
            cpu_cores=vllm_cores(torch.get_num_threads(), index, os.cpu_count() or 1) if device == "cpu" else None,
        )
    return HFEngine(p.path, lora_settings(cfg), dtype=p.dtype, device=device, seed=seed)


def vllm_cores(threads: int, index: int, cores: int) -> str:
    """The cores rollout worker ``index``'s vLLM (CPU build) binds its ``threads`` threads to: a block of its
    own, wrapping around the machine's cores (vLLM's own choice puts every engine on the same cores)."""
    threads = min(threads, cores)
    first = (index * threads) % cores
    return ",".join(str((first + i) % cores) for i in range(threads))


def _threads(cfg: Config, role: str) -> None:
    """Torch threads of a role's process: ``cluster.<role>.threads`` for a Ray actor, else ``policy.threads``
    (local mode: one process). DESIGN.md section 5: processes that share cores need one thread each, or they
    slow each other down many-fold; a role that runs alone (the learner, in its phase) can take more."""
    own = getattr(cfg.cluster, role).threads if cfg.cluster.mode == "ray" else 0
    torch.set_num_threads(own or cfg.policy.threads)


def _info(device: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "device": device, "threads": torch.get_num_threads()}


# Ray takes a log line that starts with this as the actor's new name in the prefix of its log lines (Ray's
# ray_constants.LOG_PREFIX_ACTOR_NAME). Ray writes one with the actor's repr once, after __init__, and shows that
# first repr on the dashboard's Actors page for the actor's life; writing it again keeps the log prefix current.
RAY_LOG_NAME = ":actor_name:"


@contextmanager
def _doing(role: Any, state: str) -> Iterator[None]:
    """The role's ``state`` (in its repr) while the block runs, "idle" after; a block that raises leaves it, so
    the error Ray reports (its repr at that moment) says what the role was doing. With ``role.announce`` (a Ray
    actor) the prefix of its log lines follows."""
    role.state = state
    _announce(role)
    yield
    role.state = "idle"
    _announce(role)


def _announce(role: Any) -> None:
    if role.announce:
        for stream in (sys.stdout, sys.stderr):  # Ray names the lines of each of the two separately
            print(f"{RAY_LOG_NAME}{role!r}", file=stream, flush=True)


class RolloutRole:
    """Rollout worker ``index``. Incarnation ``j`` (a restart after a crash) plays as worker
    ``index + j * num_workers``: fresh episodes from seeds no other worker uses."""

    state, env_steps, announce = "new", 0, False  # what its repr says: its state, env steps it sampled

    def __init__(self, cfg: Config, device: str, index: int, incarnation: int = 0):
        _threads(cfg, "rollout")
        self.cfg, self.device = cfg, device
        self.index, self.incarnation, self.announce = index, incarnation, cfg.cluster.mode == "ray"
        slot = index + incarnation * cfg.train.num_workers
        self.engine = make_engine(cfg, device, derived_seed(cfg.seed, "rollout", slot), index)
        self.worker = RolloutWorker(cfg.env, self.engine, rollout_settings(cfg), cfg.seed, worker_index=slot)
        self.evaluator = RolloutWorker(
            cfg.env, self.engine, rollout_settings(cfg, cfg.eval.num_envs), cfg.seed, eval_env_cfg=eval_env_config(cfg)
        )

    def ready(self) -> dict[str, Any]:
        return _info(self.device)

    def sample(self, rounds: int) -> Batch:
        with _doing(self, "sampling"):
            batch = self.worker.sample(rounds)
            self.env_steps += len(batch.transitions)
        return batch

    def load_adapter(self, adapter: dict[str, torch.Tensor], version: int) -> None:
        self.worker.load_adapter(adapter, version)

    def evaluate(self, first: int, episodes: int) -> list[EpisodeStats]:
        with _doing(self, "evaluating"):
            return self.evaluator.evaluate(episodes, eval_sampling(self.cfg), eval_seed_base(self.cfg), first=first)

    def __repr__(self) -> str:
        """E.g. ``RolloutRole(worker 1, restart 1, v3, 480 env steps, sampling)``; never raises."""
        restart = f"restart {self.incarnation}, " if getattr(self, "incarnation", 0) else ""
        version = getattr(getattr(self, "engine", None), "adapter_version", "?")
        index = getattr(self, "index", "?")
        return f"RolloutRole(worker {index}, {restart}v{version}, {self.env_steps} env steps, {self.state})"

    def save(self) -> bytes:
        return to_bytes(self.worker.state_dict())

    def load(self, data: bytes, source: str) -> None:
        """The state ``save`` gave, read by the driver from ``source`` (named in an error)."""
        self.worker.load_state_dict(from_bytes(data, source))

    def close(self) -> None:
        """Stop the engine's own processes (vLLM's), if it has any."""
        if hasattr(self.engine, "close"):
            self.engine.close()


class LearnerRole:
    """The learner and the replay of SFT-guidance labels it trains on (GTR-Turbo-SFT)."""

    state, updates, announce = "new", 0, False  # what its repr says: its state, updates done by this actor

    def __init__(self, cfg: Config, device: str):
        _threads(cfg, "learner")
        self.device, self.announce = device, cfg.cluster.mode == "ray"
        p = cfg.policy
        self.learner = Learner(
            cfg.learner,
            p.path,
            lora_settings(cfg),
            temperature=p.temperature,
            thought_weight=cfg.rollout.thought_weight,
            total_updates=cfg.train.iterations,
            updates_per_iteration=updates_per_iteration(cfg),
            kl_coef=cfg.teacher.kl_coef,
            kl_estimator=cfg.teacher.kl_estimator,
            dtype=p.dtype,
            device=device,
            seed=cfg.seed,
            max_staleness=cfg.train.max_staleness,
        )
        self.replay: deque[SFTLabel] = deque(maxlen=cfg.teacher.replay_size)

    def ready(self) -> dict[str, Any]:
        return _info(self.device)

    def update(
        self, teacher_logprobs: list[list[float]] | None, labels: list[SFTLabel] | None, *batches: Batch
    ) -> dict[str, float]:
        """One PPO update over the workers' batches (in worker order); new labels join the replay first."""
        self.replay.extend(labels or ())
        with _doing(self, "updating"):
            stats = self.learner.update(list(batches), teacher_logprobs, list(self.replay))
            self.updates += 1
        if labels is not None:
            stats[names.SFT_LABELS] = float(len(self.replay))
        return stats

    def publish(self) -> tuple[int, dict[str, torch.Tensor]]:
        """A new version; in Ray mode its adapter goes into the object store once, as this call's result."""
        return self.learner.publish()

    def current(self) -> tuple[int, dict[str, torch.Tensor]]:
        """The version last published and its adapter (a resumed run hands it to fresh workers)."""
        return self.learner.version, self.learner.policy.adapter()

    def __repr__(self) -> str:
        """E.g. ``LearnerRole(v3, 3 updates, updating)``; never raises."""
        version = getattr(getattr(self, "learner", None), "version", "?")
        return f"LearnerRole(v{version}, {self.updates} updates, {self.state})"

    def save(self) -> bytes:
        return to_bytes(self.learner.state_dict() | {"replay": list(self.replay)})

    def load(self, data: bytes, source: str) -> None:
        state = from_bytes(data, source)
        self.replay.clear()
        self.replay.extend(state.pop("replay"))
        self.learner.load_state_dict(state)


class TeacherRole:
    """The merged teacher: takes checkpoints, gives guidance, and plays as a policy for evaluation.

    Its buffer is a scratch folder on its own node (``train.buffer_dir``, else the temporary folder there),
    removed by ``close``. ``checkpoints`` ([(version, adapter)], from the driver's copy) are buffered and
    merged before it answers: a restarted teacher actor, or a resumed run, picks up where the run is."""

    state, announce = "new", False  # what its repr says, with its merged version
    close_on_stop = True  # a Ray actor is closed before it is killed: its scratch buffer goes (cluster/remote.py)

    def __init__(self, cfg: Config, device: str, checkpoints: list[tuple[int, dict[str, torch.Tensor]]] = ()):
        _threads(cfg, "teacher")
        self.cfg, self.device, self.announce = cfg, device, cfg.cluster.mode == "ray"
        p = cfg.policy
        root = cfg.train.buffer_dir or None
        if root:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="gtr-teacher-buffer-", dir=root))
        self.teacher = Teacher(
            cfg.teacher,
            p.path,
            lora_settings(cfg),
            self.scratch,
            dtype=p.dtype,
            device=device,
            seed=derived_seed(cfg.seed, "teacher"),
            checkpoints=checkpoints,
        )
        self.evaluator = RolloutWorker(
            cfg.env,
            self.teacher.engine,
            rollout_settings(cfg, cfg.eval.num_envs),
            cfg.seed,
            eval_env_cfg=eval_env_config(cfg),
        )

    def ready(self) -> dict[str, Any]:
        return _info(self.device) | {"merged_version": self.teacher.merged_version}

    def add_checkpoint(self, adapter: dict[str, torch.Tensor], version: int) -> dict[str, float]:
        """Buffer and (every merge_interval) re-merge; a version already merged (a re-sent checkpoint
        after a restart) is not merged again."""
        with _doing(self, "merging"):
            if version > self.teacher.merged_version or version not in self.teacher.buffer.versions():
                self.teacher.add_checkpoint(adapter, version)
        return dict(self.teacher.stats)

    def logprobs(self, *batches: Batch) -> list[list[float]]:
        """The teacher's log-prob of every sampled token, per transition in batch order (for the KL)."""
        transitions = [t for b in batches for t in b.transitions]
        c = self.cfg
        with _doing(self, "scoring"):
            return teacher_logprobs(self.teacher, transitions, c.policy.temperature, c.learner.micro_batch_size)

    def labels(self, *batches: Batch) -> list[SFTLabel]:
        transitions = [t for b in batches for t in b.transitions]
        with _doing(self, "labelling"):
            return sft_labels(self.teacher, transitions, spec_for(self.cfg.env.id), sampling(self.cfg))

    def evaluate(self, first: int, episodes: int) -> list[EpisodeStats]:
        with _doing(self, "evaluating"):
            return self.evaluator.evaluate(episodes, eval_sampling(self.cfg), eval_seed_base(self.cfg), first=first)

    def __repr__(self) -> str:
        """E.g. ``TeacherRole(merged v3, 3 checkpoints, scoring)``; never raises."""
        teacher = getattr(self, "teacher", None)
        held = int(getattr(teacher, "stats", {}).get(names.TEACHER_CHECKPOINTS, 0))
        return f"TeacherRole(merged v{getattr(teacher, 'merged_version', '?')}, {held} checkpoints, {self.state})"

    def save(self) -> bytes:
        """The sampling RNG (SFT guidance samples the teacher's answers); its checkpoints are the driver's copy."""
        return to_bytes({"engine_rng": self.teacher.engine.get_rng_state()})

    def load(self, data: bytes, source: str) -> None:
        self.teacher.engine.set_rng_state(from_bytes(data, source)["engine_rng"])

    def close(self) -> None:
        """Remove its scratch buffer (the driver holds the durable copy)."""
        shutil.rmtree(self.scratch, ignore_errors=True)


def to_bytes(state: dict) -> bytes:
    """A role's state as bytes: it travels to the driver (Ray: through the object store), which writes it."""
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()


def from_bytes(data: bytes, source: str) -> dict:
    """A state ``to_bytes`` made; data that cannot be loaded is an error naming where it came from."""
    try:
        return torch.load(io.BytesIO(data), weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds; all mean the same here
        raise OSError(f"cannot load {source}: {type(error).__name__}: {error}") from error


def read_state(path: str) -> dict:
    """A role's saved state; a file that cannot be read is an error naming it."""
    try:
        return torch.load(path, weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds; all mean the same here
        raise OSError(f"cannot load {path}: {type(error).__name__}: {error}") from error
