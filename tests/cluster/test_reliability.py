"""Faults and bad input around a run (local mode; docs/RELIABILITY.md lists each with its test): one run per
folder, checkpoints that share nothing and are verified, resume that falls back past a damaged checkpoint,
non-finite training that stops, Ctrl-C / SIGTERM / I/O errors that end in one line with the resume command."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import checkpoint, launch
from configs import load_config
from tests.cluster.tiny import TINY

REPO = Path(__file__).resolve().parents[2]
LOCAL = [*TINY, "cluster.mode=local"]
quiet = lambda *_: None  # noqa: E731


def _cfg(run_dir, *extra):
    return load_config(None, [*LOCAL, f"run_dir={run_dir}", *extra])


def _iterations(run_dir) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _launch(*argv) -> subprocess.Popen:
    command = [sys.executable, "-m", "cluster.launch", *argv]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# ---------------------------------------------------------------------- one run per folder


def test_two_launches_into_one_folder_one_runs_the_other_exits_2_naming_the_owner(tmp_path):
    run_dir = tmp_path / "run"
    first = _launch(*LOCAL, f"run_dir={run_dir}")
    time.sleep(0.3)
    second = _launch(*LOCAL, f"run_dir={run_dir}")
    outcomes = {first.wait(timeout=300): first, second.wait(timeout=300): second}
    assert sorted(outcomes) == [0, 2]
    err = outcomes[2].stderr.read()
    assert f"error: {run_dir} is in use by another run (pid {outcomes[0].pid} on" in err, err
    assert _iterations(run_dir) == [0, 1, 2]  # one run's records, nothing interleaved
    assert (run_dir / ".lock").read_text() == ""  # released by a run that ended cleanly


def test_a_lock_left_by_a_killed_run_is_reported_and_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cluster.launch import RunFolder\n"
         f"with RunFolder(__import__('pathlib').Path({str(tmp_path)!r}), print):\n"
         "    print('locked', flush=True); time.sleep(600)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(launch.SetupError, match=f"is in use by another run \\(pid {holder.pid} on "):
        launch.run(_cfg(tmp_path), log=quiet)
    holder.kill()
    holder.wait()
    lines = []
    with launch.RunFolder(tmp_path, lines.append):
        pass
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path}: the run that held it before (pid {holder.pid} on ")
    assert lines[0].endswith("ended without releasing it (killed?)")


# ---------------------------------------------------------------------- checkpoints: isolated, verified, fallback


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 3-iteration KL run with a checkpoint after every iteration, all three kept."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    extra = ["teacher.guidance=kl", "train.iterations=3", "train.checkpoint_every=1", "train.keep_checkpoints=3"]
    launch.run(_cfg(run_dir, *extra), log=quiet)
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _ckpt(run_dir, iteration) -> Path:
    return checkpoint.folder(run_dir) / checkpoint.name(iteration)


def test_damaging_one_checkpoints_file_leaves_every_other_checkpoint_and_the_buffer_intact(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    assert all(checkpoint.verify(p) is None for p in checkpoint.checkpoints(run_dir))
    damaged = _ckpt(run_dir, 3) / "teacher" / "adapter-00000002.safetensors"
    damaged.write_bytes(b"")  # emptied in place, as a crashed copy or a stray `> file` would
    assert checkpoint.verify(_ckpt(run_dir, 3)) == f"{damaged} has 0 bytes, {_size(finished, 3, damaged)} when written"
    assert checkpoint.verify(_ckpt(run_dir, 2)) is None  # the same version's file in iter-2: untouched
    assert (_ckpt(run_dir, 2) / "teacher" / damaged.name).stat().st_size > 0
    from teacher.buffer import CheckpointBuffer

    assert set(CheckpointBuffer(run_dir / "teacher").load(2)) == set(
        CheckpointBuffer(_ckpt(run_dir, 2) / "teacher").load(2)
    )


def _size(run_dir, iteration, damaged: Path) -> int:
    return (_ckpt(run_dir, iteration) / damaged.relative_to(damaged.parents[1])).stat().st_size


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda c: (c / "learner.pt").write_bytes((c / "learner.pt").read_bytes()[:1000]), "learner.pt has 1000 bytes"),
        (lambda c: (c / "driver.json").write_text("{broken"), "driver.json has 7 bytes, "),
        (lambda c: shutil.rmtree(c), None),  # the newest folder deleted: `latest` names a folder that is gone
        (lambda c: (c / "rollout-0.pt").unlink(), "rollout-0.pt is missing"),
    ],
    ids=["truncated-learner", "broken-driver-json", "deleted-folder", "missing-rollout"],
)
def test_resume_falls_back_to_the_newest_intact_checkpoint_saying_why(finished, tmp_path, damage, reason):
    run_dir = _copy(finished, tmp_path)
    damage(_ckpt(run_dir, 3))
    choice = checkpoint.choose(run_dir)
    assert choice.path == _ckpt(run_dir, 2)
    if reason is not None:
        assert len(choice.passed_over) == 1 and choice.passed_over[0].startswith("iter-00000003: ")
        assert reason in choice.passed_over[0]


def test_resume_past_a_damaged_checkpoint_continues_and_sets_the_damaged_one_aside(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    teacher_file = _ckpt(run_dir, 3) / "teacher" / "adapter-00000003.safetensors"
    teacher_file.write_bytes(teacher_file.read_bytes()[:100])  # `SafetensorError: header too small` before
    assert launch.main(["--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"passed over checkpoint iter-00000003: {teacher_file} has 100 bytes" in out
    assert "resuming from iter-00000002, the newest intact checkpoint" in out
    assert _iterations(run_dir) == [0, 1, 2, 3]
    aside = list((checkpoint.folder(run_dir) / checkpoint.SET_ASIDE).glob("*/iter-00000003"))
    assert len(aside) == 1 and (aside[0] / "teacher" / teacher_file.name).stat().st_size == 100  # nothing lost
    assert checkpoint.verify(_ckpt(run_dir, 3)) is None  # the new iteration 3


def test_no_intact_checkpoint_or_a_damaged_one_asked_for_is_a_clear_error(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    (_ckpt(run_dir, 3) / "driver.json").write_text("{broken")
    assert launch.main(["--resume", str(run_dir), "--checkpoint", "iter-00000003"]) == 2
    assert f"checkpoint {_ckpt(run_dir, 3)} is damaged: {_ckpt(run_dir, 3) / 'driver.json'} has 7 bytes" in (
        capsys.readouterr().err
    )
    for iteration in (1, 2):
        (_ckpt(run_dir, iteration) / "learner.pt").write_bytes(b"x")
    assert launch.main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"error: {run_dir} holds no intact checkpoint to resume from" in err
    assert "iter-00000003: " in err and "iter-00000002: " in err and "iter-00000001: " in err


def test_a_checkpoint_file_that_will_not_load_is_named_with_the_checkpoints_left(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    newest = _ckpt(run_dir, 3)
    (newest / checkpoint.MANIFEST).unlink()  # as written before manifests: only what can be checked is
    (newest / "learner.pt").write_bytes(b"not a checkpoint")
    cfg = load_config(run_dir / "config.yaml", [f"run_dir={run_dir}"])
    with pytest.raises(launch.RunStopped) as stopped:
        launch.run(cfg, resume=True, log=quiet)
    message = str(stopped.value)
    assert f"cannot resume from {newest}: " in message and f"cannot load {newest / 'learner.pt'}: " in message
    assert f"--resume {run_dir} --checkpoint iter-00000002" in message


# ---------------------------------------------------------------------- non-finite training


def test_a_non_finite_update_stops_the_run_naming_the_last_good_checkpoint(tmp_path):
    def hook(phase, index, trainer):
        if phase == "learn" and index == 2:  # the learner's value head turns NaN after iteration 1's checkpoint
            trainer.system.learner.obj.learner.policy.value_head.net[0].weight.data.fill_(float("nan"))

    cfg = _cfg(tmp_path, "train.checkpoint_every=1", "train.iterations=3")
    with pytest.raises(launch.RunStopped) as stopped:
        launch.run(cfg, log=quiet, hook=hook)
    message = str(stopped.value)
    assert "learner failed in update (NonFiniteError: non-finite PPO minibatch" in message
    assert f"Last good checkpoint: {_ckpt(tmp_path, 1)}" in message and _iterations(tmp_path) == [0, 1]


# ---------------------------------------------------------------------- interrupts and I/O errors


@pytest.mark.parametrize(
    "sig, code, what", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")]
)
def test_ctrl_c_and_sigterm_end_in_one_line_naming_the_checkpoint_and_the_resume_command(tmp_path, sig, code, what):
    run_dir = tmp_path / "run"
    process = _launch(*LOCAL, "train.iterations=50", "train.checkpoint_every=1", f"run_dir={run_dir}")
    _wait_for(lambda: (checkpoint.folder(run_dir) / checkpoint.LATEST).is_file(), process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"run stopped: {what}. Last good checkpoint: {checkpoint.folder(run_dir)}/iter-0"), err
    assert last.endswith(f"Resume with: python -m cluster.launch --resume {run_dir}") and "Traceback" not in err
    assert (run_dir / "summary.md").is_file() and (run_dir / ".lock").read_text() == ""
    assert launch.main(["--resume", str(run_dir), "train.iterations=2"]) == 0  # and it resumes


def test_an_io_error_mid_run_ends_in_one_line_even_when_the_summary_cannot_be_written(tmp_path, monkeypatch, capsys):
    from cluster import runlog

    write = checkpoint._write_atomic

    def disk_full(path, text):
        if "iter-00000002" in str(path):
            raise OSError(28, "No space left on device", str(path))
        write(path, text)

    def no_summary(*args):
        raise OSError(28, "No space left on device", str(tmp_path / "summary.md"))

    monkeypatch.setattr(checkpoint, "_write_atomic", disk_full)
    monkeypatch.setattr(runlog, "summary_markdown", no_summary)
    assert launch.main([*LOCAL, "train.checkpoint_every=1", f"run_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    tmp = checkpoint.folder(tmp_path) / ".tmp-iter-00000002"
    assert err.strip().splitlines() == [
        f"run stopped: cannot write or read {tmp / 'driver.json'}: No space left on device. Last good checkpoint: "
        f"{_ckpt(tmp_path, 1)}. Resume with: python -m cluster.launch --resume {tmp_path}"
    ]


def test_a_run_folder_that_cannot_be_made_is_refused_before_anything_starts(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert launch.main([*LOCAL, f"run_dir={tmp_path / 'file' / 'run'}"]) == 2
    assert f"error: run_dir {tmp_path / 'file' / 'run'} cannot be used: Not a directory" in capsys.readouterr().err


def test_an_io_error_in_a_role_is_one_line_too(tmp_path, monkeypatch, capsys):
    from cluster.roles import LearnerRole

    save = LearnerRole.save

    def disk_full(self):
        if self.learner.version == 2:
            raise OSError(28, "No space left on device", "learner.pt")
        return save(self)

    monkeypatch.setattr(LearnerRole, "save", disk_full)
    assert launch.main([*LOCAL, "train.checkpoint_every=1", f"run_dir={tmp_path}"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run stopped: learner failed in save (OSError: [Errno 28] No space")
    assert lines[0].endswith(
        f"Last good checkpoint: {_ckpt(tmp_path, 1)}. Resume with: python -m cluster.launch --resume {tmp_path}"
    )
