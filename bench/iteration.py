"""Iteration time of GTR-Turbo guidance against plain PPO, in the same run (local mode).

    .venv/bin/python -m bench.iteration [--model embedded:s] [--env gym_cards/EZPoints-v0]
                                        [--envs 8] [--rounds 8] [--iterations 5] [--threads 2]

For each guidance mode (none = RL4VLM PPO, kl, sft) the same components are built from the same seed
and one warm-up iteration runs; then ``--iterations`` timed iterations of every mode, interleaved (no
evaluation). The table gives the median seconds per phase and per iteration, and each mode's ratio to
plain PPO's. Target (issue 4): kl / none
at most 1.15 (the paper: 89 h against 86 h). The KL costs one teacher forward over the sampled steps
and one re-merge per iteration; SFT guidance costs a teacher generation per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from cluster.driver import Trainer, default_buffer_dir
from cluster.system import LocalSpawner, System
from configs import load_config

PHASES = ("sample", "merge", "score", "learn", "publish")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:s")
    parser.add_argument("--env", default="gym_cards/EZPoints-v0")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["none", "kl", "sft"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    runs = {}
    for mode in args.modes:
        folder = Path(tmp.name) / mode
        cfg = load_config(
            None,
            [
                f"policy.path={args.model}",
                f"env.id={args.env}",
                f"rollout.num_envs={args.envs}",
                f"train.rounds={args.rounds}",
                "train.iterations=1000",  # never the last: no evaluation or checkpoint inside the timed ones
                "train.eval_every=0",
                "train.checkpoint_every=0",
                "cluster.mode=local",
                "learner.minibatch_size=32",
                "learner.micro_batch_size=8",
                "policy.max_new_tokens=48",
                f"teacher.guidance={mode}",
                f"run_dir={folder}",
            ],
        )
        system = System(cfg, LocalSpawner(), default_buffer_dir(cfg, folder))
        runs[mode] = Trainer(cfg, folder, system, log=lambda *_: None)
        runs[mode].iteration(1)  # warm-up: first merge, caches
    records: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for i in range(2, args.iterations + 2):  # modes interleaved, so machine drift hits them alike
        for mode, trainer in runs.items():
            records[mode].append(trainer.iteration(i))
    tmp.cleanup()
    rows = {}
    for mode, recs in records.items():
        rows[mode] = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in recs) for p in PHASES}
        rows[mode]["total"] = statistics.median(sum(r.get(f"time/{p}", 0.0) for p in PHASES) for r in recs)
    base = rows.get("none", next(iter(rows.values())))["total"]
    print(
        f"{args.env}, {args.model}, {args.envs} envs x {args.rounds} rounds = {args.envs * args.rounds} steps "
        f"per iteration, {args.threads} threads, median of {args.iterations} iterations (seconds)"
    )
    print(f"{'guidance':<9}" + "".join(f"{p:>9}" for p in (*PHASES, "total")) + f"{'vs none':>9}")
    for mode, r in rows.items():
        print(f"{mode:<9}" + "".join(f"{r[p]:>9.2f}" for p in (*PHASES, "total")) + f"{r['total'] / base:>8.2f}x")


if __name__ == "__main__":
    main()
