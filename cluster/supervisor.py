"""The run's roles behind typed proxies, and what happens when one fails (issue 16).

The driver (cluster/driver.py) calls ``rollouts.sample(rounds)``, ``teacher.kl(sampled)``,
``learner.update(sampled, guidance)``: the same proxies in local and Ray mode, on top of the handles of
cluster/system.py. They keep Ray's concurrency: a call on every rollout actor is started on all before
any is waited for; values made by one role reach another as refs (ObjectRefs in Ray mode), never through
the driver; the teacher's re-merge of a checkpoint is waited for only when the teacher is next needed.

The ``Supervisor`` owns restarts, incarnations, the teacher's lifecycle and the messages that stop a run.
What a failure does (STYLE.md 17; ``infrastructure`` in cluster/system.py says which failures are which):

- an infrastructure failure (the actor died, out of memory, an env crashed: ``EnvCrashed``, an I/O error):
  a rollout actor is replaced by a new incarnation (fresh episodes) that loads the current adapter and
  redoes the call; the teacher is rebuilt from the driver's copy of its buffer while training goes on
  without guidance, those iterations counted (``teacher/unguided_iterations``), or with ``teacher.required``
  the run stops;
- a programming error (TypeError, AttributeError, AssertionError, KeyError, ...) in any role: the run stops
  with its traceback, nothing is restarted (a new incarnation would fail the same way);
- any failure of the learner stops the run (its state cannot be rebuilt between checkpoints).

More than ``cluster.max_restarts`` replacements of one actor stop the run, naming the last failure.
Every stop is a ``RunStopped`` naming the last good checkpoint and the command that resumes from it,
chained to the role's error (whose traceback cluster/launch.py prints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from cluster.storage import show
from cluster.system import Handle, Pending, RoleError, RoleFailed, RunStopped, System
from configs import Config
from core import metric_names as names
from core.batch import Batch, EpisodeStats

T = TypeVar("T")


@dataclass
class Published:
    version: int
    adapter: Any  # an ObjectRef in Ray mode (stored once, loaded by reference), the state dict locally
    pending: Pending | None = None  # the call that made it: ``value()`` fetches the adapter itself

    def value(self) -> dict[str, Any]:
        """The adapter itself (Ray: fetched from the object store), for the driver's copy of the buffer."""
        return self.pending.result() if self.pending is not None else self.adapter


@dataclass
class Sampled:
    """One iteration's batches, one per rollout actor in worker order: the values (for the driver's metrics
    and hooks) and the same batches as refs to pass on to the teacher and the learner."""

    batches: list[Batch]
    refs: list[Any]


@dataclass
class Guidance:
    """The teacher's answer for the sampled batches, as a ref for the learner (one of the two is set)."""

    teacher_logprobs: Any = None  # list[list[float]]: the teacher's log-prob of every sampled token (KL)
    labels: Any = None  # list[SFTLabel]: SFT-guidance labels


class Later(Generic[T]):
    """A call under way: ``result()`` waits for its value; a failure goes to ``on_failure``, which raises
    (the run stops) or returns what to use instead."""

    def __init__(self, pending: Pending, on_failure: Callable[[RoleError], T]):
        self.pending, self.on_failure = pending, on_failure

    def result(self) -> T:
        try:
            return self.pending.result()
        except RoleError as error:
            return self.on_failure(error)


def stop_message(what: str, last_checkpoint: Path | None, run_dir: Path, location: str = "") -> str:
    """What stopped a run, the last good checkpoint and the command that resumes from it, at the run's storage
    ``location`` (its folder ``run_dir`` when that is local)."""
    location = location or str(run_dir)
    where = show(last_checkpoint, run_dir, location) if last_checkpoint is not None else "none yet"
    return f"{what}. Last good checkpoint: {where}. Resume with: python -m cluster.launch --resume {location}"


class Supervisor:
    """Restarts and incarnations of one run's roles, its counters, and the messages that stop it."""

    def __init__(self, cfg: Config, run_dir: Path, system: System, log: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.system, self.log = cfg, run_dir, system, log
        self.incarnations = [0] * len(system.rollouts)
        self.teacher_incarnation = 0
        self.counters = {names.ROLLOUT_RESTARTS: 0, names.TEACHER_RESTARTS: 0}
        if system.teacher is not None:
            self.counters[names.UNGUIDED_ITERATIONS] = 0  # iterations trained without guidance
        self.last_checkpoint: Path | None = None
        self.rollouts = Rollouts(self)
        self.learner = LearnerProxy(self)
        self.teacher = TeacherProxy(self) if system.teacher is not None else None

    def restore(self, state: dict) -> None:
        """Counters and incarnations from a checkpoint's driver state (a role replaced later counts on)."""
        self.counters |= state["counters"]
        self.incarnations = state["incarnations"]
        self.teacher_incarnation = state["teacher_incarnation"]

    def state(self) -> dict:
        return {
            "counters": self.counters,
            "incarnations": self.incarnations,
            "teacher_incarnation": self.teacher_incarnation,
        }

    # ------------------------------------------------------------------ failures

    def replace_rollout(self, index: int, error: RoleError, doing: str) -> Handle:
        """A new incarnation of rollout actor ``index`` after ``error`` (recoverable ones only)."""
        self.stop_unless_recoverable(error)
        self.log(f"{error}; starting a new rollout-{index} and redoing its {doing}")
        self.incarnations[index] += 1
        self._within_restarts(self.incarnations[index], f"rollout-{index}", error)
        self.counters[names.ROLLOUT_RESTARTS] += 1
        return self.system.replace_rollout(index, self.incarnations[index])

    def rebuild_teacher(self, error: RoleError) -> Handle:
        """A new teacher, rebuilt from the driver's copy of its buffer, after ``error`` (not waited for)."""
        self.stop_unless_recoverable(error)
        if self.cfg.teacher.required:
            what = f"{error}; teacher.required is true, so the run stops rather than train without guidance"
            raise self.stopped(what) from error
        self.log(f"{error}; rebuilding the teacher from its checkpoint buffer, training goes on without guidance")
        self.teacher_incarnation += 1
        self._within_restarts(self.teacher_incarnation, "the teacher", error)
        self.counters[names.TEACHER_RESTARTS] += 1
        return self.system.replace_teacher(self.teacher_incarnation)

    def stop_unless_recoverable(self, error: RoleError) -> None:
        """A programming error in a role stops the run at once: a new incarnation would fail the same way."""
        if not error.recoverable:
            what = (
                f"{error}: not an infrastructure failure (an actor that died, out of memory, an env crash), so "
                "nothing is restarted"
            )
            raise self.stopped(what) from error

    def learner_failed(self, method: str, error: Exception) -> RunStopped:
        """Any learner failure stops the run (its state cannot be rebuilt between checkpoints)."""
        what = str(error) if isinstance(error, RoleFailed) else f"the learner failed in {method} ({error})"
        return self.stopped(what)

    def stopped(self, what: str) -> RunStopped:
        """The ``RunStopped`` to raise ``from`` the role's error (whose traceback stays attached)."""
        return RunStopped(stop_message(what, self.last_checkpoint, self.run_dir, self.cfg.run_dir), what)

    def _within_restarts(self, incarnation: int, who: str, error: RoleError) -> None:
        limit = self.cfg.cluster.max_restarts
        if incarnation > limit:
            what = f"{who} failed or died {incarnation} times (cluster.max_restarts={limit}); the last time: {error}"
            raise self.stopped(what) from error


class Rollouts:
    """The rollout actors as one: each method runs on every actor in parallel and returns in worker order.
    An actor that fails recoverably (this call, or the adapter load queued before it) is replaced by a new
    incarnation holding the adapter the call was to run with, and its part is redone.

    ``start_sample`` and ``start_evaluate`` return at once (``OnEach``); the asynchronous loop keeps
    several calls queued on each actor, which runs them in order, each after the adapter loads queued
    before it."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.published: Published | None = None  # what a new incarnation loads
        self.loads: dict[int, Pending] = {}  # adapter loads queued on actors, checked with their next call

    def __len__(self) -> int:
        return len(self.supervisor.system.rollouts)

    def start_sample(self, rounds: int) -> SampleCall:
        """``rounds`` lock-step rounds of every actor's K envs, started (with the adapter loaded last)."""
        return SampleCall(self._start("sample", lambda i: (rounds,)))

    def sample(self, rounds: int) -> Sampled:
        return self.start_sample(rounds).result()

    def start_evaluate(self, episodes: int) -> OnEach:
        """Held-out episodes ``0 .. episodes - 1``, split over the actors, started."""
        n = len(self)
        shares = [(episodes * i // n, episodes * (i + 1) // n - episodes * i // n) for i in range(n)]
        return self._start("evaluate", lambda i: shares[i])

    def evaluate(self, episodes: int) -> list[EpisodeStats]:
        return [e for part, _ in self.start_evaluate(episodes).result() for e in part]

    def load_adapter(self, published: Published) -> None:
        """Queue ``published`` on every actor, before its next call (a new incarnation gets it too)."""
        self.published = published
        for i, handle in enumerate(self.supervisor.system.rollouts):
            self._queue_load(i, handle)

    def save(self, folder: Path) -> None:
        """Each actor's state, written by the driver as ``rollout-<i>.pt`` into ``folder``."""
        for i, (data, _) in enumerate(self._start("save", lambda i: ()).result()):
            (folder / f"rollout-{i}.pt").write_bytes(data)

    def load(self, folder: Path) -> None:
        paths = [folder / f"rollout-{i}.pt" for i in range(len(self))]
        states = [path.read_bytes() for path in paths]
        self._start("load", lambda i: (states[i], str(paths[i]))).result()

    def _queue_load(self, index: int, handle: Handle) -> None:
        if self.published is not None:
            self.loads[index] = handle.call("load_adapter", self.published.adapter, self.published.version)

    def _start(self, method: str, args_for: Callable[[int], tuple]) -> OnEach:
        """``method`` started on every actor, after the adapter load queued before it."""
        parts = []
        for i, handle in enumerate(self.supervisor.system.rollouts):
            args, load = args_for(i), self.loads.pop(i, None)
            parts.append(_Part(i, handle, method, args, load, handle.call(method, *args), self.published))
        return OnEach(self, parts)

    def _redo(self, part: _Part, error: RoleError) -> None:
        """``part`` again on a new incarnation of its actor (or on the one that already replaced it, when
        another call saw the failure first), with the adapter it was started with."""
        current = self.supervisor.system.rollouts[part.index]
        if current is part.handle:
            current = self.supervisor.replace_rollout(part.index, error, part.method)
        elif not error.recoverable:
            self.supervisor.stop_unless_recoverable(error)
        part.handle = current
        part.load = None
        if part.published is not None:
            part.load = current.call("load_adapter", part.published.adapter, part.published.version)
        part.pending = current.call(part.method, *part.args)
        if self.published is not part.published:  # the actor's later calls run with the newest adapter
            self._queue_load(part.index, current)


@dataclass
class _Part:
    """One actor's part of a call on every rollout actor."""

    index: int
    handle: Handle
    method: str
    args: tuple
    load: Pending | None  # the adapter load queued before the call
    pending: Pending
    published: Published | None  # the adapter it runs with


class OnEach:
    """A call on every rollout actor, under way; ``result()`` is [(value, ref)] in worker order."""

    def __init__(self, rollouts: Rollouts, parts: list[_Part]):
        self.rollouts, self.parts = rollouts, parts
        self._done: list[tuple[Any, Any]] | None = None

    def ready(self) -> bool:
        return self._done is not None or all(p.pending.ready() for p in self.parts)

    def result(self) -> list[tuple[Any, Any]]:
        if self._done is None:
            self._done = [self._part(part) for part in self.parts]
        return self._done

    def _part(self, part: _Part) -> tuple[Any, Any]:
        while True:
            try:
                if part.load is not None:
                    part.load.result()
                return part.pending.result(), part.pending.ref
            except RoleError as error:
                self.rollouts._redo(part, error)


class SampleCall:
    """Sampling under way on every rollout actor; ``result()`` is the ``Sampled`` batches."""

    def __init__(self, each: OnEach | None = None, done: Sampled | None = None):
        self.each, self._done = each, done

    def result(self) -> Sampled:
        if self._done is None:
            done = self.each.result()
            self._done = Sampled([batch for batch, _ in done], [ref for _, ref in done])
        return self._done

    def refs(self) -> list[Any] | None:
        """The batches' refs before they are all sampled (Ray: another role's call on them waits for them);
        None where they cannot be had yet (a local call that failed: it is redone at ``result``)."""
        if self._done is not None:
            return self._done.refs
        try:
            return [part.pending.ref for part in self.each.parts]
        except RoleError:
            return None


class LearnerProxy:
    """The learner. Any failure of it stops the run, naming the last good checkpoint."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    @property
    def handle(self) -> Handle:
        return self.supervisor.system.learner

    def update(self, sampled: Sampled, guidance: Guidance | None) -> dict[str, float]:
        """One PPO update over the sampled batches, shaped by the guidance (None: plain PPO)."""
        return self.start_update(sampled, guidance).result()

    def start_update(self, sampled: Sampled, guidance: Guidance | None) -> Later[dict[str, float]]:
        """``update``, started: the driver starts the teacher's scoring of the next batch meanwhile."""
        guidance = guidance or Guidance()
        pending = self.handle.call("update", guidance.teacher_logprobs, guidance.labels, *sampled.refs)
        return Later(pending, lambda error: self._stop("update", error))

    def publish(self) -> Published:
        """A new policy version; its adapter stays a ref (Ray: stored once, loaded by reference)."""
        return self._published("publish")

    def current(self) -> Published:
        """The version last published (a resumed run hands it to every actor)."""
        return self._published("current")

    def save(self) -> Later[bytes]:
        """Its state, started, not waited for: the rollout actors save beside it."""
        return Later(self.handle.call("save"), lambda error: self._stop("save", error))

    def load(self, path: Path) -> None:
        self._result("load", self.handle.call("load", path.read_bytes(), str(path)))

    def _published(self, method: str) -> Published:
        version, adapter = self.handle.call2(method)
        return Published(self._result(method, version), adapter.ref, adapter)

    def _result(self, method: str, pending: Pending) -> Any:
        try:
            return pending.result()
        except Exception as error:
            self._stop(method, error)

    def _stop(self, method: str, error: Exception) -> NoReturn:
        raise self.supervisor.learner_failed(method, error) from error


class TeacherProxy:
    """The merged teacher and its lifecycle. Checkpoints sent to it are merged in the background (Ray: the
    re-merge of version v overlaps the sampling with v) and waited for when it is next needed; a failure
    rebuilds it from its buffer (``Supervisor.rebuild_teacher``), and until the new one is up and has merged
    every checkpoint it is not asked for guidance."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.unmerged: list[tuple[Published, Pending]] = []  # sent, merge not yet confirmed
        self.starting: Pending | None = None  # a rebuilt teacher's "ready" call
        self.stats: dict[str, float] = {}  # of the last merge confirmed

    @property
    def handle(self) -> Handle:
        return self.supervisor.system.teacher

    def merged(self, wait: bool = False) -> bool:
        """Wait until every checkpoint sent is merged; False when the teacher failed, or (without ``wait``)
        while a rebuilt one is still starting."""
        if self.starting is not None:
            if not (wait or self.starting.ready()):
                return False
            if not self._answered(self.starting):
                return False
            self.supervisor.log(f"{self.handle.name} is back: guidance resumes")
            self.starting = None
        try:
            for _, pending in self.unmerged:
                self.stats = pending.result()
        except RoleError as error:
            self._failed(error)
            return False
        self.unmerged.clear()
        return True

    def guide(self, sampled: Sampled) -> Guidance | None:
        """The guidance ``teacher.guidance`` names; None when the teacher failed (it is rebuilt)."""
        return self.start_guide(sampled.refs).result()

    def start_guide(self, refs: list[Any]) -> Scoring:
        """The guidance for the batches ``refs`` stand for, started: for GTR-Turbo-KL the teacher's log-probs
        of every sampled token, for GTR-Turbo-SFT its answers for the sampled prompts (labels). In Ray mode
        the batches may still be being sampled: the teacher takes them when they are."""
        method = {"kl": "logprobs", "sft": "labels"}[self.supervisor.cfg.teacher.guidance]
        return Scoring(self, self.handle, self.handle.call(method, *refs), refs)

    def add_checkpoint(self, published: Published) -> None:
        """Hand the new version over, and write it into the driver's copy of the buffer (what a restarted
        teacher is given, and checkpoints copy); the re-merge is confirmed when the teacher is next needed."""
        if self.supervisor.cfg.teacher.reference == "merged":
            self.supervisor.system.buffer.add(published.version, published.value())
        pending = self.handle.call("add_checkpoint", published.adapter, published.version)
        self.unmerged.append((published, pending))
        if self.starting is None and all(p.ready() for _, p in self.unmerged):
            self.merged()  # local mode: merged already; record its stats now

    def evaluate(self, episodes: int) -> Later[list[EpisodeStats] | None] | None:
        """Held-out episodes of the merged teacher as a policy, started (the student's run beside them);
        None while it rebuilds, and a result of None when it fails on the way."""
        if not self.merged():
            return None
        return Later(self.handle.call("evaluate", 0, episodes), self._failed)

    def save(self, folder: Path) -> None:
        """Its RNG (``teacher.pt``) and a copy of the driver's buffer (``teacher/``), once it has merged every
        checkpoint sent (a rebuilding teacher is waited for: the checkpoint must be complete)."""
        state = None
        while state is None:  # a failure rebuilds the teacher (up to cluster.max_restarts): the new one saves
            if self.merged(wait=True):
                pending = self.handle.call("save")
                state = pending.result() if self._answered(pending) else None
        (folder / "teacher.pt").write_bytes(state)
        self.supervisor.system.buffer.copy_into(folder / "teacher")

    def load(self, path: Path) -> None:
        self._answered(self.handle.call("load", path.read_bytes(), str(path)))

    def _answered(self, pending: Pending) -> bool:
        """Whether ``pending`` came back; a failure rebuilds the teacher."""
        try:
            pending.result()
        except RoleError as error:
            self._failed(error)
            return False
        return True

    def _failed(self, error: RoleError) -> None:
        handle = self.supervisor.rebuild_teacher(error)
        self.starting = handle.call("ready")
        self.unmerged = [(p, handle.call("add_checkpoint", p.adapter, p.version)) for p, _ in self.unmerged]


class Scoring:
    """The teacher's guidance for some batches, under way. ``result()`` is the ``Guidance`` (its value stays a
    ref for the learner), or None when the teacher failed (it is rebuilt; the iteration trains without)."""

    def __init__(self, teacher: TeacherProxy, handle: Handle, pending: Pending | None, refs: list[Any]):
        self.teacher, self.handle, self.pending, self.refs = teacher, handle, pending, refs
        self.kind = teacher.supervisor.cfg.teacher.guidance

    @classmethod
    def done(cls, teacher: TeacherProxy, guidance: Guidance, refs: list[Any]) -> Scoring:
        """Guidance already there (restored from a checkpoint)."""
        scoring = cls(teacher, teacher.handle, None, refs)
        scoring._guidance = guidance
        return scoring

    def result(self) -> Guidance | None:
        if self.pending is None:
            return self._guidance
        if not self.teacher._answered(self.pending):
            return None
        ref = self.pending.ref
        return Guidance(teacher_logprobs=ref) if self.kind == "kl" else Guidance(labels=ref)

    def value(self) -> Guidance | None:
        """``result()`` with the values themselves, not refs (for a checkpoint)."""
        guidance = self.result()
        if guidance is None or self.pending is None:
            return guidance
        return (
            Guidance(teacher_logprobs=self.pending.result())
            if self.kind == "kl"
            else Guidance(labels=self.pending.result())
        )

    def usable_for(self, refs: list[Any]) -> bool:
        """Whether this scoring is of exactly these batches (not of a part redone since) by the live teacher
        (not one replaced since). One that is not is dropped; its failure, if any, is not the teacher's."""
        if (
            self.handle is self.teacher.handle
            and len(refs) == len(self.refs)
            and all(a is b for a, b in zip(refs, self.refs, strict=True))
        ):
            return True
        if self.pending is not None:
            try:
                self.pending.result()
            except RoleError:
                pass
        return False
