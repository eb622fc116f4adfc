"""Teacher merge cost: TIES over k checkpoints against a plain sum of the same updates.

    .venv/bin/python -m bench.merge [--ks 4 16 64] [--threads 2] [--repeats 5]

Cases: the whole LoRA of the embedded ``s`` model (r = 128) and single modules with the shapes of
Qwen2.5-VL-3B's language model at r = 128 (q_proj 2048x2048, gate_proj 2048->11008). For each case
and k, random LoRA factors stand in for k checkpoints; we time

- ``sum``: rebuild every dW_i = scaling * B_i @ A_i and add them up (``addmm`` into one buffer): the
  cost of reading all the stacked updates once, the bound a merge cannot beat;
- ``ties``: the teacher's merge (teacher/merge.py) with the trim thresholds already known (they are
  computed once per checkpoint when it arrives; ``thresholds`` reports that one-off cost per checkpoint),
  after one warm-up merge; ``1st merge`` is that warm-up, which includes the one-off torch.compile of
  the fused step for large merges.

Each case runs in a fresh subprocess so its peak RSS (minus the RSS after the factors exist) is the
merge's own peak memory. Target (issue 4): ties within 3x of sum.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

CASES = {
    "embedded-s (all 14 modules)": None,
    "3B q_proj 2048x2048": (2048, 2048),
    "3B gate_proj 2048->11008": (2048, 11008),
}
RANK, SCALING = 128, 2.0


def _factors(case: str, k: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per module, k (A (r, in), B (out, r)) pairs."""
    g = torch.Generator().manual_seed(0)
    if CASES[case] is None:
        from models.loading import load_vlm
        from models.lora import lora_target_modules

        model, _ = load_vlm("embedded:s")
        shapes = [tuple(model.get_submodule(m).weight.shape[::-1]) for m in lora_target_modules(model)]
    else:
        shapes = [CASES[case]]
    return [
        [(torch.randn(RANK, i, generator=g) * 0.01, torch.randn(o, RANK, generator=g) * 0.01) for _ in range(k)]
        for i, o in shapes
    ]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(case: str, k: int, repeats: int) -> dict:
    from core.ties import sma_weights, trim_threshold
    from teacher.merge import merge_module

    modules = _factors(case, k)
    weights = sma_weights(k)
    baseline = _rss_mb()

    def plain_sum() -> None:
        for pairs in modules:
            total = torch.zeros(pairs[0][1].shape[0], pairs[0][0].shape[1])
            for a, b in pairs:
                total.addmm_(b, a, alpha=SCALING)

    plain = _median_seconds(plain_sum, repeats)
    start = time.perf_counter()
    thresholds = [[trim_threshold(SCALING * (b @ a), 0.8) for a, b in pairs] for pairs in modules]
    per_checkpoint = (time.perf_counter() - start) / k
    start = time.perf_counter()
    for pairs, th in zip(modules, thresholds, strict=True):  # warm-up: compiles once per process
        merge_module(pairs, weights, SCALING, "ties", th)
    first = time.perf_counter() - start

    def ties_merge() -> None:
        for pairs, th in zip(modules, thresholds, strict=True):
            merge_module(pairs, weights, SCALING, "ties", th)

    ties = _median_seconds(ties_merge, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "sum_s": plain,
        "ties_s": ties,
        "first_s": first,
        "thresholds_s": per_checkpoint,
        "peak_mb": peak - baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case is not None:  # a child process: one measurement
        print(json.dumps(run_case(args.case, args.k, args.repeats)))
        return
    print(f"TIES (density 0.8, SMA) vs a plain sum, r = {RANK}, {args.threads} threads, median of {args.repeats}")
    print(
        f"{'case':<28} {'k':>3} {'sum s':>8} {'ties s':>8} {'ties/sum':>8} {'1st merge s':>11} "
        f"{'thresh s/ckpt':>13} {'peak MB':>8}"
    )
    for case in CASES:
        for k in args.ks:
            cmd = [
                sys.executable,
                "-m",
                "bench.merge",
                "--repeats",
                str(args.repeats),
                "--case",
                case,
                "--k",
                str(k),
                "--threads",
                str(args.threads),
            ]
            r = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            )
            print(
                f"{case:<28} {k:>3} {r['sum_s']:>8.2f} {r['ties_s']:>8.2f} {r['ties_s'] / r['sum_s']:>7.2f}x "
                f"{r['first_s']:>11.2f} {r['thresholds_s']:>13.3f} {r['peak_mb']:>8.0f}"
            )


if __name__ == "__main__":
    main()
