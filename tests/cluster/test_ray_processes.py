"""A Ray cluster the launcher starts is gone seconds after the launcher ends, even by SIGKILL, and
another cluster on the machine is left alone (marker ``ray``; cluster/reaper.py says why Ray alone is
not enough: its agents outlive a killed driver by 60 s or more)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.reaper import alive
from tests.cluster.tiny import RAY, TINY

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe(processes) -> str:
    rows = []
    for p in processes:
        try:
            rows.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            rows.append(f"{p.pid} (gone)")
    return "\n".join(rows)


def _launch_until_training(run_dir: Path, *overrides: str) -> tuple[subprocess.Popen, dict[psutil.Process, list[str]]]:
    """Start the launcher with its own Ray cluster; return it once it trains, with every process it
    started by then (looked at every 0.2 s: Ray's agents and workers are the raylet's children, which
    a killed driver's tree no longer shows) and the command lines each one had."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # start a cluster, join none
    args = [*TINY, *RAY, "train.iterations=50", f"run_dir={run_dir}", *overrides]
    with open(run_dir.with_suffix(".log"), "w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "cluster.launch", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    driver, seen = psutil.Process(launcher.pid), {}
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists():  # written after iteration 0: every actor is up
        assert launcher.poll() is None and time.monotonic() < deadline, run_dir.with_suffix(".log").read_text()[-3000:]
        for process in driver.children(recursive=True):
            try:  # each name it had: Ray's processes rename themselves (ray::DashboardAgent, ray::IDLE)
                names, name = seen.setdefault(process, []), " ".join(process.cmdline()).strip()
                if name not in names[-1:]:
                    names.append(name)
            except psutil.Error:
                pass
        time.sleep(0.2)
    return launcher, seen


def _kill_and_wait(launcher: subprocess.Popen, processes) -> tuple[float, list[psutil.Process]]:
    """SIGKILL the launcher; seconds until all ``processes`` ended, and those left after GONE_WITHIN_S."""
    launcher.kill()
    launcher.wait()
    began = time.monotonic()
    left = [p for p in processes if alive(p)]
    while left and time.monotonic() - began < GONE_WITHIN_S:
        time.sleep(0.2)
        left = [p for p in left if alive(p)]
    return time.monotonic() - began, left


@pytest.mark.parametrize("dashboard", [True, False], ids=["dashboard", "no-dashboard"])
def test_cluster_is_gone_seconds_after_sigkill_of_the_launcher(cluster, tmp_path, dashboard):
    bystanders = [p for p in psutil.Process().children(recursive=True) if alive(p)]  # the fixture's cluster
    port = _free_port()
    launcher, seen = _launch_until_training(
        tmp_path / "run", f"cluster.dashboard={str(dashboard).lower()}", f"cluster.dashboard_port={port}"
    )
    try:
        names = set().union(*seen.values())
        titles = sorted(name for name in names if name.startswith("ray::"))
        assert any("raylet" in name for name in names), names
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, titles
        assert any("LearnerRole" in name for name in titles), titles  # an actor, not only Ray's own
        if not dashboard:
            # Ray 2.60 keeps two processes named for the dashboard even with include_dashboard=False: the
            # head's API server (dashboard.py, no web UI, only its usage-stats module; Node.start_head_processes
            # always starts it) and the raylet's dashboard agent (the raylet exits if it does).
            dashboards = sorted(n[-1] for n in seen.values() if "dashboard" in n[-1].split(" --")[0].lower())
            assert len(dashboards) == 2 and dashboards[1] == "ray::DashboardAgent", dashboards
            assert (
                "dashboard.py" in dashboards[0]
                and "--modules-to-load=UsageStatsHead --disable-frontend" in dashboards[0]
            )
            assert not any(c.laddr.port == port for c in psutil.net_connections("tcp") if c.status == "LISTEN")
        took, left = _kill_and_wait(launcher, seen)
        assert not left, f"alive {GONE_WITHIN_S:g} s after the launcher's SIGKILL:\n{_describe(left)}"
        print(f"{len(seen)} processes, all gone {took:.1f} s after the SIGKILL")
        # Another cluster on the machine (this process's) is untouched.
        assert all(alive(p) for p in bystanders), _describe(p for p in bystanders if not alive(p))
        assert ray.get(ray.remote(lambda: os.getpid()).options(num_cpus=0).remote()) != os.getpid()
    finally:
        launcher.kill()
        for process in seen:
            if alive(process):
                process.kill()  # never leave a test's processes behind, even when it failed


NORMAL_EXIT = """
import os, sys, time
from cluster import remote
from configs import load_config

spawner = remote.start(load_config(None, sys.argv[1:]), "test-normal-exit")
print("a task ran in", spawner.run("learner", lambda: os.getpid()), flush=True)
spawner.shutdown()
print("shut down", flush=True)
time.sleep(60)
"""


def test_shutdown_leaves_nothing(tmp_path):
    """The usual way out (ray.shutdown, then the reaper): nothing is left once ``shutdown`` returns,
    while the driver lives on."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-c", NORMAL_EXIT, *TINY, *RAY], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    seen = set()
    try:
        deadline = time.monotonic() + 120
        while "shut down" not in log.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            seen |= set(psutil.Process(driver.pid).children(recursive=True))
            time.sleep(0.2)
        left = [p for p in seen if alive(p)]
        assert "a task ran in" in log.read_text() and len(seen) > 5 and not left, _describe(left)
    finally:
        driver.kill()
        for process in seen:
            if alive(process):
                process.kill()


def test_sigterm_of_the_launcher_ends_in_one_line_and_its_cluster_is_gone(tmp_path):
    """``ray job stop`` and ``kill`` send SIGTERM: exit 143 with the resume line, though ray.init puts a
    handler of its own (an abort) in place of the launcher's."""
    run_dir = tmp_path / "run"
    launcher, seen = _launch_until_training(run_dir)
    try:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 143, run_dir.with_suffix(".log").read_text()[-3000:]
        lines = run_dir.with_suffix(".log").read_text().strip().splitlines()
        assert lines[-1].startswith("run stopped: terminated (SIGTERM). Last good checkpoint: ")
        assert lines[-1].endswith(f"Resume with: python -m cluster.launch --resume {run_dir}")
        deadline = time.monotonic() + GONE_WITHIN_S
        while (left := [p for p in seen if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, _describe(left)
    finally:
        launcher.kill()
        for process in seen:
            if alive(process):
                process.kill()
