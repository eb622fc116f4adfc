"""Two iterations of the training loop in local mode (one process, no Ray) for each guidance mode."""

import json

import pytest

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


def _raising(monkeypatch, cls, method, times):
    """Make ``cls.method`` raise on its first ``times`` calls (every incarnation counts)."""
    original, calls = getattr(cls, method), []

    def flaky(self, *args):
        calls.append(method)
        if len(calls) <= times:
            raise RuntimeError(f"injected failure {len(calls)} in {method}")
        return original(self, *args)

    monkeypatch.setattr(cls, method, flaky)
    return calls


def test_a_teacher_or_rollout_that_raises_is_rebuilt_and_the_run_goes_on(tmp_path, monkeypatch):
    from cluster.roles import RolloutRole, TeacherRole

    _raising(monkeypatch, TeacherRole, "add_checkpoint", 1)  # the first merge fails
    _raising(monkeypatch, RolloutRole, "sample", 1)  # the first sample fails
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
    assert any("rollout-0 failed in sample (RuntimeError: injected failure 1" in str(m) for m in logs)
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
