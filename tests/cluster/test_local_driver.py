"""Two iterations of the training loop in local mode (one process, no Ray) for each guidance mode."""

import json

import pytest
import torch

from cluster import launch
from configs import load_config
from tests.cluster.tiny import TINY


@pytest.mark.parametrize("guidance", ["none", "kl", "sft"])
def test_two_iterations(tmp_path, guidance):
    cfg = load_config(None, [*TINY, "cluster.mode=local", f"teacher.guidance={guidance}", f"run_dir={tmp_path}"])
    last = launch.run(cfg, log=lambda *_: None)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [0, 1, 2]  # the evaluation before training, then two updates
    assert last["rollout/env_steps"] == 12 and last["rollout/policy_version"] == 2
    assert last["rollout/total_env_steps"] == 24 and last["rollout/stale_steps"] == 0
    for key in ("losses/policy", "losses/value", "time/sample", "time/learn", "time/publish", "eval/success"):
        assert key in last
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-00000002"
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "curves.png").stat().st_size > 10_000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    if guidance == "kl":
        assert "teacher/kl" in last and last["teacher/merged_version"] == 2.0 and last["teacher/skipped"] == 0
        assert sorted(p.name for p in (tmp_path / "teacher").glob("*.safetensors")) == [
            "adapter-00000001.safetensors",
            "adapter-00000002.safetensors",
        ]
        assert "eval/teacher_success" in last
    if guidance == "sft":
        assert last["teacher/labels"] >= 0 and "time/score" in last
    if guidance == "none":
        assert "teacher/kl" not in last and not (tmp_path / "teacher").exists()


def test_warm_start_sft_then_every_role_starts_from_its_checkpoint(tmp_path):
    seen = {}

    def hook(phase, index, trainer):
        if phase == "sample" and index == 1:
            s = trainer.system
            seen["rollout"] = s.rollouts[0].obj.engine.model.config._name_or_path
            seen["teacher"] = s.teacher.obj.teacher.engine.model.config._name_or_path
            seen["learner"] = s.learner.obj.learner.policy.model.base_model.model.config._name_or_path

    overrides = [*TINY, "cluster.mode=local", "train.warm_start=sft", "sft.steps=3", "sft.batch_size=2"]
    cfg = load_config(None, [*overrides, "train.iterations=1", f"run_dir={tmp_path}"])
    launch.run(cfg, log=lambda *_: None, hook=hook)
    checkpoint = str(tmp_path / "warm_start" / "checkpoint")
    assert seen == {"rollout": checkpoint, "teacher": checkpoint, "learner": checkpoint}
    with pytest.raises(launch.SetupError, match="already holds a run"):  # a new run never mixes into an old one
        launch.run(cfg, log=lambda *_: None)


def _raising(monkeypatch, cls, method, times, error=torch.cuda.OutOfMemoryError):
    """Make ``cls.method`` raise ``error`` on its first ``times`` calls (every incarnation counts); by default
    a CUDA out-of-memory, an infrastructure failure the run recovers from."""
    original, calls = getattr(cls, method), []

    def flaky(self, *args):
        calls.append(method)
        if len(calls) <= times:
            raise error(f"injected failure {len(calls)} in {method}")
        return original(self, *args)

    monkeypatch.setattr(cls, method, flaky)
    return calls


def test_a_teacher_or_rollout_that_raises_is_rebuilt_and_the_run_goes_on(tmp_path, monkeypatch):
    from actors.rollout import EnvCrashed
    from cluster.roles import RolloutRole, TeacherRole

    _raising(monkeypatch, TeacherRole, "add_checkpoint", 1)  # the first merge runs out of memory
    _raising(monkeypatch, RolloutRole, "sample", 1, EnvCrashed)  # an env crashes in the first sample
    logs = []
    cfg = load_config(
        None, [*TINY, "cluster.mode=local", "teacher.guidance=kl", "train.iterations=3", f"run_dir={tmp_path}"]
    )
    last = launch.run(cfg, log=logs.append)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [0, 1, 2, 3]
    assert last["rollout/total_env_steps"] == 36  # the failed sample was redone by a new incarnation
    assert last["rollout/restarts"] == 1 and last["teacher/restarts"] == 1
    assert last["teacher/merged_version"] == 3.0 and last["teacher/skipped"] == 0  # version 1 re-sent, guidance back
    assert any("rollout-0 failed in sample (EnvCrashed: injected failure 1" in str(m) for m in logs)
    assert any("teacher failed in add_checkpoint" in str(m) and "rebuilding the teacher" in str(m) for m in logs)


def test_a_teacher_that_keeps_failing_stops_the_run_naming_the_checkpoint(tmp_path, monkeypatch, capsys):
    from cluster.roles import TeacherRole

    _raising(monkeypatch, TeacherRole, "add_checkpoint", 10**6)
    overrides = [*TINY, "cluster.mode=local", "teacher.guidance=kl", "cluster.max_restarts=1"]
    assert launch.main([*overrides, "train.iterations=3", f"run_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in flaky" in err  # where it failed, from the role's own traceback
    stopped = err[err.index("run stopped:") :]
    assert "the teacher failed or died 2 times" in stopped and "injected failure" in stopped
    assert f"--resume {tmp_path}" in stopped


def test_a_failed_adapter_load_replaces_the_rollout_actor_before_it_samples_stale(tmp_path, monkeypatch):
    from cluster.roles import RolloutRole

    _raising(monkeypatch, RolloutRole, "load_adapter", 1)  # version 1 never reaches rollout-0
    cfg = load_config(None, [*TINY, "cluster.mode=local", "teacher.guidance=none", f"run_dir={tmp_path}"])
    last = launch.run(cfg, log=lambda *_: None)
    assert last["rollout/restarts"] == 1
    assert last["rollout/policy_version"] == 2 and last["rollout/stale_steps"] == 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("rollout/stale_steps", 0) == 0 for r in lines)


def test_each_rollout_workers_vllm_gets_cores_of_its_own():
    from cluster.roles import vllm_cores

    assert [vllm_cores(1, i, 2) for i in range(3)] == ["0", "1", "0"]  # two cores: the third shares the first's
    assert [vllm_cores(2, i, 8) for i in range(5)] == ["0,1", "2,3", "4,5", "6,7", "0,1"]
    assert vllm_cores(4, 1, 2) == "0,1"  # never more threads than cores


# ---------------------------------------------------------------------- what is recovered from, and what is not


def test_only_infrastructure_failures_are_recoverable():
    from actors.rollout import EnvCrashed
    from cluster.system import RoleFailed, infrastructure

    class EngineDeadError(RuntimeError):  # vLLM's (imported lazily), matched by name
        pass

    machine = [MemoryError(), torch.cuda.OutOfMemoryError("CUDA out of memory"), EnvCrashed("env 0 crashed in step")]
    machine += [OSError(28, "No space left on device"), EngineDeadError()]
    code = [TypeError("x"), AttributeError("x"), AssertionError(), KeyError("x"), ValueError("x"), RuntimeError("x")]
    assert [infrastructure(e) and RoleFailed("rollout-0", "sample", e).recoverable for e in machine] == [True] * 5
    assert [infrastructure(e) or RoleFailed("rollout-0", "sample", e).recoverable for e in code] == [False] * 6


def test_an_env_that_raises_is_an_env_crash_with_its_own_error_chained(monkeypatch):
    from actors.rollout import EnvCrashed, RolloutSettings, RolloutWorker
    from tests.actors.scripted import ScriptedEngine

    worker = RolloutWorker(load_config(None, TINY).env, ScriptedEngine(lambda p: "?"), RolloutSettings(num_envs=2))
    worker.sample(1)

    def broken(action):
        raise ValueError("the simulator went away")

    monkeypatch.setattr(worker.slots[1].env, "step", broken)
    with pytest.raises(EnvCrashed, match="env 1 crashed in step: ValueError: the simulator went away") as crashed:
        worker.sample(1)
    assert isinstance(crashed.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "role, method, error", [("rollout", "sample", TypeError), ("teacher", "logprobs", AssertionError)]
)
def test_a_programming_error_in_a_role_stops_the_run_with_its_traceback_and_restarts_nothing(
    tmp_path, monkeypatch, capsys, role, method, error
):
    from cluster.roles import RolloutRole, TeacherRole

    calls = _raising(monkeypatch, {"rollout": RolloutRole, "teacher": TeacherRole}[role], method, 1, error)
    overrides = [*TINY, "cluster.mode=local", "teacher.guidance=kl", "train.eval_before=false"]
    assert launch.main([*overrides, f"run_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert calls == [method]  # never called again: no new incarnation tried
    assert "Traceback" in err and "in flaky" in err  # the role's own traceback, above the stop line
    stopped = err[err.index("run stopped:") :]
    name = "rollout-0" if role == "rollout" else "teacher"
    assert stopped.startswith(
        f"run stopped: {name} failed in {method} ({error.__name__}: injected failure 1 in {method}): not an "
        "infrastructure failure (an actor that died, out of memory, an env crash), so nothing is restarted."
    )
    assert f"--resume {tmp_path}" in stopped and "rebuilding" not in err
    assert not (tmp_path / "metrics.jsonl").read_text()  # iteration 1 never finished


def test_iterations_without_guidance_are_counted_and_in_the_run_summary(tmp_path, monkeypatch):
    from cluster.roles import TeacherRole

    _raising(monkeypatch, TeacherRole, "logprobs", 1)  # iteration 1's scoring runs out of memory
    logs = []
    overrides = [*TINY, "cluster.mode=local", "teacher.guidance=kl", "train.eval_before=false"]
    last = launch.run(
        load_config(None, [*overrides, "train.eval_teacher=false", f"run_dir={tmp_path}"]), log=logs.append
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["teacher/skipped"] for r in records] == [1, 0]  # iteration 1 trained without guidance, 2 with
    assert [r["teacher/unguided_iterations"] for r in records] == [1, 1] and last["teacher/restarts"] == 1
    line = "1 of 2 iterations ran without guidance (teacher rebuilding)"
    assert any(line in str(m) for m in logs) and line in (tmp_path / "summary.md").read_text()


def test_teacher_required_stops_the_run_instead_of_training_without_guidance(tmp_path, monkeypatch, capsys):
    from cluster.roles import TeacherRole

    _raising(monkeypatch, TeacherRole, "logprobs", 1)
    overrides = [*TINY, "cluster.mode=local", "teacher.guidance=kl", "train.eval_before=false"]
    assert launch.main([*overrides, "teacher.required=true", f"run_dir={tmp_path}"]) == 1
    stopped = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.startswith(
        "run stopped: teacher failed in logprobs (OutOfMemoryError: injected failure 1 in logprobs); teacher.required "
        "is true, "
        "so the run stops rather than train without guidance. Last good checkpoint: none yet."
    )
    assert not (tmp_path / "metrics.jsonl").read_text()
