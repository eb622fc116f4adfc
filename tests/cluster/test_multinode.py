"""A real multi-node Ray cluster on this machine (issue 20): several raylets (``ray.cluster_utils.Cluster``),
each role held to nodes of its own by custom resources, the run's storage a URI that only the driver writes.
The same seed gives the same run as on one node."""

import json

import pytest
import torch

from cluster import launch, remote  # noqa: F401 - remote first: it sets Ray's environment (loopback, no auth)
from configs import load_config
from tests.cluster.tiny import RAY, TINY

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

QUIET = lambda *_: None  # noqa: E731
RUN = [*TINY, *RAY, "train.num_workers=2", "teacher.guidance=kl", "train.iterations=3", "train.eval_every=3"]
PLACED = [
    "cluster.rollout.resources.rollout_node=1",
    "cluster.learner.resources.learner_node=1",
    "cluster.teacher.resources.teacher_node=1",
]
NODES = {"rollout_node": 2, "learner_node": 1, "teacher_node": 1}
SAME = ("rollout/return", "losses/policy", "losses/value", "teacher/kl", "eval/success", "eval/teacher_success")


def _run(location, staging, *extra, hook=None):
    cfg = load_config(None, [*RUN, f"run_dir={location}", f"storage_staging={staging}", *extra])
    return launch.run(cfg, log=QUIET, hook=hook)


@pytest.fixture(scope="module")
def single_node(tmp_path_factory):
    """The same run on a one-node cluster that the run starts and stops itself."""
    folder = tmp_path_factory.mktemp("single")
    _run(folder / "run", folder / "staging")
    return folder / "run"


@pytest.fixture(scope="module")
def nodes(single_node):
    """A head node (the driver) and one node per role, told apart by custom resources; stopped at the end."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for name, amount in NODES.items():
        cluster.add_node(num_cpus=1, resources={name: amount})
    ray.init(address=cluster.address, namespace="tests")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _node_of(handle):
    return ray.get(handle.actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_roles_on_their_own_nodes_give_the_single_node_run(nodes, single_node, tmp_path):
    placed = {}

    def hook(phase, index, trainer):
        if index == 1 and phase == "sample":
            for handle in trainer.system.handles():
                placed[handle.name] = _node_of(handle)

    location = f"file://{tmp_path}/store/run"
    last = _run(location, tmp_path / "staging", *PLACED, hook=hook)
    owner = {n["NodeID"]: next(iter(set(n["Resources"]) & set(NODES)), "head") for n in ray.nodes() if n["Alive"]}
    assert {name: owner[node] for name, node in placed.items()} == {
        "rollout-0": "rollout_node",
        "rollout-1": "rollout_node",
        "learner": "learner_node",
        "teacher": "teacher_node",
    }
    stored = tmp_path / "store" / "run"
    assert last["rollout/policy_version"] == 3 and last["teacher/merged_version"] == 3.0
    one, many = _records(single_node), _records(stored)
    assert [r["iteration"] for r in many] == [0, 1, 2, 3]
    for a, b in zip(one, many, strict=True):
        for key in SAME:
            assert a.get(key) == b.get(key), (a["iteration"], key)
    first = torch.load(single_node / "checkpoints" / "iter-00000003" / "learner.pt", weights_only=False)
    second = torch.load(stored / "checkpoints" / "iter-00000003" / "learner.pt", weights_only=False)
    for key in first["adapter"]:
        assert torch.equal(first["adapter"][key], second["adapter"][key]), key
    assert sorted(p.name for p in (stored / "teacher").glob("*.safetensors")) == [
        f"adapter-0000000{v}.safetensors" for v in (1, 2, 3)
    ]


def _remove_node_of(cluster, handle):
    """Remove the raylet (and every process on it) that holds ``handle``'s actor."""
    node_id = _node_of(handle)
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node)
    return node_id


@pytest.mark.slow  # about 40 s here, as is the teacher's; the learner's node loss stays in the default tier
def test_a_lost_rollout_node_is_survived_on_another(nodes, tmp_path):
    nodes.add_node(num_cpus=1, resources={"rollout_node": 2})  # where the lost actors can go
    removed = []

    def hook(phase, index, trainer):
        if index == 2 and phase == "sample" and not removed:
            removed.append(_remove_node_of(nodes, trainer.system.rollouts[1]))

    location = f"file://{tmp_path}/store/run"
    last = _run(location, tmp_path / "staging", *PLACED, "train.iterations=4", hook=hook)
    assert removed and last["rollout/restarts"] >= 1
    records = _records(tmp_path / "store" / "run")
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["rollout/env_steps"] for r in records[1:]] == [2 * 3 * 4] * 4  # every batch whole, none twice
    assert records[-1]["rollout/total_env_steps"] == 4 * 2 * 3 * 4


@pytest.mark.slow
def test_a_lost_teacher_node_is_rebuilt_on_another_from_the_drivers_copy(nodes, tmp_path):
    nodes.add_node(num_cpus=1, resources={"teacher_node": 1})  # where the new teacher can go
    removed = []

    def hook(phase, index, trainer):
        if index == 2 and phase == "score" and not removed:
            removed.append(_remove_node_of(nodes, trainer.system.teacher))
        if index == 4 and phase == "sample" and trainer.teacher.starting is not None:
            trainer.teacher.starting.result()  # however slow this machine starts an actor, it is back by now

    location = f"file://{tmp_path}/store/run"
    last = _run(location, tmp_path / "staging", *PLACED, "train.iterations=5", "train.eval_every=5", hook=hook)
    assert removed and last["teacher/restarts"] == 1 and last["teacher/unguided_iterations"] >= 1
    assert last["teacher/merged_version"] == 5.0 and last["teacher/checkpoints"] == 5.0  # all of them, none lost
    assert "eval/teacher_success" in last


def test_a_lost_learner_node_stops_the_run_and_it_resumes_from_the_location(nodes, tmp_path):
    removed = []

    def hook(phase, index, trainer):
        if index == 3 and phase == "learn" and not removed:
            removed.append(_remove_node_of(nodes, trainer.system.learner))

    location = f"file://{tmp_path}/store/run"
    extra = [*PLACED, "train.iterations=4", "train.checkpoint_every=2", "train.eval_every=4"]
    with pytest.raises(launch.RunStopped) as stopped:
        _run(location, tmp_path / "staging", *extra, hook=hook)
    assert str(stopped.value).endswith(
        f"Last good checkpoint: {location}/checkpoints/iter-00000002. Resume with: python -m cluster.launch "
        f"--resume {location}"
    )
    nodes.add_node(num_cpus=1, resources={"learner_node": 1})  # a new machine for the learner
    cfg = load_config(tmp_path / "store" / "run" / "config.yaml", [f"storage_staging={tmp_path / 'elsewhere'}"])
    last = launch.run(cfg, resume=True, log=QUIET)
    assert last["rollout/policy_version"] == 4
    records = _records(tmp_path / "store" / "run")
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
