"""The single-controller training loop (the paper's Algorithm 1, batched and distributed).

    for each iteration: sample -> score (teacher) -> learn -> publish -> merge -> evaluate -> checkpoint

The same loop drives Ray actors or plain objects in this process; it holds no math and no fault
handling: it calls the roles through the typed proxies of cluster/supervisor.py, whose ``Supervisor``
replaces a failed rollout actor or teacher, and stops the run where that cannot help. Every phase is
timed (``time/<phase>``); every iteration writes one record (cluster/runlog.py).

Phases: ``sample``, ``score`` (the teacher's KL penalties or SFT labels), ``learn``, ``publish``, ``eval``,
``checkpoint``, and two for the teacher's merge:
- ``merge_wait``: waiting, before scoring, for the teacher to have merged every checkpoint sent to it (in
  Ray mode the re-merge of version v overlaps the sampling with v, so this is what did not overlap; in
  local mode about 0);
- ``merge_send``: handing the newly published checkpoint to the teacher (in Ray mode about 0; in local
  mode the buffering and re-merge itself).

What overlaps in Ray mode, and what does not:
- the rollout actors sample in parallel, each stepping its K envs with one batched generate per step;
- the teacher's re-merge of version v runs while the rollout actors sample with v: the driver waits
  for it only when it next needs the teacher (scoring, evaluating it, a checkpoint);
- the student's evaluation (split over the rollout actors) runs beside the teacher's;
- with ``train.max_staleness`` = 0 (the default, the synchronous loop): learning waits for every batch
  and for the guidance, publishing for the learner, sampling for the publish.

The asynchronous loop (``train.max_staleness`` = k > 0, issue 19; docs/timeline.png shows it): sampling
runs up to k iterations ahead, each batch started with the newest adapter, so the rollout actors sample
batch i + 1 while the learner learns batch i, and a batch is learned at most k versions after the one
that sampled it (every transition records its version; the learner corrects with decoupled PPO). There
is no per-iteration barrier:
- the adapter load of version v is queued on each actor behind the sampling already under way there;
- the teacher scores batch i after its merge of version i - 1, the learner's policy (never newer);
- an evaluation of version v is queued on the actors behind the batches sampled ahead and runs beside
  the next update; that iteration's record is held until it ends and written just before the next one
  (``time/eval`` is what each iteration waited for an evaluation). The last iteration waits for its own;
- a checkpoint waits for the batches sampled ahead and stores them with it (``ahead.pt``: the actors'
  saved states are after them), so a resumed run learns them next: none lost, none used twice;
- ``time/sample`` is the wait for the batch (in local mode, where calls run one after another, the
  sampling itself), not the sampling.
Nothing is sampled past the last iteration. Local mode makes the same calls in the same order, so its
batches come from the same versions as in Ray mode.

An iteration the teacher could not guide (it was being rebuilt after a failure) trains without guidance:
``teacher/skipped`` is 1 in its record and ``teacher/unguided_iterations`` counts them; the run summary
says how many (``teacher.required`` stops the run instead).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from cluster import checkpoint, metrics
from cluster.roles import read_state
from cluster.storage import show
from cluster.supervisor import Guidance, Later, OnEach, Published, SampleCall, Sampled, Scoring, Supervisor
from cluster.system import RunStopped, System
from configs import Config
from core import metric_names as names
from core.batch import Batch, summarize
from teacher.buffer import CheckpointBuffer

AHEAD = "ahead.pt"  # a checkpoint's batches sampled ahead of the learner (asynchronous loop)
SCORED = "scored.pt"  # the teacher's guidance for the first of them, already given

Hook = Callable[[str, int, "Trainer"], None]  # (phase, iteration, trainer), called as each phase starts


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
        self.cfg, self.run_dir = cfg, run_dir
        self.hook = hook or (lambda *_: None)
        self.supervisor = Supervisor(cfg, run_dir, system, log)
        self.rollouts = self.supervisor.rollouts
        self.learner = self.supervisor.learner
        self.teacher = self.supervisor.teacher  # None without guidance
        self.published: Published | None = None
        self.total_env_steps = 0
        self.batches: list[Batch] = []  # the iteration's sampled batches, one per rollout actor (hooks read them)
        self.window = metrics.EpisodeWindow(cfg.train.episode_window)  # training success over ended episodes
        self.ahead: deque[SampleCall] = deque()  # sampling started for the next iterations, oldest first
        self.sampled_up_to = 0  # the last iteration whose batch has been started
        self.held: tuple[dict, Evaluation] | None = None  # a record waiting for its evaluation
        self.scoring: Scoring | None = None  # the teacher's guidance for the next batch, under way (async)

    @property
    def system(self) -> System:
        return self.supervisor.system

    @property
    def counters(self) -> dict[str, float]:
        return self.supervisor.counters

    @property
    def last_checkpoint(self) -> Path | None:
        return self.supervisor.last_checkpoint

    # ------------------------------------------------------------------ one iteration

    def iteration(self, index: int) -> list[dict]:
        """Iteration ``index``; returns the records finished in it: its own, after the record of an earlier
        iteration that was held while its evaluation ran beside this one's update (asynchronous loop)."""
        phase = Phases(lambda name: self.hook(name, index, self))
        with phase("sample"):  # synchronous: the whole sampling; asynchronous (Ray): what did not overlap
            self._start_sampling(index)
            sampled = self.ahead.popleft().result()
        self.batches = sampled.batches
        guidance: Guidance | None = None
        scoring, self.scoring = self.scoring, None  # asynchronous: started during the last update
        if self.teacher is not None:
            with phase("merge_wait"):  # Ray: the re-merge that did not overlap the sample; local: ~0
                merged = self.teacher.merged()
            with phase("score"):  # asynchronous: what did not overlap the last update
                if merged and scoring is not None and scoring.usable_for(sampled.refs):
                    guidance = scoring.result()
                elif merged:
                    guidance = self.teacher.guide(sampled)
            if guidance is None:  # the teacher is being rebuilt: this iteration trains without guidance
                self.counters[names.UNGUIDED_ITERATIONS] += 1
        with phase("learn"):
            update = self.learner.start_update(sampled, guidance)
            self._start_scoring()
            learned = update.result()
        with phase("publish"):
            self.published = self.learner.publish()
            self.rollouts.load_adapter(self.published)  # queued before the next sample
        if self.teacher is not None:
            with phase("merge_send"):  # local: buffering and re-merge; Ray: handing it over
                self.teacher.add_checkpoint(self.published)
        finished = []
        if self.held is not None:  # the last evaluation ran beside this update: its record is complete now
            with phase("eval"):
                finished.append(self._complete(*self.held))
            self.held = None
        evaluation = None
        if self._due(index, self.cfg.train.eval_every):
            with phase("eval"):
                evaluation = self.start_evaluation()
        transitions = [t for b in sampled.batches for t in b.transitions]
        self.total_env_steps += len(transitions)
        window = self.window.add(sampled.batches)  # before the checkpoint, which saves it
        due_checkpoint = self._due(index, self.cfg.train.checkpoint_every)
        results = {}
        synchronous = not self.cfg.train.max_staleness  # waits for its evaluation, as the loop always did
        last = index == self.cfg.train.iterations
        if evaluation is not None and (synchronous or evaluation.ready() or due_checkpoint or last):
            with phase("eval"):
                results, evaluation = evaluation.result(), None
        if due_checkpoint:
            with phase("checkpoint"):
                self.checkpoint(index)
        teacher = {}
        if self.teacher is not None:
            teacher = self.teacher.stats | {names.TEACHER_SKIPPED: float(guidance is None)}
        record = metrics.iteration_record(
            index=index,
            env_steps=len(transitions),
            total_env_steps=self.total_env_steps,
            policy_version=self.published.version,
            episodes=summarize([e for b in sampled.batches for e in b.episodes]),
            window=window,
            transitions=transitions,
            learner=learned,
            teacher=teacher,
            evaluation=results,
            counters=self.counters,
            seconds=phase.seconds,
        )
        if evaluation is not None:  # it runs on beside the next update; the record waits for it
            self.held = (record, evaluation)
            return finished
        return [*finished, record]

    def finish(self) -> list[dict]:
        """The record still held for its evaluation, if any (the last iteration holds none)."""
        held, self.held = self.held, None
        return [self._complete(*held)] if held is not None else []

    def _start_sampling(self, index: int) -> None:
        """Sampling started for iterations up to ``index + max_staleness`` (none past the last one), each
        with the newest adapter: a batch is learned at most ``max_staleness`` versions after its own."""
        last = max(index, min(index + self.cfg.train.max_staleness, self.cfg.train.iterations))
        self.sampled_up_to = max(self.sampled_up_to, index - 1)
        while self.sampled_up_to < last:
            self.ahead.append(self.rollouts.start_sample(self.cfg.train.rounds))
            self.sampled_up_to += 1

    def _start_scoring(self) -> None:
        """Asynchronous loop: the teacher scores the next batch while the learner learns this one (Ray mode:
        as soon as it is sampled), with its merge of the learner's version before this update: no newer
        than the version that will learn it."""
        if not self.cfg.train.max_staleness or self.teacher is None or not self.ahead:
            return
        refs = self.ahead[0].refs()
        if refs is not None and self.teacher.starting is None:
            self.scoring = self.teacher.start_guide(refs)

    def _complete(self, record: dict, evaluation: Evaluation) -> dict:
        return record | evaluation.result()

    def _due(self, index: int, every: int) -> bool:
        return (every and index % every == 0) or index == self.cfg.train.iterations

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        """Held-out episodes: the student's split over the rollout actors, the teacher's beside them."""
        return self.start_evaluation().result()

    def start_evaluation(self) -> Evaluation:
        """The held-out evaluation of the version just published, started: on each rollout actor after the
        sampling already queued there, on the teacher after its merge of that version."""
        n = self.cfg.eval.episodes
        teacher = self.teacher.evaluate(n) if self.teacher is not None and self.cfg.train.eval_teacher else None
        return Evaluation(self.rollouts.start_evaluate(n), teacher)

    # ------------------------------------------------------------------ checkpoints and resume

    def checkpoint(self, index: int) -> Path:
        """Every role's state in a new checkpoint folder, sealed atomically (cluster/checkpoint.py); in the
        asynchronous loop also the batches sampled ahead (the rollout actors' states are after them)."""
        ahead = [call.result() for call in self.ahead]  # first: an actor replaced on the way saves after it
        scored = None
        if self.scoring is not None and ahead and self.scoring.usable_for(ahead[0].refs):
            scored = self.scoring.value()  # the next batch's guidance, from the merge it was scored with
        self.scoring = None if scored is None else Scoring.done(self.teacher, scored, ahead[0].refs)
        tmp = checkpoint.begin(self.run_dir, index)
        if ahead:
            torch.save([s.batches for s in ahead], tmp / AHEAD)
        if scored is not None:
            torch.save({"teacher_logprobs": scored.teacher_logprobs, "labels": scored.labels}, tmp / SCORED)
        learner = self.learner.save()  # beside the rollout actors' saves
        self.rollouts.save(tmp)
        (tmp / "learner.pt").write_bytes(learner.result())
        if self.teacher is not None:
            self.teacher.save(tmp)
        state = {
            "iteration": index,
            "policy_version": self.published.version,
            "total_env_steps": self.total_env_steps,
            "episode_window": self.window.state(),
            **self.supervisor.state(),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        commit = checkpoint.commit(self.run_dir, tmp, index, state, self.cfg.train.keep_checkpoints)
        self.supervisor.last_checkpoint = commit
        return commit

    def restore(self, path: Path) -> int:
        """Continue from checkpoint ``path``: role states, counters, the current adapter everywhere.
        The teacher's buffer was restored before the teacher started (``restore_teacher_buffer``).
        A failure names the file and the checkpoints that are left to resume from."""
        try:
            return self._restore(path)
        except RunStopped as error:
            where = show(path, self.run_dir, self.cfg.run_dir)
            raise RunStopped(
                f"cannot resume from {where}: {error.what}. {_other_checkpoints(path, self.cfg.run_dir)}"
            ) from error

    def _restore(self, path: Path) -> int:
        state = checkpoint.driver_state(path)
        if not all((path / f"rollout-{i}.pt").is_file() for i in range(len(self.rollouts))):
            raise RunStopped(f"checkpoint {path} was written with another train.num_workers; resume with the same")
        self.supervisor.restore(state)  # first: a role replaced while restoring counts on (a new actor name)
        self.learner.load(path / "learner.pt")
        self.rollouts.load(path)
        self.published = self.learner.current()
        self.rollouts.load_adapter(self.published)
        if self.teacher is not None:
            if (path / "teacher.pt").is_file():
                self.teacher.load(path / "teacher.pt")
            if self.published.version:
                self.teacher.add_checkpoint(self.published)  # a no-op when the restored buffer already holds it
        self.total_env_steps = state["total_env_steps"]
        self.ahead.clear()
        if (path / AHEAD).is_file():  # sampled before the checkpoint, learned after it
            for batches in read_state(str(path / AHEAD)):
                self.ahead.append(SampleCall(done=Sampled(batches, batches)))
        self.sampled_up_to = state["iteration"] + len(self.ahead)
        self.scoring = None
        if (path / SCORED).is_file() and self.teacher is not None and self.ahead:
            batches = self.ahead[0].result().refs
            self.scoring = Scoring.done(self.teacher, Guidance(**read_state(str(path / SCORED))), batches)
        self.window.load(state.get("episode_window", []))  # absent in checkpoints before issue 18
        self.supervisor.last_checkpoint = path
        return state["iteration"]


class Evaluation:
    """A held-out evaluation under way: the student's on the rollout actors, the teacher's beside them."""

    def __init__(self, student: OnEach, teacher: Later | None):
        self.student, self.teacher = student, teacher

    def ready(self) -> bool:
        return self.student.ready() and (self.teacher is None or self.teacher.pending.ready())

    def result(self) -> dict[str, float]:
        out = {names.EVAL + k: v for k, v in summarize([e for p, _ in self.student.result() for e in p]).items()}
        episodes = self.teacher.result() if self.teacher is not None else None  # None: failed, rebuilding
        if episodes is not None:
            out |= {names.EVAL_TEACHER + k: v for k, v in summarize(episodes).items()}
        return out


def _other_checkpoints(path: Path, location: str) -> str:
    """The run's other checkpoints and the command that resumes from the newest, at the run's ``location``."""
    run_dir = path.parent.parent
    location = location or str(run_dir)
    others = [p.name for p in checkpoint.checkpoints(run_dir) if p != path]
    if not others:
        return "This run has no other checkpoint."
    return (
        f"Other checkpoints of this run: {', '.join(others)}; resume from one with: "
        f"python -m cluster.launch --resume {location} --checkpoint {others[0]}"
    )


def restore_teacher_buffer(checkpoint_path: Path, buffer_dir: Path) -> None:
    """Put the driver's copy of the teacher's buffer back as it was at the checkpoint (later versions are
    from the lost run); the teacher is started from it."""
    saved = checkpoint_path / "teacher"
    if saved.is_dir():
        CheckpointBuffer(buffer_dir).replace_from(saved)
    elif buffer_dir.is_dir():
        CheckpointBuffer(buffer_dir).clear()


def default_buffer_dir(run_dir: Path) -> Path:
    """The driver's durable copy of the teacher's checkpoints (the teacher's own is on its node)."""
    return run_dir / "teacher"
