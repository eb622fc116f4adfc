"""Env steps per second of the whole system: 1, 2 and 4 Ray rollout actors against local mode, one run.

    .venv/bin/python -m bench.throughput [--model embedded:xs] [--env gym_cards/Points24-v0] [--envs 8]
                                         [--rounds 4] [--actors 1 2 4] [--iterations 2] [--guidance kl]

Every setting trains with the same config (K envs per rollout actor, GTR-Turbo-KL, one PPO epoch per
update so that learning does not drown the rollout side) through the real driver loop: local mode runs
every role in this process; Ray mode starts the actors on one local cluster. After one warm-up
iteration, ``--iterations`` iterations are timed. "sample" is env steps per second of the sample phase
(every actor stepping its K envs with one batched generate per step); "system" is env steps per second
of whole iterations (sample, teacher score, learn, publish, merge). Total envs grow with the actors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cluster import remote
from cluster.driver import Trainer, default_buffer_dir
from cluster.system import LocalSpawner, System
from configs import load_config


def config(args, mode: str, actors: int, run_dir: Path):
    return load_config(
        None,
        [
            f"policy.path={args.model}",
            f"env.id={args.env}",
            "policy.lora_rank=8",
            "policy.lora_alpha=16",
            "policy.max_new_tokens=40",
            "policy.temperature=1.0",
            f"rollout.num_envs={args.envs}",
            f"train.rounds={args.rounds}",
            f"train.num_workers={actors}",
            "train.iterations=1000",  # never the last: no evaluation or checkpoint in the timed ones
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "learner.epochs=1",
            f"learner.minibatch_size={args.envs * args.rounds * actors}",
            "learner.micro_batch_size=16",
            f"teacher.guidance={args.guidance}",
            f"cluster.mode={mode}",
            "cluster.dashboard=false",
            "cluster.rollout.num_cpus=1",
            "cluster.learner.num_cpus=1",
            "cluster.teacher.num_cpus=1",
            f"run_dir={run_dir}",
        ],
    )


def measure(cfg, spawner, run_dir: Path, iterations: int) -> dict[str, float]:
    system = System(cfg, spawner, default_buffer_dir(cfg, run_dir))
    try:
        system.wait_ready()
        trainer = Trainer(cfg, run_dir, system, log=lambda *_: None)
        trainer.iteration(1)  # warm-up: first merge, caches, lazy envs
        records = [trainer.iteration(i) for i in range(2, iterations + 2)]
    finally:
        system.shutdown()
    steps = records[0]["rollout/env_steps"]
    return {
        "env steps": steps,
        "sample": statistics.median(steps / r["time/sample"] for r in records),
        "system": statistics.median(steps / r["time/iteration"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:xs")
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--guidance", default="kl")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    rows = {}
    began = time.perf_counter()
    cfg = config(args, "local", 1, tmp / "local")
    rows["local, 1 worker"] = measure(cfg, LocalSpawner(), tmp / "local", args.iterations)
    remote.ray.init(address="local", num_cpus=max(args.actors) + 2, include_dashboard=False)
    try:
        for n in args.actors:
            folder = tmp / f"ray-{n}"
            cfg = config(args, "ray", n, folder)
            rows[f"ray, {n} rollout actor{'s' * (n > 1)}"] = measure(
                cfg, remote.start(cfg, f"bench-{n}"), folder, args.iterations
            )
    finally:
        remote.ray.shutdown()
    base = rows["local, 1 worker"]
    print(
        f"{args.env}, {args.model}, {args.envs} envs per actor x {args.rounds} rounds, guidance {args.guidance}, "
        f"{os.cpu_count()} CPUs, median of {args.iterations} iterations ({time.perf_counter() - began:.0f} s in all)"
    )
    print(f"{'setting':<22}{'env steps':>10}{'sample /s':>11}{'vs local':>9}{'system /s':>11}{'vs local':>9}")
    for name, r in rows.items():
        print(
            f"{name:<22}{r['env steps']:>10.0f}{r['sample']:>11.1f}{r['sample'] / base['sample']:>8.2f}x"
            f"{r['system']:>11.1f}{r['system'] / base['system']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
