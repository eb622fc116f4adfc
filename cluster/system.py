"""The running roles of a run and how the driver calls them, the same way in local and Ray mode.

A role is called through its ``Handle``: ``handle.call(method, *args)`` returns a ``Pending`` whose
``result()`` waits for the value and whose ``ref`` can be passed on as another call's argument (in Ray
mode an ObjectRef, so a value produced by one actor reaches another through the object store without
passing through the driver; in local mode the value itself). The driver does not call handles itself:
it calls the typed proxies of cluster/supervisor.py, which sit on top of them.

A call that cannot be answered raises a ``RoleError``: ``ActorDied`` (a Ray actor that is gone; local
mode has no actor to lose) or ``RoleFailed`` (the method raised). ``recoverable`` says whether replacing
the role can help: only for an infrastructure failure (``infrastructure``: an actor that died, out of
memory, an env that crashed, an I/O error); a programming error (TypeError, AttributeError,
AssertionError, ...) is not, and stops the run with its traceback (STYLE.md 17, issue 16).

``System`` holds the rollout, learner and teacher handles and replaces a rollout actor or the teacher
with a new incarnation through its ``Spawner`` (local: cluster/system.py's; Ray: cluster/remote.py's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from actors.rollout import EnvCrashed
from cluster.roles import LearnerRole, RolloutRole, TeacherRole
from configs import Config
from teacher.buffer import CheckpointBuffer

# Failures of the machine, not of the code: replacing the role that hit one can help.
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    MemoryError,
    torch.cuda.OutOfMemoryError,
    EnvCrashed,  # an env's reset or step raised (actors/rollout.py)
    OSError,  # I/O: a disk, a file the role reads or writes, a connection
)
# The same, for classes of libraries imported lazily (STYLE.md 13), matched by name: vLLM's engine process
# died (models/engines/vllm.py makes a waiting generate raise it); Ray's memory monitor killed a worker.
INFRASTRUCTURE_NAMES = frozenset({"EngineDeadError", "OutOfMemoryError"})


def infrastructure(error: BaseException | str) -> bool:
    """Whether ``error``, raised inside a role's method, is an infrastructure failure."""
    if isinstance(error, str):
        return False
    return isinstance(error, INFRASTRUCTURE) or any(c.__name__ in INFRASTRUCTURE_NAMES for c in type(error).__mro__)


class RoleError(RuntimeError):
    """A role could not answer a call: its actor is gone, or the method raised. ``recoverable``: a new
    incarnation of the role may succeed (an infrastructure failure)."""

    recoverable = True

    def __init__(self, message: str, name: str, method: str = ""):
        super().__init__(message)
        self.name, self.method = name, method


class ActorDied(RoleError):
    """A role's actor process is gone (killed, crashed, out of memory)."""

    def __init__(self, name: str, cause: str, method: str = ""):
        super().__init__(f"actor {name} died: {cause}", name, method)


class RoleFailed(RoleError):
    """A role's method raised: an infrastructure failure (``recoverable``: a CUDA out-of-memory, an env that
    crashed, a file that cannot be read), or a programming error (not recoverable: TypeError, KeyError, ...)."""

    def __init__(self, name: str, method: str, cause: BaseException | str, recoverable: bool | None = None):
        text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{name} failed in {method} ({text})", name, method)
        self.recoverable = infrastructure(cause) if recoverable is None else recoverable


class RunStopped(RuntimeError):
    """The run cannot go on (the learner failed, a programming error in a role, restarts exhausted, a teacher
    failure with ``teacher.required``, an interrupt); the message says how to resume, ``what`` what happened;
    ``exit_code`` is the launcher's exit status."""

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
    """N rollout actors, a learner and (unless guidance is none) a teacher, started through ``spawn``.
    When to replace one, and how often it may be, is the supervisor's (cluster/supervisor.py).

    ``buffer`` is the driver's durable copy of the teacher's checkpoints (``<run_dir>/teacher``): every
    version sent to the teacher is written there too (``TeacherProxy.add_checkpoint``), checkpoints copy
    it, and a teacher started or restarted is handed what it holds (no role needs the driver's disk)."""

    def __init__(self, cfg: Config, spawn: Spawner, buffer_dir: Path):
        self.cfg, self.spawn = cfg, spawn
        self.buffer: CheckpointBuffer | None = None  # made with the teacher: a run without one has no folder
        self.rollouts: list[Handle] = [
            spawn("rollout", f"rollout-{i}", RolloutRole, cfg, i) for i in range(cfg.train.num_workers)
        ]
        self.learner: Handle = spawn("learner", "learner", LearnerRole, cfg)
        self.teacher: Handle | None = None
        if cfg.teacher.guidance != "none":
            self.buffer = CheckpointBuffer(buffer_dir, cfg.teacher.max_checkpoints)
            self.teacher = spawn("teacher", "teacher", TeacherRole, cfg, self.buffered())

    def buffered(self) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The teacher's checkpoints from the driver's copy, oldest first."""
        return [(v, self.buffer.load(v)) for v in self.buffer.versions()]

    def handles(self) -> list[Handle]:
        return [*self.rollouts, self.learner, *([self.teacher] if self.teacher else [])]

    def wait_ready(self) -> list[dict]:
        """Block until every actor has started (model loaded); returns what each reports."""
        pendings = [h.call("ready") for h in self.handles()]
        return [{"name": h.name} | p.result() for h, p in zip(self.handles(), pendings, strict=True)]

    def replace_rollout(self, index: int, incarnation: int) -> Handle:
        """Stop rollout actor ``index`` and start incarnation ``incarnation`` of it (fresh episodes)."""
        self.rollouts[index].stop()
        name = f"rollout-{index}-r{incarnation}"
        self.rollouts[index] = self.spawn("rollout", name, RolloutRole, self.cfg, index, incarnation)
        return self.rollouts[index]

    def replace_teacher(self, incarnation: int) -> Handle:
        """A new teacher that rebuilds its merge from the driver's copy of its checkpoints (not waited for)."""
        self.teacher.stop()
        name = f"teacher-r{incarnation}"
        self.teacher = self.spawn("teacher", name, TeacherRole, self.cfg, self.buffered())
        return self.teacher

    def shutdown(self) -> None:
        for handle in self.handles():
            handle.stop()
        self.spawn.shutdown()
