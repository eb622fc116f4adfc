"""Ends every process of a Ray cluster this process started, when it is done with it or dies.

Ray ties the head's processes (GCS, raylet, dashboard, monitors) to the process that started them
(``PR_SET_PDEATHSIG``), but not what the raylet starts: after a SIGKILL of the driver, its dashboard agent
and runtime-env agent see the raylet gone within 2 s, then wait 60 s or more to report that to the GCS,
dead too, before they exit (``ray/_private/process_watcher.py``: ``publish_error_to_driver``, 60 s
timeout). No Ray setting shortens that wait.

So before ``ray.init`` the driver starts this reaper, in a session of its own. The children the driver
gains until it says ``started`` (with their pids) are Ray's head processes; the reaper looks at their
descendants every ``EVERY_S`` (agents, workers, dashboard modules: they rename themselves, so the tree,
not a name, says whose they are). When the driver says ``reap`` (after ``ray.shutdown``) or dies in any
way, the reaper ends those still alive: SIGTERM, then SIGKILL after ``GRACE_S``. Nothing else is
touched: not the driver's other children, not another cluster's processes. It imports neither Ray nor
the project: it runs as a script.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil

EVERY_S = 0.5  # between looks at the cluster's process tree
GRACE_S = 1.0  # between SIGTERM and SIGKILL


class Reaper:
    """The driver's side. Start it just before ``ray.init``, call ``started`` after, ``reap`` when done."""

    def __init__(self) -> None:
        before = [str(child.pid) for child in psutil.Process().children()]  # not Ray's
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(os.getpid()), *before],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C or a kill of the driver's process group leaves it running
        )

    def started(self) -> None:
        """Ray has started its head processes: those are the driver's children now, and no later ones."""
        children = " ".join(str(child.pid) for child in psutil.Process().children())
        self._send(f"started {children}\n".encode())

    def reap(self, timeout: float = 15.0) -> None:
        """End what is left of the cluster now and wait for that; the reaper then exits."""
        self._send(b"reap\n")
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def _send(self, line: bytes) -> None:
        try:  # a line, not only EOF: a child forked from this process may hold the pipe open
            self._process.stdin.write(line)
            self._process.stdin.flush()
        except OSError:  # the reaper is gone
            pass


def watch(driver: psutil.Process, before: set[int], pipe: int) -> set[psutil.Process]:
    """The cluster's processes, looked at every ``EVERY_S`` until the driver ends or says ``reap``."""
    try:
        exited = [os.pidfd_open(driver.pid)]  # readable once the driver exits
    except OSError:  # no pidfd (Linux < 5.3): ``alive`` below polls
        exited = []
    roots: set[psutil.Process] = set()  # Ray's head processes
    seen: set[psutil.Process] = set()
    started = done = False
    while alive(driver) and not done:
        children = _children()
        if not started:  # ray.init is under way: each new child of the driver is Ray's
            roots |= {child for child in children.get(driver.pid, []) if child.pid not in before}
        seen |= _tree(roots, children)
        readable = select.select([*exited, pipe], [], [], EVERY_S)[0]
        if pipe not in readable:
            done = bool(readable)
            continue
        for line in os.read(pipe, 65536).decode().splitlines() or ["reap"]:  # EOF: the driver closed the pipe
            command, *pids = line.split()
            if command == "started":
                new = {int(pid) for pid in pids} - before - {os.getpid()}
                roots = {process for process in map(_process, new) if process is not None}
                started = True
            else:
                done = True
    return seen | _tree(roots, _children())


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _children() -> dict[int, list[psutil.Process]]:
    """Every process's children, by parent pid: one pass over the process table."""
    children: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process)
    return children


def _tree(roots: set[psutil.Process], children: dict[int, list[psutil.Process]]) -> set[psutil.Process]:
    """``roots`` and their descendants now (a root that has ended has none: its pid may be another's)."""
    found, stack = set(roots), [root for root in roots if alive(root)]
    while stack:
        for child in children.get(stack.pop().pid, []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def end(processes: set[psutil.Process]) -> list[str]:
    """SIGTERM those still running, SIGKILL those left after ``GRACE_S``; 'name (pid)' of each one ended."""
    running = [p for p in processes if alive(p) and p.pid != os.getpid()]
    ended = []
    for process in running:
        try:
            name = process.name()
            process.terminate()
            ended.append(f"{name} ({process.pid})")
        except psutil.Error:
            pass
    for process in _wait(running, GRACE_S):
        try:
            process.kill()
        except psutil.Error:
            pass
    _wait(running, GRACE_S)
    return ended


def _wait(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those still running after ``timeout`` (a zombie has ended: its parent may be slow to reap it)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def main(argv: list[str]) -> int:
    driver_pid, before = int(argv[0]), {int(pid) for pid in argv[1:]}
    if os.getppid() != driver_pid:
        return 0  # the driver is gone already (and its pid may be another process's)
    seen = watch(psutil.Process(driver_pid), before, sys.stdin.fileno())
    ended = end(seen)
    if ended:
        print(f"ray: ended {len(ended)} processes the cluster left: {', '.join(ended)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
