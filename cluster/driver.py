"""The single-controller training loop (the paper's Algorithm 1, batched), in local mode.

    for each iteration: sample -> score (teacher) -> learn -> publish -> merge -> (evaluate)

Every phase is timed and every iteration writes one JSON line of namespaced metrics
(cluster/metrics.py) to ``<run_dir>/metrics.jsonl`` and one progress line to the log. This module
holds no math: the components do it (actors/, learner/, teacher/). In local mode they are plain
objects in one process; the Ray mode (issue 5) runs the same loop over actor handles.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.engines.base import SamplingParams
from actors.engines.hf import HFEngine
from actors.prompts import spec_for
from actors.rollout import RolloutSettings, RolloutWorker
from actors.trajectory import summarize
from cluster import metrics
from configs import Config
from configs.loader import to_yaml
from learner.learner import Learner, SFTLabel
from learner.sft import eval_env_config
from models.lora import LoraSettings
from teacher.guidance import kl_penalties, sft_labels
from teacher.teacher import Teacher


@dataclass
class Components:
    engine: HFEngine
    workers: list[RolloutWorker]
    learner: Learner
    teacher: Teacher | None
    replay: deque[SFTLabel] = field(default_factory=deque)
    evaluators: dict[str, RolloutWorker] = field(default_factory=dict)  # made on first use, envs kept


def lora_settings(cfg: Config) -> LoraSettings:
    return LoraSettings(cfg.policy.lora_rank, cfg.policy.lora_alpha, cfg.policy.lora_dropout)


def sampling(cfg: Config) -> SamplingParams:
    return SamplingParams(cfg.policy.temperature, cfg.policy.top_k, cfg.policy.max_new_tokens)


def rollout_settings(cfg: Config, num_envs: int | None = None) -> RolloutSettings:
    r = cfg.rollout
    return RolloutSettings(
        num_envs or r.num_envs, r.thought_weight, r.format_valid, r.format_invalid, r.invalid_action, sampling(cfg)
    )


def updates_per_iteration(cfg: Config) -> int:
    steps = cfg.train.rounds * cfg.rollout.num_envs * cfg.train.num_workers
    return cfg.learner.epochs * math.ceil(steps / cfg.learner.minibatch_size)


def build_local(cfg: Config, run_dir: Path) -> Components:
    """All components in this process; the rollout workers share one engine."""
    p = cfg.policy
    lora = lora_settings(cfg)
    engine = HFEngine(p.path, lora, dtype=p.dtype, device=p.device, seed=cfg.seed)
    workers = [
        RolloutWorker(
            cfg.env, engine, rollout_settings(cfg), cfg.seed, worker_index=i, eval_env_cfg=eval_env_config(cfg)
        )
        for i in range(cfg.train.num_workers)
    ]
    learner = Learner(
        cfg.learner,
        p.path,
        lora,
        temperature=p.temperature,
        thought_weight=cfg.rollout.thought_weight,
        total_updates=cfg.train.iterations,
        updates_per_iteration=updates_per_iteration(cfg),
        kl_coef=cfg.teacher.kl_coef,
        dtype=p.dtype,
        device=p.device,
        seed=cfg.seed,
    )
    teacher = None
    if cfg.teacher.guidance != "none":
        buffer_dir = Path(cfg.train.buffer_dir) if cfg.train.buffer_dir else run_dir / "teacher"
        teacher = Teacher(
            cfg.teacher,
            p.path,
            lora,
            buffer_dir,
            dtype=p.dtype,
            device=cfg.teacher.device or p.device,
            seed=cfg.seed + 1,
        )
    return Components(engine, workers, learner, teacher, deque(maxlen=cfg.teacher.replay_size))


class Phases:
    """Seconds per phase of one iteration."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def iteration(cfg: Config, c: Components, index: int) -> dict[str, float]:
    """One pass of sample -> score -> learn -> publish -> merge -> evaluate; returns its metrics."""
    phase = Phases()
    with phase("sample"):
        batches = [w.sample(cfg.train.rounds) for w in c.workers]
    transitions = [t for b in batches for t in b.transitions]
    kl = None
    with phase("score"):
        if cfg.teacher.guidance == "kl":
            kl = kl_penalties(
                c.teacher, transitions, cfg.policy.temperature, cfg.teacher.kl_estimator, cfg.learner.micro_batch_size
            )
        elif cfg.teacher.guidance == "sft":
            c.replay.extend(sft_labels(c.teacher, transitions, spec_for(cfg.env.id), sampling(cfg)))
    with phase("learn"):
        learned = c.learner.update(batches, kl, list(c.replay))
    with phase("publish"):
        version, adapter = c.learner.publish()
        for worker in c.workers:
            worker.load_adapter(adapter, version)
    with phase("merge"):
        if c.teacher is not None:
            c.teacher.add_checkpoint(adapter, version)
    results = {}
    if (cfg.train.eval_every and index % cfg.train.eval_every == 0) or index == cfg.train.iterations:
        with phase("eval"):
            results = evaluate(cfg, c)
    episodes = [e for b in batches for e in b.episodes]
    teacher_stats = dict(c.teacher.stats) if c.teacher else {}
    if cfg.teacher.guidance == "sft":
        teacher_stats["teacher/labels"] = float(len(c.replay))
    record = metrics.iteration_record(
        index=index,
        env_steps=len(transitions),
        policy_version=version,
        episodes=summarize(episodes),
        transitions=transitions,
        learner=learned,
        teacher=(c.teacher.stats if c.teacher else {})
        | ({"teacher/labels": float(len(c.replay))} if cfg.teacher.guidance == "sft" else {}),
        evaluation=results,
        seconds=phase.seconds,
    )
    return record


def evaluate(cfg: Config, c: Components) -> dict[str, float]:
    """Held-out episodes for the student and, optionally, for the merged teacher as a policy."""
    greedy = SamplingParams(cfg.eval.temperature, cfg.policy.top_k, cfg.policy.max_new_tokens)
    engines = {"eval/": c.engine}
    if c.teacher is not None and cfg.train.eval_teacher:
        engines["eval/teacher_"] = c.teacher.engine
    out = {}
    for prefix, engine in engines.items():
        if prefix not in c.evaluators:
            settings = rollout_settings(cfg, cfg.eval.num_envs)
            c.evaluators[prefix] = RolloutWorker(cfg.env, engine, settings, cfg.seed, eval_env_cfg=eval_env_config(cfg))
        episodes = c.evaluators[prefix].evaluate(cfg.eval.episodes, greedy)
        out |= {f"{prefix}{k}": v for k, v in summarize(episodes).items()}
    return out


def run(cfg: Config, log=print) -> dict:
    """Train in one process; returns the last iteration's metrics."""
    torch.set_num_threads(cfg.policy.threads)
    run_dir = Path(cfg.run_dir or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    log(f"run directory: {run_dir}")
    c = build_local(cfg, run_dir)
    record: dict = {}
    with open(run_dir / "metrics.jsonl", "a") as sink:
        if cfg.train.eval_every:
            start = time.perf_counter()
            initial = {"iteration": 0} | evaluate(cfg, c) | {"time/eval": time.perf_counter() - start}
            sink.write(json.dumps(initial) + "\n")
            log(metrics.progress_line(initial))
        for index in range(1, cfg.train.iterations + 1):
            record = iteration(cfg, c, index)
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            log(metrics.progress_line(record))
    return record
