"""The running roles of a run and how the driver calls them, the same way in local and Ray mode.

The driver never touches Ray: it calls ``handle.call(method, *args)`` and gets a ``Pending`` whose
``result()`` waits for the value and whose ``ref`` can be passed on as another call's argument
(in Ray mode an ObjectRef, so a value produced by one actor reaches another through the object
store without passing through the driver; in local mode the value itself). A Ray actor that dies
makes ``result()`` raise ``ActorDied``; local mode has no actor to lose.

``System`` holds the rollout, learner and teacher handles and replaces a dead rollout actor or
teacher with a new incarnation through its ``Spawner`` (local: cluster/system.py's; Ray:
cluster/remote.py's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cluster.roles import LearnerRole, RolloutRole, TeacherRole
from configs import Config


class RoleError(RuntimeError):
    """A role could not answer a call: its actor is gone, or the method raised."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class ActorDied(RoleError):
    """A role's actor process is gone (killed, crashed, out of memory)."""

    def __init__(self, name: str, cause: str):
        super().__init__(f"actor {name} died: {cause}", name)


class RoleFailed(RoleError):
    """A role's method raised (a CUDA out-of-memory, an env that crashed, a bad checkpoint file)."""

    def __init__(self, name: str, method: str, cause: BaseException | str):
        text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{name} failed in {method} ({text})", name)


class RunStopped(RuntimeError):
    """The run cannot go on (the learner failed, restarts exhausted, an interrupt); the message says how
    to resume, ``what`` what happened; ``exit_code`` is the launcher's exit status."""

    def __init__(self, message: str, what: str = "", exit_code: int = 1):
        super().__init__(message)
        self.what, self.exit_code = what or message, exit_code


class Pending(Protocol):
    @property
    def ref(self) -> Any: ...

    def result(self) -> Any: ...

    def ready(self) -> bool: ...


class Handle(Protocol):
    name: str

    def call(self, method: str, *args: Any) -> Pending: ...

    def call2(self, method: str, *args: Any) -> tuple[Pending, Pending]:
        """A call whose result is a pair, returned as two pendings (each its own object in Ray)."""
        ...

    def stop(self) -> None: ...


class Spawner(Protocol):
    """Starts one role as ``cls(cfg, device, *args)``; ``kind`` (rollout | learner | teacher) picks its
    resources and device."""

    def __call__(self, kind: str, name: str, cls: type, cfg: Config, *args: Any) -> Handle: ...

    def run(self, kind: str, fn: Callable, *args: Any) -> Any:
        """Run a one-off function with a role's resources (the SFT warm start) and return its result."""
        ...

    def shutdown(self) -> None: ...


@dataclass
class Done:
    """A local call's outcome, already there: its value, or the error that ``result`` raises (as a Ray
    call's result does when the method raised)."""

    value: Any = None
    error: RoleFailed | None = None

    @property
    def ref(self) -> Any:
        return self.result()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def ready(self) -> bool:
        return True


class LocalHandle:
    def __init__(self, name: str, obj: Any):
        self.name, self.obj = name, obj

    def call(self, method: str, *args: Any) -> Done:
        try:
            return Done(getattr(self.obj, method)(*args))
        except Exception as error:
            return self._failed(method, error)

    def call2(self, method: str, *args: Any) -> tuple[Done, Done]:
        try:
            first, second = getattr(self.obj, method)(*args)
        except Exception as error:
            failed = self._failed(method, error)
            return failed, failed
        return Done(first), Done(second)

    def _failed(self, method: str, error: Exception) -> Done:
        failure = RoleFailed(self.name, method, error)
        failure.__cause__ = error  # the role's own traceback stays attached
        return Done(error=failure)

    def stop(self) -> None:
        close = getattr(self.obj, "close", None)
        self.obj = None
        if callable(close):
            close()


def local_device(cfg: Config, kind: str) -> str:
    if kind == "teacher" and cfg.teacher.device:
        return cfg.teacher.device
    return cfg.policy.device


class LocalSpawner:
    """Local mode: every role is a plain object in this process."""

    def __call__(self, kind: str, name: str, cls: type, cfg: Config, *args: Any) -> LocalHandle:
        return LocalHandle(name, cls(cfg, local_device(cfg, kind), *args))

    def run(self, kind: str, fn: Callable, *args: Any) -> Any:
        return fn(*args)

    def shutdown(self) -> None:
        pass


class System:
    """N rollout actors, a learner and (unless guidance is none) a teacher, started through ``spawn``."""

    def __init__(self, cfg: Config, spawn: Spawner, buffer_dir: Path):
        self.cfg, self.spawn, self.buffer_dir = cfg, spawn, buffer_dir
        self.incarnations = [0] * cfg.train.num_workers
        self.teacher_incarnation = 0
        self.rollouts: list[Handle] = [
            spawn("rollout", f"rollout-{i}", RolloutRole, cfg, i) for i in range(cfg.train.num_workers)
        ]
        self.learner: Handle = spawn("learner", "learner", LearnerRole, cfg)
        self.teacher: Handle | None = None
        if cfg.teacher.guidance != "none":
            self.teacher = spawn("teacher", "teacher", TeacherRole, cfg, str(buffer_dir))

    def handles(self) -> list[Handle]:
        return [*self.rollouts, self.learner, *([self.teacher] if self.teacher else [])]

    def wait_ready(self) -> list[dict]:
        """Block until every actor has started (model loaded); returns what each reports."""
        pendings = [h.call("ready") for h in self.handles()]
        return [{"name": h.name} | p.result() for h, p in zip(self.handles(), pendings, strict=True)]

    def restart_rollout(self, index: int) -> Handle:
        self.incarnations[index] += 1
        n = self.incarnations[index]
        if n > self.cfg.cluster.max_restarts:
            raise RunStopped(
                f"rollout-{index} failed or died {n} times (cluster.max_restarts={self.cfg.cluster.max_restarts})"
            )
        self.rollouts[index].stop()
        self.rollouts[index] = self.spawn("rollout", f"rollout-{index}-r{n}", RolloutRole, self.cfg, index, n)
        return self.rollouts[index]

    def restart_teacher(self) -> Handle:
        """A new teacher that rebuilds its merge from the checkpoint buffer on disk (not waited for)."""
        self.teacher_incarnation += 1
        n = self.teacher_incarnation
        if n > self.cfg.cluster.max_restarts:
            raise RunStopped(
                f"the teacher failed or died {n} times (cluster.max_restarts={self.cfg.cluster.max_restarts})"
            )
        self.teacher.stop()
        self.teacher = self.spawn("teacher", f"teacher-r{n}", TeacherRole, self.cfg, str(self.buffer_dir))
        return self.teacher

    def shutdown(self) -> None:
        for handle in self.handles():
            handle.stop()
        self.spawn.shutdown()
