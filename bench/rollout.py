"""Rollout worker throughput: env steps per second for K envs stepped with one batched generate.

    .venv/bin/python -m bench.rollout [--env gym_cards/Points24-v0] [--obs image] [--model embedded:s]
                                      [--ks 1 8 32] [--steps 64] [--max-new-tokens 40] [--threads 1] [--trials 3]

Each K runs one warm-up round, then rounds until at least ``--steps`` env steps (and 3 rounds) are
done; the K values are measured in turn ``--trials`` times (interleaved, so that drift in a shared
machine's speed hits every K alike) and the median rate per K is reported. An untrained embedded model
runs every response to ``--max-new-tokens`` (a trained one stops at its end token), so ``--model`` may
name an SFT checkpoint folder for realistic response lengths. Target (issue 3): K = 32 gives at least
6x the env steps per second of K = 1.
"""

from __future__ import annotations

import argparse
import time

import torch

from actors.engines.base import SamplingParams
from actors.engines.hf import HFEngine
from actors.rollout import RolloutSettings, RolloutWorker
from configs import load_config
from models.lora import LoraSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--obs", default="image")
    parser.add_argument("--model", default="embedded:s")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"env.id={args.env}", f"env.obs_mode={args.obs}"])
    engine = HFEngine(args.model, LoraSettings(rank=8, alpha=16, dropout=0.0))
    sampling = SamplingParams(temperature=1.0, top_k=5, max_new_tokens=args.max_new_tokens)
    workers = {
        k: RolloutWorker(cfg.env, engine, RolloutSettings(num_envs=k, sampling=sampling), seed=0) for k in args.ks
    }
    for worker in workers.values():
        worker.sample(1)  # warm-up
    trials: dict[int, list[tuple[int, float, dict[str, float]]]] = {k: [] for k in args.ks}
    for _ in range(args.trials):
        for k, worker in workers.items():
            trials[k].append(measure(worker, args.steps)[:3])
    rows = []
    for k in args.ks:
        steps, seconds, phases = sorted(trials[k], key=lambda t: t[0] / t[1])[len(trials[k]) // 2]
        rows.append((k, steps, seconds, phases))
    base = rows[0][1] / rows[0][2]
    print(
        f"{args.env} ({args.obs}), {args.model}, {args.max_new_tokens} new tokens, {args.threads} thread(s), "
        f"median of {args.trials} trials"
    )
    print(f"{'K':>3} {'env steps':>9} {'seconds':>8} {'steps/s':>8} {'vs K=1':>7} {'generate %':>10} {'env %':>6}")
    for k, steps, seconds, phases in rows:
        sps = steps / seconds
        gen, env = 100 * phases["generate"] / seconds, 100 * phases["env"] / seconds
        print(f"{k:>3} {steps:>9} {seconds:>8.2f} {sps:>8.1f} {sps / base:>6.1f}x {gen:>10.0f} {env:>6.0f}")


def measure(worker: RolloutWorker, min_steps: int, min_rounds: int = 3) -> tuple[int, float, dict[str, float], float]:
    """Env steps, seconds, seconds per phase and mean response tokens of rounds until both minimums."""
    steps, seconds, phases, rounds, tokens = 0, 0.0, {"generate": 0.0, "env": 0.0}, 0, 0
    while steps < min_steps or rounds < min_rounds:
        start = time.perf_counter()
        batch = worker.sample(1)
        seconds += time.perf_counter() - start
        steps += batch.env_steps
        rounds += 1
        tokens += sum(len(t.response_ids) for t in batch.transitions)
        for phase, value in batch.seconds.items():
            phases[phase] = phases.get(phase, 0.0) + value
        for phase in ("prefill", "decode"):  # the engine's split of the last generate (one per round)
            phases[phase] = phases.get(phase, 0.0) + getattr(worker.engine, "timing", {}).get(phase, 0.0)
    return steps, seconds, phases, tokens / steps


if __name__ == "__main__":
    main()
