"""Two iterations of the local (one-process) training loop for each guidance mode."""

import json

import pytest

from cluster import driver
from configs import load_config

TINY = [
    "policy.path=embedded:xs",
    "policy.lora_rank=8",
    "policy.lora_alpha=16",
    "policy.max_new_tokens=24",
    "policy.temperature=1.0",
    "env.id=gym_cards/NumberLine-v0",
    "train.iterations=2",
    "train.rounds=3",
    "train.eval_every=2",
    "rollout.num_envs=4",
    "learner.minibatch_size=6",
    "learner.micro_batch_size=6",
    "learner.lr=1e-3",
    "learner.max_grad_norm=1.0",
    "eval.episodes=4",
    "eval.num_envs=4",
]


@pytest.mark.parametrize("guidance", ["none", "kl", "sft"])
def test_two_iterations(tmp_path, guidance):
    cfg = load_config(None, [*TINY, f"teacher.guidance={guidance}", f"run_dir={tmp_path}"])
    last = driver.run(cfg, log=lambda *_: None)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [0, 1, 2]  # the evaluation before training, then two updates
    assert last["rollout/env_steps"] == 12 and last["rollout/policy_version"] == 2
    for key in ("losses/policy", "losses/value", "time/sample", "time/learn", "time/publish", "eval/success"):
        assert key in last
    if guidance == "kl":
        assert "teacher/kl" in last and last["teacher/merged_version"] == 2.0
        assert sorted(p.name for p in (tmp_path / "teacher").glob("*.safetensors")) == [
            "adapter-00000001.safetensors",
            "adapter-00000002.safetensors",
        ]
        assert "eval/teacher_success" in last
    if guidance == "sft":
        assert last["teacher/labels"] >= 0 and "time/score" in last
    if guidance == "none":
        assert "teacher/kl" not in last and not (tmp_path / "teacher").exists()
