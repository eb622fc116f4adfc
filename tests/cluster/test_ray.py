"""The training loop through real Ray actors (marker ``ray``): placement, faults, and errors that
must come before any actor starts. One local Ray cluster on 127.0.0.1 serves the module and is
stopped at its end."""

import json
import os
import time
import traceback

import pytest

from cluster import launch, remote  # remote first: it sets Ray's environment (loopback, no auth)
from cluster.system import RunStopped
from configs import load_config
from tests.cluster.tiny import RAY, TINY

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _run(tmp_path, *overrides, hook=None):
    lines = []
    cfg = load_config(None, [*TINY, *RAY, f"run_dir={tmp_path}", *overrides])
    last = launch.run(cfg, log=lines.append, hook=hook)
    return last, lines, [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def _live_actors():
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def test_two_iterations_through_ray_actors(cluster, tmp_path):
    last, lines, records = _run(tmp_path, "train.num_workers=2", "teacher.guidance=kl")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert last["rollout/env_steps"] == 2 * 3 * 4 and last["rollout/policy_version"] == 2
    assert last["teacher/merged_version"] == 2.0 and "eval/teacher_success" in last
    # Four actors, each its own process (not this one), all gone once the run is over.
    pids = {line.split()[0]: int(line.split()[2].rstrip(",")) for line in lines if ": pid " in line}
    assert set(pids) == {"rollout-0:", "rollout-1:", "learner:", "teacher:"}
    assert len(set(pids.values())) == 4 and os.getpid() not in pids.values()
    assert not _live_actors() & {"rollout-0", "rollout-1", "learner", "teacher"}


def test_killed_rollout_actor_and_teacher_mid_run(cluster, tmp_path):
    killed = []

    def hook(phase, index, trainer):
        if index == 2 and phase == "sample":
            ray.kill(trainer.system.rollouts[1].actor)  # its sample call fails: a new one redoes it
            killed.append("rollout-1")
        if index == 2 and phase == "score":
            ray.kill(trainer.system.teacher.actor)  # scoring fails: rebuilt from the buffer on disk
            killed.append("teacher")
        if index == 4 and phase == "sample" and trainer.teacher.starting is not None:
            trainer.teacher.starting.result()  # however slow this machine starts an actor, it is back by now

    last, lines, records = _run(
        tmp_path, "train.num_workers=2", "teacher.guidance=kl", "train.iterations=5", "train.eval_every=0", hook=hook
    )
    assert killed == ["rollout-1", "teacher"]
    trained = records[1:]
    assert [r["iteration"] for r in trained] == [1, 2, 3, 4, 5]
    assert all(r["rollout/env_steps"] == 24 for r in trained)  # every iteration's batch accounted for
    assert last["rollout/total_env_steps"] == 5 * 24 and last["rollout/policy_version"] == 5
    assert last["rollout/restarts"] == 1 and last["teacher/restarts"] == 1
    assert trained[1]["teacher/skipped"] == 1 and trained[0]["teacher/skipped"] == 0
    assert trained[-1]["teacher/skipped"] == 0  # guidance came back
    assert last["teacher/unguided_iterations"] == sum(r["teacher/skipped"] for r in trained) >= 1
    assert last["teacher/merged_version"] == 5.0  # the rebuilt teacher got every checkpoint
    assert len(list((tmp_path / "teacher").glob("adapter-*.safetensors"))) == 5
    assert any("rebuilding the teacher" in line for line in lines)


def test_asynchronous_loop_through_ray_actors_survives_killed_actors(cluster, tmp_path):
    """max_staleness=1: the rollout actors sample the next batch while the learner learns. Killing one while
    that batch is under way replaces it, and the batch is redone: none lost, none older than the bound. A
    teacher killed mid-run is rebuilt from its buffer as in the synchronous loop."""
    killed = []

    def hook(phase, index, trainer):
        if index == 2 and phase == "learn":  # batch 3 is being sampled beside this update
            ray.kill(trainer.system.rollouts[1].actor)
            killed.append("rollout-1")
        if index == 3 and phase == "learn":  # the teacher dies between scoring and its next checkpoint
            ray.kill(trainer.system.teacher.actor)
            killed.append("teacher")

    last, lines, records = _run(
        tmp_path,
        "train.num_workers=2",
        "teacher.guidance=kl",
        "train.iterations=4",
        "train.max_staleness=1",
        hook=hook,
    )
    assert killed == ["rollout-1", "teacher"]
    trained = records[1:]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    assert all(r["rollout/env_steps"] == 24 for r in trained)
    assert [r["rollout/staleness_max"] for r in trained][:2] == [0.0, 1.0]
    assert all(r["rollout/staleness_max"] <= 1 for r in trained)
    assert last["rollout/restarts"] == 1 and last["rollout/total_env_steps"] == 4 * 24
    assert last["teacher/restarts"] == 1 and last["teacher/unguided_iterations"] >= 1
    assert "eval/success" in records[2] and "eval/success" in records[4]
    assert any("rebuilding the teacher" in line for line in lines)


def test_learner_failure_stops_the_run_naming_the_last_checkpoint(cluster, tmp_path):
    def hook(phase, index, trainer):
        if index == 2 and phase == "learn":
            ray.kill(trainer.system.learner.actor)

    with pytest.raises(RunStopped) as stopped:
        _run(tmp_path, "train.checkpoint_every=1", "train.iterations=3", hook=hook)
    message = str(stopped.value)
    assert "learner failed" in message and "iter-00000001" in message and f"--resume {tmp_path}" in message
    assert (tmp_path / "summary.md").is_file()  # what was done is written up
    assert not _live_actors() & {"rollout-0", "learner", "teacher"}


def test_a_programming_error_inside_an_actor_stops_the_run_and_restarts_nothing(cluster, tmp_path):
    """A call the teacher actor cannot take (None for its batch: an error raised in the actor's process) is
    not an infrastructure failure: the run stops with the actor's traceback and no teacher is rebuilt."""

    def hook(phase, index, trainer):
        if index == 2 and phase == "score":
            handle = trainer.teacher.handle
            call = handle.call
            handle.call = lambda method, *args: call(method, None) if method == "logprobs" else call(method, *args)

    lines = []
    cfg = load_config(None, [*TINY, *RAY, f"run_dir={tmp_path}", "teacher.guidance=kl", "train.iterations=3"])
    with pytest.raises(RunStopped) as stopped:
        launch.run(cfg, log=lines.append, hook=hook)
    message = str(stopped.value)
    assert message.startswith("teacher failed in logprobs (AttributeError: ")
    assert "not an infrastructure failure" in message and f"--resume {tmp_path}" in message
    shown = "".join(traceback.format_exception(stopped.value.__cause__))  # what `launch.main` prints
    assert "ray::TeacherRole.logprobs()" in shown and 'roles.py", line' in shown  # the actor's own traceback
    assert not any("rebuilding the teacher" in str(line) for line in lines)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]  # iteration 2 never finished
    assert not _live_actors() & {"rollout-0", "learner", "teacher"}


def test_impossible_resources_fail_before_any_actor_starts(cluster, tmp_path):
    before = _live_actors()
    with pytest.raises(launch.SetupError, match=r"1 rollout actors x cluster.rollout.num_gpus=1"):
        _run(tmp_path, "cluster.rollout.num_gpus=1")
    with pytest.raises(launch.SetupError, match=r"cluster.learner.num_cpus"):
        _run(tmp_path, "cluster.learner.num_cpus=3")  # more than the whole cluster's 2 CPUs
    assert _live_actors() == before and not (tmp_path / "metrics.jsonl").exists()


def test_check_resources_names_what_does_not_fit():
    node = {"CPU": 16.0, "GPU": 2.0}
    shared = load_config(None, ["train.num_workers=2", "cluster.rollout.num_gpus=0.5", "cluster.teacher.num_gpus=1"])
    remote.check_resources(shared, node, [node])  # 0.5 + 0.5 + 0 + 1 = 2 GPUs: fits
    greedy = load_config(None, ["train.num_workers=2", "cluster.rollout.num_gpus=1", "cluster.teacher.num_gpus=1"])
    with pytest.raises(remote.ResourceError, match="ask for 3 GPUs in all .* but the Ray cluster has 2"):
        remote.check_resources(greedy, node, [node])
    big = load_config(None, ["cluster.learner.num_gpus=2"])  # 2 GPUs in the cluster, but one per node
    with pytest.raises(remote.ResourceError, match="learner asks for 1 CPUs and 2 GPUs"):
        remote.check_resources(big, node, [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    placed = load_config(None, ["cluster.learner.resources.learner_node=1"])  # a custom resource no node offers
    with pytest.raises(remote.ResourceError, match=r"learner asks for \{'learner_node': 1.0\} \(cluster.learner.reso"):
        remote.check_resources(placed, node, [node])
    remote.check_resources(placed, node, [node, {"CPU": 1.0, "learner_node": 1.0}])


def test_a_method_that_raises_is_a_role_failure_and_a_killed_actor_died(cluster):
    """What the driver sees from a Ray actor: RoleFailed (method raised, actor alive), recoverable only for
    an infrastructure failure (classified by the original error inside Ray's RayTaskError), or ActorDied."""
    from cluster.system import ActorDied, RoleFailed

    @ray.remote(num_cpus=0)
    class Flaky:
        def fail(self, kind):
            raise {"value": ValueError, "memory": MemoryError, "io": OSError}[kind]("bad checkpoint file")

        def fine(self):
            return 7

    handle = remote.RayHandle("flaky", Flaky.remote())
    with pytest.raises(RoleFailed, match=r"flaky failed in fail \(ValueError: bad checkpoint file\)") as failed:
        handle.call("fail", "value").result()
    assert not failed.value.recoverable and ", in fail" in str(failed.value.__cause__)  # the actor's traceback
    for kind in ("memory", "io"):
        with pytest.raises(RoleFailed) as failed:
            handle.call("fail", kind).result()
        assert failed.value.recoverable, kind
    assert handle.call("fine").result() == 7  # still alive
    ray.kill(handle.actor)  # takes effect shortly: a call in between may still be answered
    deadline = time.monotonic() + 30
    while True:
        try:
            handle.call("fine").result()
        except ActorDied as error:
            assert "actor flaky died" in str(error) and error.recoverable
            break
        assert time.monotonic() < deadline, "the killed actor still answers"
        time.sleep(0.1)
