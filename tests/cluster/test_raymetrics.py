"""Training in the Ray dashboard (issue 20): each record's metrics as gauges of Ray's metrics API, found at
Ray's Prometheus endpoint, and the roles' reprs. The first tests need no Ray (a fake gauge factory); the last
runs two iterations through Ray actors (marker ``ray``) on a cluster of its own, with its metrics port."""

import json
import math
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from cluster import launch, raymetrics
from cluster.raymetrics import PHASE_SECONDS, STEPS_PER_SECOND, RayMetrics, gauge_values
from cluster.runlog import RunLog
from configs import load_config
from core import metric_names as names
from tests.cluster.tiny import RAY, TINY


class FakeGauge:
    def __init__(self, name, description, tag_keys, fail=False):
        self.name, self.description, self.tag_keys, self.fail = name, description, tag_keys, fail
        self.values: dict[tuple, float] = {}  # sorted tags -> last value
        self.sets = 0

    def set(self, value, tags):
        if self.fail:
            raise TypeError("cannot set")
        assert set(tags) == set(self.tag_keys)
        self.values[tuple(sorted(tags.items()))] = value
        self.sets += 1


class FakeFactory:
    def __init__(self, unmakeable=(), unsettable=()):
        self.unmakeable, self.unsettable = set(unmakeable), set(unsettable)
        self.gauges: dict[str, FakeGauge] = {}

    def __call__(self, name, description, tag_keys):
        if name in self.unmakeable:
            raise ValueError("no such gauge")
        self.gauges[name] = FakeGauge(name, description, tag_keys, fail=name in self.unsettable)
        return self.gauges[name]

    def value(self, name, **tags):
        return self.gauges[name].values[tuple(sorted(({"run": "r"} | tags).items()))]


RECORD = {
    names.ITERATION: 2,
    names.ENV_STEPS: 24,
    names.TOTAL_ENV_STEPS: 48,
    names.POLICY_VERSION: 2,
    names.WINDOW_SUCCESS: 0.25,
    names.TEACHER_KL: 0.5,
    names.ROLLOUT_RESTARTS: 1,
    names.UNGUIDED_ITERATIONS: 1,
    names.EVAL_SUCCESS: 0.75,
    names.POLICY_LOSS: math.nan,  # not exported: a gauge keeps its last value
    names.TIME + "sample": 3.0,
    names.TIME + "learn": 9.0,
    names.ITERATION_SECONDS: 12.0,
    "rollout/not_exported": 7.0,
}


def test_a_record_becomes_gauges_tagged_with_the_run():
    assert gauge_values(RECORD) == {
        ("gtr_iteration", ""): 2.0,
        ("gtr_iteration_env_steps", ""): 24.0,
        ("gtr_env_steps", ""): 48.0,
        ("gtr_policy_version", ""): 2.0,
        ("gtr_train_success", ""): 0.25,
        ("gtr_teacher_kl", ""): 0.5,
        ("gtr_rollout_restarts", ""): 1.0,
        ("gtr_unguided_iterations", ""): 1.0,
        ("gtr_eval_success", ""): 0.75,
        (PHASE_SECONDS, "sample"): 3.0,
        (PHASE_SECONDS, "learn"): 9.0,
        ("gtr_iteration_seconds", ""): 12.0,
        (STEPS_PER_SECOND, ""): 2.0,  # 24 env steps in 3 + 9 = 12 s
    }
    fake = FakeFactory()
    metrics = RayMetrics("r", fake)
    metrics.write(RECORD)
    assert fake.value("gtr_policy_version") == 2.0 and fake.value(STEPS_PER_SECOND) == 2.0
    assert fake.value(PHASE_SECONDS, phase="learn") == 9.0 and fake.gauges[PHASE_SECONDS].tag_keys == ("run", "phase")
    # The next record without an evaluation leaves the last one's held-out success in place.
    metrics.write({names.ITERATION: 3, names.POLICY_VERSION: 3})
    assert fake.value("gtr_policy_version") == 3.0 and fake.value("gtr_eval_success") == 0.75


def test_a_gauge_that_cannot_be_made_or_set_is_left_out_with_one_line():
    lines = []
    fake = FakeFactory(unmakeable={"gtr_teacher_kl"}, unsettable={"gtr_policy_version"})
    metrics = RayMetrics("r", fake, log=lines.append)
    metrics.write(RECORD)
    metrics.write(RECORD)
    assert metrics.dropped == {"gtr_teacher_kl", "gtr_policy_version"}
    assert len(lines) == 1 and "left out" in lines[0]
    assert fake.value("gtr_env_steps") == 48.0  # the others are set
    assert fake.gauges["gtr_policy_version"].sets == 0


def test_the_last_values_are_set_again_until_closed():
    """Ray's agent forgets a gauge value that is not reported again within two report intervals."""
    fake = FakeFactory()
    metrics = RayMetrics("r", fake, refresh_seconds=0.01)
    metrics.write(RECORD)
    deadline = time.monotonic() + 10
    while fake.gauges["gtr_policy_version"].sets < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.gauges["gtr_policy_version"].sets >= 3
    metrics.close()
    assert not any(t.name == "gtr-raymetrics" for t in threading.enumerate())
    sets = fake.gauges["gtr_policy_version"].sets
    time.sleep(0.05)
    assert fake.gauges["gtr_policy_version"].sets == sets


class Sink:
    def __init__(self):
        self.records, self.closed = [], False

    def write(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


def test_the_run_log_feeds_its_sinks_and_closes_them(tmp_path):
    sink = Sink()
    runlog = RunLog(tmp_path, log=lambda line: None, sinks=[sink])
    record = {names.ITERATION: 1, names.TOTAL_ENV_STEPS: 24, names.POLICY_VERSION: 1}
    runlog.write(record)
    assert sink.records == [record] and not sink.closed
    runlog.close()
    assert sink.closed


def test_the_grafana_dashboard_shows_only_gauges_that_are_exported():
    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana" / "gtr_turbo.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    shown = {name for expr in exprs for name in re.findall(r"ray_(gtr_\w+)", expr)}
    exported = {gauge for gauge, _, _ in raymetrics.GAUGES} | {PHASE_SECONDS, STEPS_PER_SECOND}
    assert shown <= exported and {"gtr_policy_version", "gtr_eval_success", PHASE_SECONDS} <= shown
    assert all('run=~"$run"' in expr for expr in exprs)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "run"}


def test_no_ray_metrics_in_local_mode():
    assert raymetrics.sinks(load_config(None, ["cluster.mode=local"]), "r") == []


def test_the_roles_reprs_say_what_they_are_doing(capsys):
    """Ray shows an actor's repr on the dashboard's Actors page, as read once after ``__init__``, and in the
    prefix of its log lines, which a role keeps current in Ray mode by announcing each change of state."""
    from cluster.roles import LearnerRole, RolloutRole, TeacherRole

    cfg = load_config(None, [*TINY, "cluster.mode=local", "teacher.guidance=kl"])
    rollout, learner, teacher = (
        RolloutRole(cfg, "cpu", 1, incarnation=1),
        LearnerRole(cfg, "cpu"),
        TeacherRole(cfg, "cpu"),
    )
    assert repr(rollout) == "RolloutRole(worker 1, restart 1, v0, 0 env steps, new)"
    assert repr(learner) == "LearnerRole(v0, 0 updates, new)"
    assert repr(teacher) == "TeacherRole(merged v0, 0 checkpoints, new)"
    during = []
    sample = rollout.worker.sample
    rollout.worker.sample = lambda rounds: during.append(repr(rollout)) or sample(rounds)
    batch = rollout.sample(2)
    assert during == ["RolloutRole(worker 1, restart 1, v0, 0 env steps, sampling)"]
    assert repr(rollout) == "RolloutRole(worker 1, restart 1, v0, 8 env steps, idle)"  # 2 rounds x 4 envs
    learner.update(None, None, batch)
    version, adapter = learner.publish()
    rollout.load_adapter(adapter, version)
    teacher.add_checkpoint(adapter, version)
    assert repr(learner) == "LearnerRole(v1, 1 updates, idle)"
    assert repr(rollout).startswith("RolloutRole(worker 1, restart 1, v1, ")
    assert repr(teacher) == "TeacherRole(merged v1, 1 checkpoints, idle)"
    assert capsys.readouterr().out == ""  # local mode: nothing for Ray's log monitor
    rollout.announce = True  # as in a Ray actor
    rollout.sample(1)
    out, err = capsys.readouterr()
    assert (
        out
        == err
        == (
            ":actor_name:RolloutRole(worker 1, restart 1, v1, 8 env steps, sampling)\n"
            ":actor_name:RolloutRole(worker 1, restart 1, v1, 12 env steps, idle)\n"
        )
    )
    rollout.worker.sample = lambda rounds: 1 / 0
    with pytest.raises(ZeroDivisionError):
        rollout.sample(1)
    assert repr(rollout).endswith("sampling)")  # what it was doing when it failed: Ray's error shows the repr
    teacher.close()


# ---------------------------------------------------------------------------------------- through Ray


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_cluster():
    """A local Ray cluster of this module's own, its Prometheus endpoint on a port from the config, and
    metrics reported every second (Ray's default: 10 s)."""
    from cluster import remote  # before Ray is first imported: it sets Ray's environment (loopback, no auth)

    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_metrics_report_interval_ms", "1000")  # read when Ray starts, here and in its processes
        cfg = load_config(None, [*TINY, *RAY, f"cluster.metrics_export_port={port}"])
        lines = []
        cluster = remote.connect(cfg, "tests-raymetrics", lines.append)
        try:
            yield port, cluster, lines
        finally:
            remote.stop(cluster)


class Scraper:
    """Reads Ray's Prometheus endpoint every 0.2 s and keeps the last value of each gtr_ series of one run."""

    def __init__(self, port: int, run: str):
        from prometheus_client.parser import text_string_to_metric_families

        self.url, self.run, self.parse = f"http://127.0.0.1:{port}/metrics", run, text_string_to_metric_families
        self.last: dict[tuple[str, str], float] = {}  # (name, phase) -> value
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(0.2):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    text = reply.read().decode()
            except OSError:  # the agent is busy: the next read
                continue
            for family in self.parse(text):
                for sample in family.samples:
                    if sample.name.startswith("ray_gtr_") and sample.labels.get("run") == self.run:
                        self.last[(sample.name, sample.labels.get("phase", ""))] = sample.value

    def stop(self) -> dict[tuple[str, str], float]:
        self._stop.set()
        self._thread.join()
        return self.last


@pytest.mark.ray
def test_two_iterations_through_ray_actors_reach_rays_metrics_endpoint(metrics_cluster, tmp_path):
    port, cluster, connect_lines = metrics_cluster
    assert cluster.metrics_url == f"http://127.0.0.1:{port}/metrics" and cluster.metrics_url in connect_lines[-1]
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}  # the endpoint is on the loopback only
    scraper = Scraper(port, tmp_path.name)
    cfg = load_config(None, [*TINY, *RAY, "teacher.guidance=kl", f"run_dir={tmp_path}"])
    lines = []
    last = launch.run(cfg, log=lines.append)
    deadline = time.monotonic() + 10  # reported within a second of being set, kept for two
    while scraper.last.get(("ray_gtr_policy_version", "")) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = scraper.stop()
    assert last[names.POLICY_VERSION] == 2
    assert not [line for line in lines if str(line).startswith("ray metrics:")]  # no gauge was left out
    expected = {
        "ray_gtr_policy_version": 2.0,
        "ray_gtr_env_steps": 2 * 3 * 4,  # 2 iterations x 3 rounds x 4 envs
        "ray_gtr_teacher_merged_version": 2.0,
        "ray_gtr_teacher_kl": last[names.TEACHER_KL],
        "ray_gtr_train_success": last[names.WINDOW_SUCCESS],
        "ray_gtr_eval_success": last[names.EVAL_SUCCESS],
        "ray_gtr_eval_teacher_success": last[names.EVAL_TEACHER_SUCCESS],
        "ray_gtr_rollout_restarts": 0.0,
        "ray_gtr_teacher_restarts": 0.0,
        "ray_gtr_unguided_iterations": 0.0,
        "ray_gtr_env_steps_per_second": last[names.ENV_STEPS] / last[names.ITERATION_SECONDS],
    }
    assert {name: seen.get((name, "")) for name in expected} == pytest.approx(expected, rel=1e-6)
    assert seen[("ray_gtr_phase_seconds", "sample")] == pytest.approx(last[names.TIME + "sample"], rel=1e-6)
