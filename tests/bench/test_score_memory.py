"""bench/score_memory.py runs and prints its table (at a tiny size: the figures are docs/BENCHMARKS.md's)."""

import subprocess
import sys

import pytest


@pytest.mark.slow  # about 45 s here
def test_score_memory_prints_both_ways():
    argv = [sys.executable, "-m", "bench.score_memory", "--vocab", "1000", "--hidden", "32", "--rows", "2"]
    out = subprocess.run([*argv, "--tokens", "8"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [
        line.split(" | ")
        for line in out.stdout.splitlines()
        if line.startswith(("| straightforward |", "| scoring.head_logprobs |"))
    ]
    assert [row[0] for row in rows] == ["| straightforward", "| scoring.head_logprobs"]
    assert all(float(cell.strip(" |")) >= 0 for row in rows for cell in row[1:])
