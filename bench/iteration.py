"""Iteration time of GTR-Turbo guidance against plain PPO, in the same run (local mode).

    .venv/bin/python -m bench.iteration [--model embedded:s] [--env gym_cards/EZPoints-v0]
                                        [--envs 8] [--rounds 8] [--iterations 5] [--threads 2]

For each guidance mode (none = RL4VLM PPO, kl, sft) the same components are built from the same seed
and one warm-up iteration runs; then ``--iterations`` timed iterations of every mode, interleaved (no
evaluation). The table gives the median seconds per phase and per iteration, and each mode's ratio to
plain PPO's, and the learn phase over the sample phase. Targets: kl / none at most 1.15 (issue 4; the
paper: 89 h against 86 h); learn / sample at most 3.5 for plain PPO (issue 17). The KL costs one
teacher forward over the sampled steps and one re-merge per iteration (local mode: inside
``merge_send``); SFT guidance costs a teacher generation per step.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
from pathlib import Path

import torch

from cluster.driver import Trainer, default_buffer_dir
from cluster.system import LocalSpawner, System
from configs import load_config

PHASES = ("sample", "merge_wait", "score", "learn", "publish", "merge_send")  # cluster/driver.py names them


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
    overrides = [
        f"policy.path={args.model}",
        f"env.id={args.env}",
        f"rollout.num_envs={args.envs}",
        f"train.rounds={args.rounds}",
        "learner.minibatch_size=32",
        "learner.micro_batch_size=8",
        "policy.max_new_tokens=48",
        f"policy.threads={args.threads}",  # local mode: every role's torch threads (cluster/roles.py)
    ]
    rows = measure(overrides, args.modes, args.iterations)
    print(
        f"{args.env}, {args.model}, {args.envs} envs x {args.rounds} rounds = {args.envs * args.rounds} steps "
        f"per iteration, {args.threads} threads, median of {args.iterations} iterations (seconds)"
    )
    print_table(rows)


def measure(
    overrides: list[str], modes: list[str], iterations: int, interleave: bool = True
) -> dict[str, dict[str, float]]:
    """Median seconds per phase (and ``total``) of ``iterations`` timed iterations per guidance mode.

    Every mode is built from the same config and seed and runs one warm-up iteration first (first
    merge, caches). ``interleave``: all modes live at once and take turns, so drift in a shared
    machine hits them alike; otherwise one mode at a time, freed before the next (a GPU that holds
    one mode's three models but not two modes' six).
    """
    tmp = tempfile.TemporaryDirectory()
    records: dict[str, list[dict]] = {mode: [] for mode in modes}
    if interleave:
        runs = {mode: _trainer(overrides, mode, Path(tmp.name)) for mode in modes}
        for i in range(2, iterations + 2):
            for mode, trainer in runs.items():
                records[mode].extend(trainer.iteration(i))
    else:
        for mode in modes:
            trainer = _trainer(overrides, mode, Path(tmp.name))
            records[mode] = [r for i in range(2, iterations + 2) for r in trainer.iteration(i)]
            del trainer
            free_device_memory()
    tmp.cleanup()
    rows = {}
    for mode, recs in records.items():
        rows[mode] = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in recs) for p in PHASES}
        rows[mode]["total"] = statistics.median(sum(r.get(f"time/{p}", 0.0) for p in PHASES) for r in recs)
    return rows


def print_table(rows: dict[str, dict[str, float]]) -> None:
    base = rows.get("none", next(iter(rows.values())))["total"]
    print("| guidance | " + " | ".join(PHASES) + " | total | vs none | learn / sample |")
    print("|---" * (len(PHASES) + 4) + "|")
    for mode, r in rows.items():
        cells = " | ".join(f"{r[p]:.2f}" for p in (*PHASES, "total"))
        print(f"| {mode} | {cells} | {r['total'] / base:.2f}x | {r['learn'] / r['sample']:.2f} |")


def _trainer(overrides: list[str], mode: str, tmp: Path) -> Trainer:
    folder = tmp / mode
    cfg = load_config(
        None,
        [
            *overrides,
            "train.iterations=1000",  # never the last: no evaluation or checkpoint inside the timed ones
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "cluster.mode=local",
            f"teacher.guidance={mode}",
            f"run_dir={folder}",
        ],
    )
    system = System(cfg, LocalSpawner(), default_buffer_dir(folder))
    trainer = Trainer(cfg, folder, system, log=lambda *_: None)
    trainer.iteration(1)  # warm-up: first merge, caches
    return trainer


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
