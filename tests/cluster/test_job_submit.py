"""``ray start --head`` on 127.0.0.1, ``ray job submit`` of a short run, then ``ray stop`` (marker ``ray``)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.remote import RAY_ENV
from tests.cluster.tiny import RAY, TINY

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, and as IPv4-mapped IPv6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_hosts(port: int) -> set[str]:
    """Hex addresses listening on ``port`` (/proc/net/tcp{,6}; 0100007F is 127.0.0.1)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                hosts.add(host)
    return hosts


def test_ray_job_submit_runs_the_launcher(tmp_path):
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = os.environ | RAY_ENV | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = _free_port(), _free_port()
    start = [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2"]
    start += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        run_dir = tmp_path / "run"  # absolute: the job runs in a copy of the working dir
        submit = [ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", f"--working-dir={REPO}"]
        entry = [sys.executable, "-m", "cluster.launch", *TINY, *RAY, f"run_dir={run_dir}"]
        done = subprocess.run([*submit, "--", *entry], env=env, capture_output=True, text=True, timeout=600)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "succeeded" in output and "ray cluster (joined)" in output
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [0, 1, 2]
        for port in (gcs, dashboard):
            hosts = _listening_hosts(port)
            assert hosts and hosts <= LOOPBACK, (port, hosts)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
