"""A run's per-iteration records as gauges of Ray's metrics API, so that Prometheus scrapes the run from Ray's
metrics endpoint beside Ray's own metrics, and docs/grafana/gtr_turbo.json shows it (issue 20).

    record (cluster/metrics.py) -> RayMetrics.write -> Gauge.set in the driver -> the node's metrics agent
    -> http://127.0.0.1:<cluster.metrics_export_port>/metrics as ray_gtr_<name>{run="<run_dir's name>", ...}

Every gauge carries the run's name (its folder's name) as the ``run`` tag, so several runs can share one
Prometheus; ``gtr_phase_seconds`` also carries the phase. A gauge keeps the last value it was given: the
held-out ones show the last evaluation until the next. Ray's agent forgets a gauge value that is not reported
again within two report intervals (10 s each unless ``RAY_metrics_report_interval_ms`` says otherwise) while
an iteration may take minutes, so a thread sets the last values again every half interval until the run's
log closes. Metrics never stop a run: a gauge that cannot be made or set is left out, with one line in the
log. Outside Ray (``cluster.mode=local``) there are none. Ray itself is reached only through cluster/remote.py.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from cluster.metrics import PHASES
from configs import Config
from core import metric_names as names

# (gauge, record key, description); Prometheus shows each as ray_<gauge>.
GAUGES = (
    ("gtr_iteration", names.ITERATION, "iterations done (0: the evaluation before training)"),
    ("gtr_train_success", names.WINDOW_SUCCESS, "training success over the last train.episode_window ended episodes"),
    ("gtr_train_return", names.WINDOW_RETURN, "training return over the last train.episode_window ended episodes"),
    ("gtr_running_share", names.RUNNING_SHARE, "share of the last iteration's episodes still running at its end"),
    ("gtr_eval_success", names.EVAL_SUCCESS, "held-out success of the student, last evaluation"),
    ("gtr_eval_return", names.EVAL_RETURN, "held-out return of the student, last evaluation"),
    ("gtr_eval_teacher_success", names.EVAL_TEACHER_SUCCESS, "held-out success of the merged teacher, last evaluation"),
    ("gtr_eval_teacher_return", names.EVAL_TEACHER_RETURN, "held-out return of the merged teacher, last evaluation"),
    ("gtr_env_steps", names.TOTAL_ENV_STEPS, "env steps sampled so far"),
    ("gtr_iteration_env_steps", names.ENV_STEPS, "env steps sampled in the last iteration"),
    ("gtr_policy_version", names.POLICY_VERSION, "policy version published by the last iteration"),
    ("gtr_teacher_merged_version", names.MERGED_VERSION, "newest policy version in the teacher's merge"),
    ("gtr_teacher_checkpoints", names.TEACHER_CHECKPOINTS, "checkpoints in the teacher's buffer"),
    ("gtr_teacher_kl", names.TEACHER_KL, "KL penalty to the merged teacher (thought tokens), per step"),
    ("gtr_policy_loss", names.POLICY_LOSS, "PPO policy loss"),
    ("gtr_value_loss", names.VALUE_LOSS, "value loss"),
    ("gtr_entropy", names.ENTROPY, "policy entropy"),
    ("gtr_rollout_restarts", names.ROLLOUT_RESTARTS, "rollout actors restarted so far"),
    ("gtr_teacher_restarts", names.TEACHER_RESTARTS, "teacher restarts so far"),
    ("gtr_unguided_iterations", names.UNGUIDED_ITERATIONS, "iterations trained without guidance so far"),
    ("gtr_staleness", names.STALENESS, "mean policy versions between sampling a step and learning it"),
    ("gtr_staleness_max", names.STALENESS_MAX, "most policy versions between sampling a step and learning it"),
    ("gtr_iteration_seconds", names.ITERATION_SECONDS, "seconds of the last iteration, all phases"),
)
PHASE_SECONDS = "gtr_phase_seconds"  # tagged phase=<one of cluster/metrics.py PHASES>
STEPS_PER_SECOND = "gtr_env_steps_per_second"  # the last iteration's env steps / its seconds
DESCRIPTIONS = {gauge: text for gauge, _, text in GAUGES} | {
    PHASE_SECONDS: "seconds of the last iteration's phase",
    STEPS_PER_SECOND: "env steps per second of the last iteration (its env steps / its seconds, all phases)",
}

GaugeFactory = Callable[[str, str, tuple[str, ...]], Any]  # (name, description, tag keys) -> has .set(value, tags)


def gauge_values(record: dict) -> dict[tuple[str, str], float]:
    """(gauge, phase) -> value for what ``record`` holds; phase is "" except for PHASE_SECONDS. Values that
    are not finite numbers are left out (a gauge keeps its last value)."""
    out = {(gauge, ""): record[key] for gauge, key, _ in GAUGES if key in record}
    out |= {(PHASE_SECONDS, phase): record[names.TIME + phase] for phase in PHASES if names.TIME + phase in record}
    seconds = record.get(names.ITERATION_SECONDS, 0.0)
    if names.ENV_STEPS in record and isinstance(seconds, int | float) and seconds > 0:
        out[(STEPS_PER_SECOND, "")] = record[names.ENV_STEPS] / seconds
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float) and math.isfinite(v)}


class RayMetrics:
    """One run's gauges, a RunLog sink: ``write`` each record, ``close`` at the end. ``gauge`` makes a
    gauge (cluster/remote.py ``gauge``; a fake in tests); with ``refresh_seconds`` > 0 the first record
    starts the thread that sets the last values again that often."""

    def __init__(self, run: str, gauge: GaugeFactory, log: Callable[[str], None] = print, refresh_seconds: float = 0):
        self.run, self._make, self.log = run, gauge, log
        self._gauges: dict[str, Any] = {}
        self._dropped: set[str] = set()  # could not be made or set: left out from then on
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # write (the driver's thread) and refresh (ours) both set gauges
        self._stop = threading.Event()
        self._refresh_seconds, self._thread = refresh_seconds, None

    def write(self, record: dict) -> None:
        values = gauge_values(record)
        with self._lock:
            self._last |= values
            self._set(values)
        if self._thread is None and self._refresh_seconds > 0 and not self._stop.is_set():
            self._thread = threading.Thread(target=self._keep_alive, name="gtr-raymetrics", daemon=True)
            self._thread.start()

    def refresh(self) -> None:
        """Set every gauge to its last value again, so Ray's agent keeps showing it."""
        with self._lock:
            self._set(self._last)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def dropped(self) -> set[str]:
        return set(self._dropped)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            self.refresh()

    def _set(self, values: dict[tuple[str, str], float]) -> None:
        for (name, phase), value in values.items():
            gauge = self._gauge(name)
            if gauge is None:
                continue
            try:
                gauge.set(value, tags={"run": self.run} | ({"phase": phase} if phase else {}))
            except Exception as error:  # noqa: BLE001 - a metric never stops a run
                self._drop(name, "set", error)

    def _gauge(self, name: str) -> Any:
        if name in self._dropped:
            return None
        if name not in self._gauges:
            tags = ("run", "phase") if name == PHASE_SECONDS else ("run",)
            try:
                self._gauges[name] = self._make(name, DESCRIPTIONS[name], tags)
            except Exception as error:  # noqa: BLE001 - a metric never stops a run
                self._drop(name, "made", error)
                return None
        return self._gauges[name]

    def _drop(self, name: str, what: str, error: Exception) -> None:
        if not self._dropped:
            self.log(
                f"ray metrics: {name} could not be {what} ({type(error).__name__}: {error}); it is left out of the "
                "run's Ray metrics, as is any other that fails (not logged again)"
            )
        self._dropped.add(name)
        self._gauges.pop(name, None)


def sinks(cfg: Config, run: str, log: Callable[[str], None] = print) -> list[RayMetrics]:
    """The run's RayMetrics when this driver is connected to Ray (``cluster.mode=ray``), else none."""
    if cfg.cluster.mode != "ray":
        return []
    from cluster import remote  # Ray only in Ray mode (remote.py is the one module that imports it)

    if not remote.connected():
        return []
    return [RayMetrics(run, remote.gauge, log, refresh_seconds=remote.metrics_report_seconds() / 2)]
