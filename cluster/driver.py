"""The single-controller training loop (the paper's Algorithm 1, batched and distributed).

    for each iteration: sample -> score (teacher) -> learn -> publish -> merge -> evaluate -> checkpoint

The same loop drives Ray actors or plain objects in this process (cluster/system.py); it holds no
math. Every phase is timed (``time/<phase>``); every iteration writes one record (cluster/runlog.py).

What overlaps in Ray mode, and what does not:
- the rollout actors sample in parallel, each stepping its K envs with one batched generate per step;
- the teacher's re-merge of version v runs while the rollout actors sample with v: the driver waits
  for it only when it next needs the teacher (scoring, evaluating it, a checkpoint); that wait is
  ``time/merge`` (in local mode the merge itself);
- the student's evaluation (split over the rollout actors) runs beside the teacher's;
- synchronous: learning waits for every batch and for the guidance, publishing for the learner.

Faults: a rollout actor that dies or raises (``RoleError``: an env that crashed, a CUDA out-of-memory)
is replaced by a new incarnation holding the current adapter and its part of the phase is redone; a
teacher that dies or raises is rebuilt from its on-disk checkpoint buffer while training goes on
without guidance (``teacher/skipped``); more than ``cluster.max_restarts`` of either, or any learner
failure, stops the run with the last good checkpoint named (``RunStopped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.trajectory import Batch, EpisodeStats, summarize
from cluster import checkpoint, metrics
from cluster.system import Handle, Pending, RoleError, RoleFailed, RunStopped, System
from configs import Config
from teacher.buffer import CheckpointBuffer

Hook = Callable[[str, int, "Trainer"], None]  # (phase, iteration, trainer), called as each phase starts


@dataclass
class Published:
    version: int
    adapter: Any  # an ObjectRef in Ray mode (stored once, loaded by reference), the state dict locally


class Phases:
    """Seconds per phase of one iteration."""

    def __init__(self, hook: Callable[[str], None] = lambda _: None):
        self.seconds: dict[str, float] = {}
        self.hook = hook

    @contextmanager
    def __call__(self, name: str):
        self.hook(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, system: System, log=print, hook: Hook | None = None):
        self.cfg, self.run_dir, self.system, self.log = cfg, run_dir, system, log
        self.hook = hook or (lambda *_: None)
        self.published: Published | None = None
        self.unmerged: list[tuple[int, Any, Pending]] = []  # checkpoints sent to the teacher, not yet confirmed
        self.teacher_starting: Pending | None = None  # a rebuilt teacher's "ready" call
        self.teacher_stats: dict[str, float] = {}
        self.counters = {"rollout/restarts": 0, "teacher/restarts": 0}
        self.loads: dict[int, Pending] = {}  # adapter loads queued on rollout actors, checked with their next call
        self.total_env_steps = 0
        self.last_checkpoint: Path | None = None
        self.batches: list[Batch] = []  # the iteration's sampled batches, one per rollout actor (hooks read them)

    # ------------------------------------------------------------------ one iteration

    def iteration(self, index: int) -> dict:
        phase = Phases(lambda name: self.hook(name, index, self))
        with phase("sample"):
            sampled = self._on_rollouts("sample", lambda i: (self.cfg.train.rounds,))
        batches, refs = [b for b, _ in sampled], [r for _, r in sampled]
        self.batches = batches
        teacher = None
        if self.cfg.teacher.guidance != "none":
            with phase("merge"):  # Ray: waits for the re-merge that overlapped the sample; local: ~0
                teacher = self._teacher()
        with phase("score"):
            kl, labels = self._guidance(teacher, refs)
            skipped = float(self.cfg.teacher.guidance != "none" and kl is None and labels is None)
        with phase("learn"):
            learned = self._learner("update", kl, labels, *refs)
        with phase("publish"):
            self._publish()
        with phase("merge"):
            self._send_checkpoint()
        evaluation = {}
        if self._due(index, self.cfg.train.eval_every):
            with phase("eval"):
                evaluation = self.evaluate()
        transitions = [t for b in batches for t in b.transitions]
        self.total_env_steps += len(transitions)
        if self._due(index, self.cfg.train.checkpoint_every):
            with phase("checkpoint"):
                self.checkpoint(index)
        return metrics.iteration_record(
            index=index,
            env_steps=len(transitions),
            total_env_steps=self.total_env_steps,
            policy_version=self.published.version,
            episodes=summarize([e for b in batches for e in b.episodes]),
            transitions=transitions,
            learner=learned,
            teacher=self.teacher_stats | ({"teacher/skipped": skipped} if self.system.teacher else {}),
            evaluation=evaluation,
            counters=self.counters,
            seconds=phase.seconds,
        )

    def _due(self, index: int, every: int) -> bool:
        return (every and index % every == 0) or index == self.cfg.train.iterations

    def _on_rollouts(self, method: str, args_for: Callable[[int], tuple]) -> list[tuple[Any, Any]]:
        """``method`` on every rollout actor, in parallel: [(result, ref)] in worker order. An actor that
        died or failed (this call, or the adapter load queued before it) is replaced by a new incarnation
        with the current adapter, and its call is made again."""
        pendings = [h.call(method, *args_for(i)) for i, h in enumerate(self.system.rollouts)]
        out = []
        for i, pending in enumerate(pendings):
            while True:
                try:
                    load = self.loads.pop(i, None)
                    if load is not None:
                        load.result()
                    out.append((pending.result(), pending.ref))
                    break
                except RoleError as error:
                    self.log(f"{error}; starting a new rollout-{i} and redoing its {method}")
                    with self._restarts_left(error):
                        handle = self.system.restart_rollout(i)
                    self.counters["rollout/restarts"] += 1
                    self._load_current(i, handle)
                    pending = handle.call(method, *args_for(i))
        return out

    def _load_current(self, index: int, handle: Handle) -> None:
        """Queue the current adapter on rollout ``index`` (its result is checked with the actor's next call)."""
        if self.published is not None:
            self.loads[index] = handle.call("load_adapter", self.published.adapter, self.published.version)

    def _learner(self, method: str, *args) -> Any:
        with self._learner_failure(method):
            return self.system.learner.call(method, *args).result()

    @contextmanager
    def _learner_failure(self, method: str):
        """Any learner failure stops the run, naming the last good checkpoint."""
        try:
            yield
        except Exception as error:
            what = str(error) if isinstance(error, RoleFailed) else f"the learner failed in {method} ({error})"
            raise RunStopped(self._stop_message(what), what) from error

    @contextmanager
    def _restarts_left(self, error: RoleError):
        """Restarts beyond cluster.max_restarts stop the run, naming the last failure and the checkpoint."""
        try:
            yield
        except RunStopped as stop:
            what = f"{stop}; the last time: {error}"
            raise RunStopped(self._stop_message(what), what) from error

    def _stop_message(self, what: str) -> str:
        return stop_message(what, self.last_checkpoint, self.run_dir)

    # ------------------------------------------------------------------ guidance and the teacher

    def _guidance(self, teacher: Handle | None, refs: list[Any]) -> tuple[Any, Any]:
        """(KL penalties, SFT labels) as refs for the learner; both None without guidance or teacher."""
        if teacher is None:
            return None, None
        method = "kl" if self.cfg.teacher.guidance == "kl" else "labels"
        pending = teacher.call(method, *refs)
        try:
            pending.result()
        except RoleError as error:
            self._teacher_failed(error)
            return None, None
        return (pending.ref, None) if method == "kl" else (None, pending.ref)

    def _teacher(self) -> Handle | None:
        """The teacher once every checkpoint sent to it is merged; None while a new one is rebuilding."""
        if self.teacher_starting is not None:
            if not self.teacher_starting.ready():
                return None
            try:
                self.teacher_starting.result()
            except RoleError as error:
                self._teacher_failed(error)
                return None
            self.log(f"{self.system.teacher.name} is back: guidance resumes")
            self.teacher_starting = None
        return self.system.teacher if self._confirm_merges() else None

    def _confirm_merges(self) -> bool:
        try:
            for _, _, pending in self.unmerged:
                self.teacher_stats = pending.result()
        except RoleError as error:
            self._teacher_failed(error)
            return False
        self.unmerged.clear()
        return True

    def _teacher_failed(self, error: RoleError) -> None:
        self.log(f"{error}; rebuilding the teacher from its checkpoint buffer, training goes on without guidance")
        with self._restarts_left(error):
            handle = self.system.restart_teacher()
        self.counters["teacher/restarts"] += 1
        self.teacher_starting = handle.call("ready")
        self.unmerged = [(v, a, handle.call("add_checkpoint", a, v)) for v, a, _ in self.unmerged]

    def _send_checkpoint(self) -> None:
        """Hand the new version to the teacher; in Ray mode the re-merge overlaps the next sample."""
        if self.system.teacher is not None:
            p = self.published
            pending = self.system.teacher.call("add_checkpoint", p.adapter, p.version)
            self.unmerged.append((p.version, p.adapter, pending))
            if self.teacher_starting is None and all(pending.ready() for _, _, pending in self.unmerged):
                self._confirm_merges()  # local mode: merged already; record its stats now

    def _publish(self) -> None:
        version, adapter = self.system.learner.call2("publish")
        with self._learner_failure("publish"):
            self.published = Published(version.result(), adapter.ref)
        for i, handle in enumerate(self.system.rollouts):
            self._load_current(i, handle)  # queued before the next sample

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        """Held-out episodes: the student's split over the rollout actors, the teacher's beside them."""
        n, workers = self.cfg.eval.episodes, len(self.system.rollouts)
        shares = [(n * i // workers, n * (i + 1) // workers - n * i // workers) for i in range(workers)]
        teacher_pending = None
        if self.system.teacher is not None and self.cfg.train.eval_teacher:
            teacher = self._teacher()
            teacher_pending = teacher.call("evaluate", 0, n) if teacher is not None else None
        parts = self._on_rollouts("evaluate", lambda i: shares[i])
        student: list[EpisodeStats] = [e for part, _ in parts for e in part]
        out = {f"eval/{k}": v for k, v in summarize(student).items()}
        if teacher_pending is not None:
            try:
                out |= {f"eval/teacher_{k}": v for k, v in summarize(teacher_pending.result()).items()}
            except RoleError as error:
                self._teacher_failed(error)
        return out

    # ------------------------------------------------------------------ checkpoints and resume

    def checkpoint(self, index: int) -> Path:
        """Every role's state in a new checkpoint folder, sealed atomically (cluster/checkpoint.py)."""
        tmp = checkpoint.begin(self.run_dir, index)
        learner = self.system.learner.call("save", str(tmp / "learner.pt"))
        self._on_rollouts("save", lambda i: (str(tmp / f"rollout-{i}.pt"),))
        with self._learner_failure("save"):
            learner.result()
        if self.system.teacher is not None:
            self._save_teacher(tmp)
        state = {
            "iteration": index,
            "policy_version": self.published.version,
            "total_env_steps": self.total_env_steps,
            "counters": self.counters,
            "incarnations": self.system.incarnations,
            "teacher_incarnation": self.system.teacher_incarnation,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.last_checkpoint = checkpoint.commit(self.run_dir, tmp, index, state, self.cfg.train.keep_checkpoints)
        return self.last_checkpoint

    def _save_teacher(self, folder: Path) -> None:
        """The teacher's RNG and a snapshot of its buffer, once it holds the published version (a
        rebuilding teacher is waited for: the checkpoint must be complete)."""
        while True:
            teacher = self._teacher()
            if teacher is None:
                time.sleep(0.2)
                continue
            try:
                teacher.call("save", str(folder / "teacher.pt")).result()
                break
            except RoleError as error:
                self._teacher_failed(error)
        CheckpointBuffer(self.system.buffer_dir).copy_into(folder / "teacher")

    def restore(self, path: Path) -> int:
        """Continue from checkpoint ``path``: role states, counters, the current adapter everywhere.
        The teacher's buffer was restored before the teacher started (``restore_teacher_buffer``).
        A failure names the file and the checkpoints that are left to resume from."""
        try:
            return self._restore(path)
        except RunStopped as error:
            raise RunStopped(f"cannot resume from {path}: {error.what}. {_other_checkpoints(path)}") from error

    def _restore(self, path: Path) -> int:
        state = checkpoint.driver_state(path)
        if not all((path / f"rollout-{i}.pt").is_file() for i in range(len(self.system.rollouts))):
            raise RunStopped(f"checkpoint {path} was written with another train.num_workers; resume with the same")
        # Counters first: a role replaced while restoring counts on from them (and gets a new actor name).
        self.counters = state["counters"]
        self.system.incarnations = state["incarnations"]
        self.system.teacher_incarnation = state["teacher_incarnation"]
        self._learner("load", str(path / "learner.pt"))
        self._on_rollouts("load", lambda i: (str(path / f"rollout-{i}.pt"),))
        version, adapter = self.system.learner.call2("current")
        with self._learner_failure("current"):
            self.published = Published(version.result(), adapter.ref)
        for i, handle in enumerate(self.system.rollouts):
            self._load_current(i, handle)
        if self.system.teacher is not None:
            if (path / "teacher.pt").is_file():
                try:
                    self.system.teacher.call("load", str(path / "teacher.pt")).result()
                except RoleError as error:
                    self._teacher_failed(error)
            if self.published.version:
                self._send_checkpoint()  # a no-op when the restored buffer already holds it
        self.total_env_steps = state["total_env_steps"]
        self.last_checkpoint = path
        return state["iteration"]


def stop_message(what: str, last_checkpoint: Path | None, run_dir: Path) -> str:
    """What stopped a run, the last good checkpoint and the command that resumes from it."""
    where = last_checkpoint or "none yet"
    return f"{what}. Last good checkpoint: {where}. Resume with: python -m cluster.launch --resume {run_dir}"


def _other_checkpoints(path: Path) -> str:
    run_dir = path.parent.parent
    others = [p.name for p in checkpoint.checkpoints(run_dir) if p != path]
    if not others:
        return "This run has no other checkpoint."
    return (
        f"Other checkpoints of this run: {', '.join(others)}; resume from one with: "
        f"python -m cluster.launch --resume {run_dir} --checkpoint {others[0]}"
    )


def restore_teacher_buffer(checkpoint_path: Path, buffer_dir: Path) -> None:
    """Put the teacher's buffer back as it was at the checkpoint (later versions are from the lost run)."""
    saved = checkpoint_path / "teacher"
    if saved.is_dir():
        CheckpointBuffer(buffer_dir).replace_from(saved)
    elif buffer_dir.is_dir():
        CheckpointBuffer(buffer_dir).clear()


def default_buffer_dir(cfg: Config, run_dir: Path) -> Path:
    return Path(cfg.train.buffer_dir) if cfg.train.buffer_dir else run_dir / "teacher"
