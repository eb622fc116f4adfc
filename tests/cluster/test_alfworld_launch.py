"""Text ALFWorld end to end through ``cluster.launch`` (issue 18 item 4), on configs/alfworld_kl.yaml made
tiny: SFT warm start on the train split's walkthroughs, two iterations of GTR-Turbo-KL, evaluation of the
student and of the merged teacher on valid_unseen. Marker ``alfworld`` (skipped without the extra); the
local-mode run is in the default tier, the same run through Ray actors is ``ray`` and ``slow``."""

import json
import math
from pathlib import Path

import pytest

from cluster import launch, supervisor
from configs import load_config
from envs.tasks import ALFWORLD
from tests.cluster.tiny import RAY

pytestmark = pytest.mark.alfworld

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "alfworld_kl.yaml"
TASK_TYPE = "pick_and_place_simple"  # the config's one task type

# The shipped config, made tiny: a few SFT steps, 2 iterations of 3 rounds x 2 envs x 2 workers, episodes cut
# at 3 commands (so training episodes end within an iteration), 4 evaluation episodes, the xs model.
TINY_ALFWORLD = [
    "policy.path=embedded:xs",
    "policy.lora_rank=8",
    "policy.lora_alpha=16",
    "policy.max_new_tokens=24",
    "sft.steps=3",
    "sft.batch_size=4",
    "sft.warmup_steps=1",
    "sft.threads=1",
    "env.alfworld.max_actions=3",
    "train.iterations=2",
    "train.rounds=3",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "rollout.num_envs=2",
    "learner.minibatch_size=12",
    "learner.micro_batch_size=6",
    "learner.epochs=1",
    "eval.episodes=4",
    "eval.num_envs=2",
    "cluster.dashboard=false",
]


class Seen:
    """What the driver got back from the roles: each call's episodes, and the sampled transitions."""

    def __init__(self, monkeypatch):
        self.train, self.student, self.teacher, self.transitions = [], [], [], []
        sample, student = supervisor.SampleCall.result, supervisor.Rollouts.start_evaluate
        teacher = supervisor.TeacherProxy.evaluate

        def sampled(call):
            first = call._done is None  # a sample call's result is read more than once
            out = sample(call)
            if first:
                self.train.append([e for b in out.batches for e in b.episodes])
                self.transitions += [t for b in out.batches for t in b.transitions]
            return out

        def evaluated(proxy, episodes):
            each = student(proxy, episodes)
            result = each.result

            def kept():
                self.student.append([e for part, _ in result() for e in part])
                return result()

            each.result = kept
            return each

        def teacher_evaluated(proxy, episodes):
            later = teacher(proxy, episodes)
            if later is not None:
                result = later.result

                def kept():
                    self.teacher.append(result())
                    return self.teacher[-1]

                later.result = kept
            return later

        monkeypatch.setattr(supervisor.SampleCall, "result", sampled)
        monkeypatch.setattr(supervisor.Rollouts, "start_evaluate", evaluated)
        monkeypatch.setattr(supervisor.TeacherProxy, "evaluate", teacher_evaluated)


def _run(tmp_path, monkeypatch, *overrides):
    seen = Seen(monkeypatch)
    lines = []
    cfg = load_config(CONFIG, [*TINY_ALFWORLD, f"run_dir={tmp_path}", *overrides])
    last = launch.run(cfg, log=lines.append)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return cfg, last, lines, records, seen


def _check(cfg, last, lines, records, seen, tmp_path):
    from envs.alfworld import collect_games
    from envs.alfworld_data import split_dir

    assert cfg.env.id == ALFWORLD and cfg.teacher.guidance == "kl" and cfg.env.alfworld.task_types == [TASK_TYPE]
    # The SFT warm start ran first, on the train split's walkthroughs, and RL started from its checkpoint.
    assert any(line.startswith("warm start: SFT on alfworld/ALFWorld-v0") for line in lines)
    assert (tmp_path / "warm_start" / "checkpoint" / "config.json").is_file()
    assert json.loads((tmp_path / "warm_start" / "sft_summary.json").read_text())["env"] == ALFWORLD
    # The run finished: the evaluation before training, then both iterations, a final checkpoint and summary.
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert last["rollout/policy_version"] == 2 and last["rollout/total_env_steps"] == 2 * 3 * 2 * 2
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter-00000002"
    assert (tmp_path / "summary.md").is_file()
    # The teacher guided both iterations: a KL on the sampled thoughts, from a merge of the run's checkpoints.
    # (Iteration 1's teacher is the warm start itself, as is the student: a KL of about 0.)
    for record in records[1:]:
        assert record["teacher/skipped"] == 0 and math.isfinite(record["teacher/kl"]) and record["teacher/kl"] >= 0
    assert records[2]["teacher/kl"] > 0 and last["teacher/merged_version"] == 2.0
    # Evaluation (before training and at the end, student and teacher) played valid_unseen, walking its
    # games in order; training played the train split.
    eval_games = [path for path, _ in collect_games(split_dir("valid_unseen"), (TASK_TYPE,))][:4]
    assert len(seen.student) == len(seen.teacher) == 2
    for episodes in seen.student + seen.teacher:
        assert [e.game for e in episodes] == eval_games and {e.task_type for e in episodes} == {TASK_TYPE}
    for record in (records[0], records[2]):
        assert record["eval/episodes"] == 4.0 and record["eval/teacher_episodes"] == 4.0
    train_dir = str(split_dir("train")) + "/"
    trained = [e for episodes in seen.train for e in episodes]
    assert trained and all(e.game.startswith(train_dir) and e.task_type == TASK_TYPE for e in trained)
    # The barely trained model writes malformed answers: each costs the format penalty and plays "look".
    assert len(seen.transitions) == 24 and any(not t.valid for t in seen.transitions)
    for t in seen.transitions:
        assert t.format_reward == (5.0 if t.valid else -5.0)
        assert t.action_recovered or t.action == "look"


def test_alfworld_sft_then_gtr_turbo_kl_then_valid_unseen_in_local_mode(tmp_path, monkeypatch):
    _check(*_run(tmp_path, monkeypatch, "cluster.mode=local"), tmp_path)


@pytest.mark.ray
@pytest.mark.slow
def test_alfworld_sft_then_gtr_turbo_kl_then_valid_unseen_on_ray_actors(cluster, tmp_path, monkeypatch):
    cfg, last, lines, records, seen = _run(tmp_path, monkeypatch, *RAY)
    _check(cfg, last, lines, records, seen, tmp_path)
    pids = {line.split()[0] for line in lines if ": pid " in line}
    assert pids == {"rollout-0:", "rollout-1:", "learner:", "teacher:"}
