"""cluster/reaper.py without Ray: a stand-in driver starts a "head" process whose child outlives it
(as the raylet's agents outlive the raylet); the reaper ends both, and nothing else, when the driver
says ``reap`` or is killed."""

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster.reaper import alive

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import subprocess, sys, time
from cluster.reaper import Reaper

quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # only the reaper writes to our pipes
mine_before = subprocess.Popen(["sleep", "60"], **quiet)
reaper = Reaper()
head = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '61']); time.sleep(60)"], **quiet)
time.sleep(1.2)  # the reaper looks every 0.5 s
reaper.started()
mine_after = subprocess.Popen(["sleep", "62"], **quiet)
print(mine_before.pid, head.pid, mine_after.pid, flush=True)
if sys.argv[1] == "reap":
    sys.stdin.readline()  # the test has looked at the tree: only now may it go
    reaper.reap()
    print("reaped", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["reap", "sigkill"])
def test_reaper_ends_the_head_tree_and_nothing_else(how):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, how],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spawned = []
    try:
        before, head, after = (psutil.Process(int(pid)) for pid in driver.stdout.readline().split())
        agent = head.children()[0]  # the head's child, "sleep 61"
        spawned = [before, head, agent, after]
        assert agent.cmdline() == ["sleep", "61"]
        if how == "reap":
            driver.stdin.write("go\n")
            driver.stdin.flush()
            assert driver.stdout.readline() == "reaped\n"  # reap() returned: the tree is gone already
            assert not alive(head) and not alive(agent) and driver.poll() is None
        else:
            driver.kill()
            deadline = time.monotonic() + 5
            while (alive(head) or alive(agent)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not alive(head) and not alive(agent)
        assert alive(before) and alive(after)  # the driver's own children, not Ray's
        driver.kill()
        assert "ray: ended 2 processes the cluster left" in driver.communicate(timeout=10)[1]
    finally:
        driver.kill()
        for process in spawned:
            if alive(process):
                process.kill()
