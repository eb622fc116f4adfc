"""The README's commands for a Ray cluster of one's own, run as written (marker ``ray``): start the head and a
second node, ``ray job submit`` a short run whose roles are placed on the second node and whose storage is a
URI, Ctrl-C both. Only the ports differ (free ones) and the job's config (a tiny run); the shell has neither
the venv on its PATH nor Ray's variables (cluster/remote.py's RAY_ENV), so the commands alone must put every
port on 127.0.0.1 and give the job the project's python."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from cluster.reaper import alive
from cluster.remote import RAY_ENV
from tests.cluster.tiny import RAY, TINY

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
SECTION = "## Training: `python -m cluster.launch`"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def readme_commands() -> list[list[str]]:
    """Each command in the README section's bash blocks, as argv (continuation lines joined, comments dropped)."""
    section = (REPO / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith("bash")]
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [argv for argv in (shlex.split(line, comments=True) for line in lines) if argv]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_shell() -> dict[str, str]:
    """This environment without Ray's variables and without the venv on PATH."""
    venv_bin = Path(sys.executable).parent.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and Path(p).resolve() != venv_bin)
    return env


def _wait_for_dashboard(head: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                return
        except OSError:
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


def _listening(processes) -> set[tuple[str, str, int]]:
    """(process, address, port) of each listening TCP socket of ``processes``."""
    found = set()
    for process in processes:
        try:
            name = " ".join(process.cmdline())[:80]
            for c in process.net_connections("tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    return found


def test_readme_head_and_job_submit_as_written(tmp_path):
    commands = readme_commands()
    heads = [argv for argv in commands if argv[0].endswith("ray_head.sh") or {"start", "--head"} <= set(argv)]
    workers = [argv for argv in commands if argv[0].endswith("ray_worker.sh")]
    submits = [argv for argv in commands if "job" in argv and "submit" in argv]
    assert len(heads) == len(workers) == len(submits) == 1, f"the README should give a head, worker, submit: {commands}"
    if heads[0][0].endswith(".sh"):  # the script sets what a cluster the launcher starts gets
        script = (REPO / heads[0][0]).read_text()
        assert all(f"{k}={v}" in script for k, v in RAY_ENV.items()), f"{heads[0][0]} should set {RAY_ENV}"

    gcs, dashboard, agent, client, worker_agent = (_free_port() for _ in range(5))
    head_argv = [*heads[0], f"--port={gcs}", f"--dashboard-port={dashboard}"]
    head_argv += [f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}"]
    worker_argv = [arg.replace(":6379", f":{gcs}") for arg in workers[0]]
    worker_argv += [f"--dashboard-agent-listen-port={worker_agent}"]
    submit, entry = submits[0][: submits[0].index("--")], submits[0][submits[0].index("--") + 1 :]
    submit = [arg.replace(":8265", f":{dashboard}") for arg in submit]
    placed = [arg for arg in entry if arg.startswith("cluster.") and ".resources." in arg]
    assert len(placed) == 3, entry  # the rollout actors, the learner and the teacher, on the second node
    location = next(arg for arg in entry if arg.startswith("run_dir=")).split("=", 1)[1]
    assert location.startswith("file:///"), location  # a URI: only the driver writes it
    location = f"file://{tmp_path}/store/run"
    entry = [*entry[: entry.index("cluster.launch") + 1], *TINY, *RAY, "teacher.guidance=kl", *placed]
    entry += [f"run_dir={location}", f"storage_staging={tmp_path / 'staging'}"]
    assert entry[0] == "python", entry  # found on the head's PATH, which the README's command must set

    env, head_log = _bare_shell(), tmp_path / "head.log"
    with open(head_log, "w") as out:
        head = subprocess.Popen(head_argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seen: set[psutil.Process] = set()
    on_worker: set[psutil.Process] = set()
    titles: dict[psutil.Process, str] = {}
    worker = None
    try:
        _wait_for_dashboard(head, dashboard, head_log)  # the head stays in the foreground, as the README says
        with open(tmp_path / "worker.log", "w") as out:
            worker = subprocess.Popen(worker_argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _wait_for_nodes(2, dashboard, worker, tmp_path / "worker.log")
        with open(tmp_path / "submit.log", "w") as out:
            job = subprocess.Popen([*submit, "--", *entry], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        sockets = set()
        while job.poll() is None:  # the job's processes too: its driver and actors are the raylets'
            on_worker |= _tree(worker)
            seen |= _tree(head) | on_worker
            sockets |= _listening(seen)
            titles |= {p: title for p in seen if (title := _title(p))}  # a worker's title names its actor
            time.sleep(0.5)
        output = (tmp_path / "submit.log").read_text()
        assert job.returncode == 0, output[-3000:]
        assert "succeeded" in output and "ray cluster (joined)" in output
        stored = tmp_path / "store" / "run"
        records = [json.loads(x) for x in (stored / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [0, 1, 2]
        assert (stored / "checkpoints" / "iter-00000002" / "manifest.json").is_file()
        assert (stored / "summary.md").is_file()
        roles = {_role(titles.get(p, "")) for p in on_worker} - {None}
        assert roles == {"RolloutRole", "LearnerRole", "TeacherRole"}, roles  # every role on the second node
        assert not {_role(titles.get(p, "")) for p in seen - on_worker} - {None}, "no role should run on the head"
        ports = {port for _, _, port in sockets}
        assert {gcs, dashboard, agent, client, worker_agent} <= ports, sorted(sockets)
        assert all(address in LOOPBACK for _, address, _ in sockets), sorted(s for s in sockets if s[1] not in LOOPBACK)
        print(f"{len(sockets)} listening sockets of {len(seen)} processes on two nodes, all on 127.0.0.1")
        _stop(worker, on_worker)
        _stop(head, seen)
        assert not [p for p in seen if alive(p)], "Ctrl-C should stop the whole cluster"
    finally:  # this cluster's processes only: never `ray stop`, which ends every Ray cluster on the machine
        if worker is not None:
            on_worker |= _tree(worker)
            _stop(worker, on_worker)
        seen |= _tree(head) | on_worker
        _stop(head, seen)
        for process in seen:
            if alive(process):
                process.kill()


def _wait_for_nodes(count: int, port: int, worker: subprocess.Popen, log: Path) -> None:
    """Until the head's dashboard lists ``count`` live nodes."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/nodes?view=summary", timeout=5) as reply:
                summary = json.loads(reply.read())["data"]["summary"]
            if sum(node.get("raylet", {}).get("state") == "ALIVE" for node in summary) >= count:
                return
        except (OSError, KeyError, ValueError):
            pass
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _role(title: str) -> str | None:
    """The role class a Ray worker process runs (its title is ``ray::<Class>...``), if any."""
    return next((role for role in ("RolloutRole", "LearnerRole", "TeacherRole") if f"ray::{role}" in title), None)


def _tree(head: subprocess.Popen) -> set[psutil.Process]:
    try:
        return set(psutil.Process(head.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def _stop(head: subprocess.Popen, processes: set[psutil.Process]) -> None:
    """The README's Ctrl-C, and up to 15 s for every one of ``processes`` to end."""
    head.send_signal(signal.SIGINT)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    deadline = time.monotonic() + 15
    while any(alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
