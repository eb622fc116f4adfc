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
