"""Peak memory of scoring one micro-batch at a real vocabulary: the part that grows with it.

    .venv/bin/python -m bench.score_memory [--vocab 151936] [--hidden 2048] [--rows 8] [--tokens 256]

The language model's final hidden states of ``rows x tokens`` response tokens (random, Qwen2.5-VL-3B's
hidden size and vocabulary by default) go through the lm_head to their tempered log-probs, with
gradients, and back; then once more without gradients but with the entropy (the learner's pass over the
sampled steps). Two ways, each in a fresh process so one's peak cannot hide the other's:

- ``straightforward``: log_softmax over the tempered logits and the entropy from its exponent, all with
  gradients (the learner's scoring before issue 17);
- ``scoring.head_logprobs``: what models/scoring.py does now (one (N, V) tensor kept for the backward, the
  entropy without gradients in chunks of rows).

Peak is the process's high-water resident memory above what it held once the weights and hidden states
were made (Linux ru_maxrss). Random weights; fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

WAYS = ("straightforward", "scoring.head_logprobs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--way", choices=WAYS, help="(internal) measure one way in this process")
    parser.add_argument("--grad", type=int, choices=(0, 1), default=1, help="(internal) with gradients or not")
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args)))
        return
    n = args.rows * args.tokens
    logits_gib = n * args.vocab * 4 / 2**30
    print(
        f"one micro-batch: {args.rows} rows x {args.tokens} response tokens = {n} scored tokens, "
        f"vocabulary {args.vocab}, hidden {args.hidden}, fp32 (one (N, V) tensor: {logits_gib:.2f} GiB)"
    )
    print("| scoring | with gradients, forward + backward (GiB) | without, with entropy (GiB) |")
    print("|---|---|---|")
    for way in WAYS:
        argv = [sys.executable, "-m", "bench.score_memory", "--way", way]
        argv += ["--vocab", str(args.vocab), "--hidden", str(args.hidden)]
        argv += ["--rows", str(args.rows), "--tokens", str(args.tokens)]
        peaks = [
            json.loads(subprocess.run([*argv, "--grad", g], capture_output=True, text=True, check=True).stdout)
            for g in ("1", "0")
        ]
        print(f"| {way} | {peaks[0]:.2f} | {peaks[1]:.2f} |")


def _resident_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(args) -> float:
    """GiB above the baseline at the peak of one forward + backward (``--grad 1``) or of one pass without
    gradients that also computes the entropy (``--grad 0``)."""
    from models.scoring import head_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    head.weight.requires_grad_(False)  # frozen, as in the policy: only the hidden states need a gradient
    n = args.rows * args.tokens
    hidden = torch.randn(n, args.hidden, requires_grad=bool(args.grad))
    targets = torch.randint(args.vocab, (n,))
    banned = [args.vocab - 5, args.vocab - 4]
    base = _resident_gib()
    with torch.set_grad_enabled(bool(args.grad)):
        if args.way == "straightforward":
            logits = head(hidden).float() / 0.7
            logits = logits.index_fill(-1, torch.tensor(banned), float("-inf"))
            log_probs = torch.log_softmax(logits, dim=-1)
            token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            probs = log_probs.exp()
            entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)  # its graph alive, as it was
        else:
            token_lp, entropy = head_logprobs(head, hidden, targets, 0.7, banned, None, entropy=not args.grad)
        if args.grad:
            token_lp.sum().backward()
    del entropy
    return _peak_gib() - base


if __name__ == "__main__":
    main()
