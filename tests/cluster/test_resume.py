"""Checkpoints and resume in local mode: a run cut short and resumed ends where an uninterrupted one does."""

import pytest
import torch

from cluster import launch
from cluster.roles import LearnerRole
from configs import load_config
from tests.cluster.tiny import TINY


def _config(run_dir, guidance, *extra):
    return load_config(
        None,
        [
            *TINY,
            "cluster.mode=local",
            "train.iterations=4",
            "train.checkpoint_every=2",
            "train.num_workers=2",
            f"teacher.guidance={guidance}",
            f"run_dir={run_dir}",
            *extra,
        ],
    )


def _final_learner(run_dir):
    return torch.load(run_dir / "checkpoints" / "iter-00000004" / "learner.pt", weights_only=False)


class Crash(Exception):
    pass


def crash_saving_version(monkeypatch, version, error):
    """The learner's save raises ``error`` while it holds ``version`` (a crash in the middle of writing that
    iteration's checkpoint, after the rollout actors' states); returns the real save, to put back."""
    save = LearnerRole.save

    def crashing_save(self):
        if self.learner.version == version:
            raise error
        return save(self)

    monkeypatch.setattr(LearnerRole, "save", crashing_save)
    return save


@pytest.mark.parametrize("guidance", ["kl", "sft"])
def test_resume_after_a_crash_mid_checkpoint_matches_the_uninterrupted_run(tmp_path, guidance, monkeypatch):
    quiet = lambda *_: None  # noqa: E731
    whole = launch.run(_config(tmp_path / "whole", guidance), log=quiet)

    # Cut: the checkpoint of iteration 4 dies half-written (the rollout actors' states written, then the
    # learner's save crashes).
    cut_dir = tmp_path / "cut"
    save = crash_saving_version(monkeypatch, 4, Crash("power cut"))
    with pytest.raises(launch.RunStopped, match="learner failed in save .*power cut"):
        launch.run(_config(cut_dir, guidance), log=quiet)
    assert (cut_dir / "checkpoints" / "latest").read_text() == "iter-00000002"  # still the last complete one
    assert not (cut_dir / "checkpoints" / "iter-00000004").exists()
    # The driver's copy of the teacher's buffer already holds versions 3 and 4 of the lost iterations.
    assert len(list((cut_dir / "teacher").glob("adapter-*.safetensors"))) == 4
    monkeypatch.setattr(LearnerRole, "save", save)

    resumed_cfg = load_config(cut_dir / "config.yaml", [])
    resumed = launch.run(resumed_cfg, resume=True, log=quiet)

    a, b = _final_learner(tmp_path / "whole"), _final_learner(cut_dir)
    assert a["version"] == b["version"] == 4
    for key in a["adapter"]:
        assert torch.equal(a["adapter"][key], b["adapter"][key]), key
    for key in a["value_head"]:
        assert torch.equal(a["value_head"][key], b["value_head"][key]), key
    for key in ("losses/policy", "losses/value", "rollout/return", "rollout/total_env_steps", "eval/success"):
        assert whole[key] == resumed[key], key
    for key in ("rollout/window_success", "rollout/window_return", "rollout/window_episodes", "rollout/running_share"):
        assert whole.get(key) == resumed.get(key), key  # the episode window came back from the checkpoint
    if guidance == "kl":
        assert whole["teacher/kl"] == resumed["teacher/kl"]
    metrics = (cut_dir / "metrics.jsonl").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics] == [f'{{"iteration": {i}' for i in range(5)]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(launch.SetupError, match="holds no intact checkpoint to resume from"):
        launch.run(_config(tmp_path, "none"), resume=True, log=lambda *_: None)
