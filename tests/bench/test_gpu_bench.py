"""bench/gpu.py must run as it is on a GPU machine: its whole path, at a tiny size, on this CPU."""

import subprocess
import sys

import pytest
import torch

TINY = ["--model", "embedded:xs", "--device", "cpu", "--dtype", "float32", "--rank", "8", "--threads", "1"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu", *args], capture_output=True, text=True, timeout=300)


def test_every_part_prints_its_table():
    out = _run(
        *TINY,
        *("--ks", "1", "2", "--max-new-tokens", "6", "--rounds", "1"),
        *("--merge-ks", "2", "3", "--repeats", "1"),
        *("--iteration-envs", "2", "--iteration-rounds", "2", "--iterations", "1"),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rollout = [line.split(" | ") for line in lines if line.startswith(("| 1 |", "| 2 |")) and line.count("|") == 13]
    assert [int(row[0].strip("| ")) for row in rollout] == [1, 2]
    assert all(int(row[1]) == int(row[0].strip("| ")) for row in rollout)  # one timed round: K env steps
    merges = [line.split(" | ") for line in lines if line.count("|") == 5 and line[2:3].isdigit()]
    assert [int(row[0].strip("| ")) for row in merges] == [2, 3]
    assert all(float(row[2]) > 0 for row in merges)
    modes = {line.split(" | ")[0].strip("| ") for line in lines if line.startswith(("| none |", "| kl |"))}
    assert modes == {"none", "kl"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    out = _run("--parts", "merge")
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr and "--device cpu" in out.stderr


def test_unknown_part_is_named():
    out = _run(*TINY, "--parts", "rollout", "sampling")
    assert out.returncode == 2 and "sampling" in out.stderr


@pytest.mark.gpu
def test_every_part_runs_on_cuda_in_bfloat16():
    out = _run(
        *("--model", "embedded:xs", "--rank", "8", "--ks", "1", "4", "--max-new-tokens", "8", "--rounds", "1"),
        *("--merge-ks", "2", "--repeats", "1", "--iteration-envs", "2", "--iteration-rounds", "2", "--iterations", "1"),
    )
    assert out.returncode == 0, out.stderr
    assert "bfloat16 on NVIDIA" in out.stdout and "| kl |" in out.stdout
