"""GPU figures at a real model size (issue 7): rollout throughput, the teacher's merge, KL vs PPO iterations.

    python3 -m bench.gpu --parts rollout      # env steps/s for K = 1, 16, 64 Points24 envs
    python3 -m bench.gpu --parts merge        # teacher re-merge over 8 and 32 checkpoints at r = 128
    python3 -m bench.gpu --parts iteration    # KL-guided iteration over plain PPO iteration

Defaults: the published Qwen2.5-VL-3B architecture with random weights (``embedded:qwen2.5-vl-3b``,
models/embedded.py; built once into the cache, about a minute), the transformers engine in bfloat16
on ``cuda``, LoRA r = 128 (alpha 256) on the language model, the paper's Points24 sampling
(temperature 0.2, top-k 5, 256 new tokens). Everything runs in one process (local mode, no Ray).
Each part prints a markdown table for docs/BENCHMARKS.md; run one part per command on a machine
whose commands are time-limited. docs/BENCHMARKS.md says how to carry the pinned packages to a GPU
machine without a registry (scripts/device_wheels.sh).

A random-weight model never learns to stop, so nearly every response runs to ``--max-new-tokens``:
rollout figures are for full-length responses, the slowest case. The published code steps one env
with batch-1 ``generate``: about 10 s per env step at 7B (DESIGN.md section 2); ``--model
embedded:qwen2.5-vl-7b`` gives the like-for-like comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from actors.rollout import RolloutSettings, RolloutWorker
from bench import iteration
from bench.rollout import measure as measure_rollout
from configs import load_config
from configs.schema import TeacherConfig
from models.engines.base import SamplingParams
from models.engines.hf import HFEngine
from models.lora import LoraSettings, lora_target_modules, random_adapter

PUBLISHED_SECONDS_PER_STEP = 10.0  # the published GTR code at 7B, one env, batch-1 generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["rollout", "merge", "iteration"])
    parser.add_argument("--model", default="embedded:qwen2.5-vl-3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rank", type=int, default=128, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 16, 64], help="rollout: envs per batch")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="rollout: timed rounds per K (after one warm-up)")
    parser.add_argument("--merge-ks", type=int, nargs="+", default=[8, 32], help="merge: checkpoints merged")
    parser.add_argument("--repeats", type=int, default=3, help="merge: timed merges per k")
    parser.add_argument("--iteration-envs", type=int, default=16)
    parser.add_argument("--iteration-rounds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=2, help="iteration: timed iterations per mode")
    parser.add_argument("--modes", nargs="+", default=["none", "kl"], help="iteration: guidance modes")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    unknown = set(args.parts) - {"rollout", "merge", "iteration"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from rollout, merge, iteration")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; on a CPU machine pass --device cpu --dtype float32")
    torch.set_num_threads(args.threads)
    lora = LoraSettings(rank=args.rank, alpha=2 * args.rank, dropout=0.0)
    where = _device_name(args.device)
    print(f"# {args.model}, {args.dtype} on {where}, LoRA r = {args.rank}, torch {torch.__version__}")
    for part in args.parts:
        print()
        {"rollout": rollout, "merge": merge, "iteration": iterations}[part](args, lora)
        iteration.free_device_memory()


def rollout(args, lora: LoraSettings) -> None:
    """Env steps per second of one rollout worker stepping K envs with one batched generate."""
    cfg = load_config(None, [f"env.id={args.env}", "env.obs_mode=image"])
    start = time.perf_counter()
    engine = HFEngine(args.model, lora, dtype=args.dtype, device=args.device)
    engine.load_adapter(random_adapter(engine.model, lora), version=1)  # a served adapter, merged in
    loaded = time.perf_counter() - start
    sampling = SamplingParams(temperature=0.2, top_k=5, max_new_tokens=args.max_new_tokens)
    rows, prompt_tokens = [], []
    for k in args.ks:
        worker = RolloutWorker(cfg.env, engine, RolloutSettings(num_envs=k, sampling=sampling), seed=0)
        prompt_tokens += [len(t.prompt_ids) for t in worker.sample(1).transitions]  # warm-up
        _reset_peak(args.device)
        steps, seconds, phases, tokens = measure_rollout(worker, min_steps=1, min_rounds=args.rounds)
        rows.append((k, steps, seconds, phases, tokens, _peak_gib(args.device)))
        del worker
    base = rows[0][1] / rows[0][2]
    print(
        f"Rollout: {args.env} from images, {args.max_new_tokens} new tokens at most (temperature 0.2, top-k 5), "
        f"{args.rounds} timed rounds per K after a warm-up; engine loaded in {loaded:.0f} s; prompts "
        f"{statistics.mean(prompt_tokens):.0f} tokens ({len(engine.processor.tokenizer)}-id tokenizer)"
    )
    print(
        "| K | env steps | seconds | steps/s | s per step | vs K=1 | tokens/response | prefill % | decode % "
        "| env % | peak GiB | vs published (10 s/step) |"
    )
    print("|---" * 12 + "|")
    for k, steps, seconds, phases, tokens, peak in rows:
        sps = steps / seconds
        share = {p: 100 * phases[p] / seconds for p in ("prefill", "decode", "env")}
        print(
            f"| {k} | {steps} | {seconds:.1f} | {sps:.2f} | {1 / sps:.3f} | {sps / base:.1f}x | {tokens:.0f} "
            f"| {share['prefill']:.0f} | {share['decode']:.0f} | {share['env']:.1f} | {peak:.1f} "
            f"| {PUBLISHED_SECONDS_PER_STEP * sps:.0f}x |"
        )


def merge(args, lora: LoraSettings) -> None:
    """The teacher's re-merge (TIES, density 0.8, SMA) of k random r-rank checkpoints, into its weights."""
    from teacher.teacher import Teacher

    cfg = TeacherConfig(merge_interval=10**9)  # merges only when timed below
    with tempfile.TemporaryDirectory() as buffer:
        start = time.perf_counter()
        teacher = Teacher(cfg, args.model, lora, buffer, dtype=args.dtype, device=args.device)
        loaded = time.perf_counter() - start
        modules = lora_target_modules(teacher.engine.model)
        rows, added, add_seconds = [], 0, []
        for k in sorted(args.merge_ks):
            while added < k:
                adapter = random_adapter(teacher.engine.model, lora, seed=added)
                _sync(args.device)
                start = time.perf_counter()
                teacher.add_checkpoint(adapter, version=added + 1)  # trim thresholds + the buffer write
                add_seconds.append(time.perf_counter() - start)
                added += 1
            times = []
            _reset_peak(args.device)
            for _ in range(args.repeats + 1):  # the first is a warm-up
                _sync(args.device)
                start = time.perf_counter()
                teacher.remerge()
                _sync(args.device)
                times.append(time.perf_counter() - start)
            rows.append((k, times[0], statistics.median(times[1:]), _peak_gib(args.device)))
        size_gb = sum(p.stat().st_size for p in teacher.buffer.files()) / added / 1e9
    parameters = sum(a.numel() for a in adapter.values()) / 1e6
    print(
        f"Teacher merge: {len(modules)} LoRA'd modules, {parameters:.0f} M LoRA parameters per checkpoint "
        f"({size_gb:.2f} GB on disk), teacher loaded in {loaded:.0f} s; adding a checkpoint (trim thresholds "
        f"+ write) {statistics.median(add_seconds):.2f} s (median of {added}); merge = read every checkpoint, "
        f"TIES per module on the {args.device}, W = W0 + dW in place; median of {args.repeats} after a warm-up"
    )
    print("| checkpoints | 1st merge s | merge s | peak GiB |")
    print("|---|---|---|---|")
    for k, first, median, peak in rows:
        print(f"| {k} | {first:.3f} | {median:.3f} | {peak:.1f} |")


def iterations(args, lora: LoraSettings) -> None:
    """One iteration (sample, merge, score, learn, publish) with KL guidance against plain PPO."""
    overrides = [
        f"policy.path={args.model}",
        f"policy.dtype={args.dtype}",
        f"policy.device={args.device}",
        f"policy.lora_rank={lora.rank}",
        f"policy.lora_alpha={lora.alpha}",
        f"policy.max_new_tokens={args.max_new_tokens}",
        "policy.temperature=0.2",
        "policy.top_k=5",
        f"env.id={args.env}",
        "env.obs_mode=image",
        f"rollout.num_envs={args.iteration_envs}",
        f"train.rounds={args.iteration_rounds}",
        "learner.epochs=4",
        f"learner.minibatch_size={min(128, args.iteration_envs * args.iteration_rounds)}",
        "learner.micro_batch_size=8",
        "learner.gradient_checkpointing=true",  # as configs/paper/points24_kl.yaml: three models share the GPU
        f"policy.threads={args.threads}",
    ]
    rows = iteration.measure(overrides, args.modes, args.iterations, interleave=False)
    steps = args.iteration_envs * args.iteration_rounds
    print(
        f"Iteration (local mode: rollout engine, learner and teacher on one {args.device}): {args.env}, "
        f"{args.iteration_envs} envs x {args.iteration_rounds} rounds = {steps} env steps, 4 PPO epochs, "
        f"median of {args.iterations} iterations after a warm-up (seconds)"
    )
    iteration.print_table(rows)


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else float("nan")


if __name__ == "__main__":
    main()
