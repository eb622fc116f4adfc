"""The asynchronous loop in local mode (issue 19): batches learned at most ``train.max_staleness`` versions
after the one that sampled them, evaluation records complete and in order, and a resume that continues
the same run (the batches sampled ahead are in the checkpoint: none lost, none used twice)."""

import json

import pytest
import torch

from cluster import launch
from cluster.roles import LearnerRole
from configs import load_config
from tests.cluster.test_resume import _config as resume_config
from tests.cluster.test_resume import crash_saving_version

QUIET = lambda *_: None  # noqa: E731


def _config(run_dir, *extra):
    """test_resume's run (4 iterations, checkpoints every 2, 2 workers), with KL guidance unless ``extra`` says."""
    return resume_config(run_dir, "kl", *extra)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("staleness", [1, 2])
def test_batches_are_learned_at_most_max_staleness_versions_late(tmp_path, staleness):
    launch.run(_config(tmp_path, f"train.max_staleness={staleness}", "train.eval_every=1"), log=QUIET)
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    trained = records[1:]
    # Batch i is sampled by version max(0, i - 1 - staleness) and learned by version i - 1.
    expected = [min(i - 1, staleness) for i in range(1, 5)]
    assert [r["rollout/staleness_max"] for r in trained] == expected
    assert all(r["rollout/stale_steps"] == (24 if s else 0) for r, s in zip(trained, expected, strict=True))
    assert all("losses/behaviour_weight" in r for r, s in zip(trained, expected, strict=True) if s)
    assert all("eval/success" in r and "eval/teacher_success" in r for r in records)
    assert trained[-1]["rollout/total_env_steps"] == 4 * 24  # no batch sampled past the last iteration
    assert all(r["teacher/merged_version"] <= r["rollout/policy_version"] for r in trained)


@pytest.mark.parametrize("guidance", ["kl", "sft"])
def test_resume_continues_the_same_asynchronous_run(tmp_path, monkeypatch, guidance):
    whole = launch.run(_config(tmp_path / "whole", "train.max_staleness=1", f"teacher.guidance={guidance}"), log=QUIET)
    saved = tmp_path / "whole" / "checkpoints" / "iter-00000002"
    assert (saved / "ahead.pt").is_file()  # batch 3, sampled by version 1 before the checkpoint
    assert (saved / "scored.pt").is_file()  # and the teacher's guidance for it, from its merge of version 1

    cut_dir = tmp_path / "cut"
    save = crash_saving_version(monkeypatch, 4, OSError("power cut"))
    with pytest.raises(launch.RunStopped, match="power cut"):
        launch.run(_config(cut_dir, "train.max_staleness=1", f"teacher.guidance={guidance}"), log=QUIET)
    monkeypatch.setattr(LearnerRole, "save", save)
    resumed = launch.run(load_config(cut_dir / "config.yaml", []), resume=True, log=QUIET)

    a, b = (
        torch.load(d / "checkpoints" / "iter-00000004" / "learner.pt", weights_only=False)
        for d in (tmp_path / "whole", cut_dir)
    )
    assert a["version"] == b["version"] == 4
    for key in a["adapter"]:
        assert torch.equal(a["adapter"][key], b["adapter"][key]), key
    for key in ("losses/policy", "rollout/return", "rollout/total_env_steps", "rollout/staleness", "teacher/kl"):
        assert whole.get(key) == resumed.get(key), key
    assert [r["iteration"] for r in _records(cut_dir)] == [0, 1, 2, 3, 4]
