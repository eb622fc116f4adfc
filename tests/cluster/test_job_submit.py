"""The README's commands for a Ray cluster of one's own, run as written (marker ``ray``): start the head,
``ray job submit`` a short run, Ctrl-C the head. Only the ports differ (free ones) and the job's config
(a tiny run); the shell has neither the venv on its PATH nor Ray's variables (cluster/remote.py's RAY_ENV),
so the commands alone must put every port on 127.0.0.1 and give the job the project's python."""

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
    submits = [argv for argv in commands if "job" in argv and "submit" in argv]
    assert len(heads) == 1 and len(submits) == 1, f"the README should give one head and one submit command: {commands}"
    if heads[0][0].endswith(".sh"):  # the script sets what a cluster the launcher starts gets
        script = (REPO / heads[0][0]).read_text()
        assert all(f"{k}={v}" in script for k, v in RAY_ENV.items()), f"{heads[0][0]} should set {RAY_ENV}"

    gcs, dashboard, agent, client = (_free_port() for _ in range(4))
    head_argv = [*heads[0], f"--port={gcs}", f"--dashboard-port={dashboard}"]
    head_argv += [f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}"]
    submit, entry = submits[0][: submits[0].index("--")], submits[0][submits[0].index("--") + 1 :]
    submit = [arg.replace(":8265", f":{dashboard}") for arg in submit]
    run_dir = tmp_path / "run"  # absolute: the job runs in a copy of the working dir
    entry = [*entry[: entry.index("cluster.launch") + 1], *TINY, *RAY, f"run_dir={run_dir}"]
    assert entry[0] == "python", entry  # found on the head's PATH, which the README's command must set

    env, head_log = _bare_shell(), tmp_path / "head.log"
    with open(head_log, "w") as out:
        head = subprocess.Popen(head_argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seen: set[psutil.Process] = set()
    try:
        _wait_for_dashboard(head, dashboard, head_log)  # the head stays in the foreground, as the README says
        with open(tmp_path / "submit.log", "w") as out:
            job = subprocess.Popen([*submit, "--", *entry], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        sockets = set()
        while job.poll() is None:  # the job's processes too: its driver and actors are the raylet's
            seen |= _tree(head)
            sockets |= _listening(seen)
            time.sleep(0.5)
        output = (tmp_path / "submit.log").read_text()
        assert job.returncode == 0, output[-3000:]
        assert "succeeded" in output and "ray cluster (joined)" in output
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [0, 1, 2]
        ports = {port for _, _, port in sockets}
        assert {gcs, dashboard, agent, client} <= ports, sorted(sockets)
        assert all(address in LOOPBACK for _, address, _ in sockets), sorted(s for s in sockets if s[1] not in LOOPBACK)
        print(f"{len(sockets)} listening sockets of {len(seen)} processes, all on 127.0.0.1")
        _stop(head, seen)
        assert not [p for p in seen if alive(p)], "Ctrl-C should stop the whole cluster"
    finally:  # this cluster's processes only: never `ray stop`, which ends every Ray cluster on the machine
        seen |= _tree(head)
        _stop(head, seen)
        for process in seen:
            if alive(process):
                process.kill()


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
