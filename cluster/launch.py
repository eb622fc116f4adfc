"""Entry point: train a VLM agent with PPO and a merged-checkpoint teacher.

    python -m cluster.launch --config configs/X.yaml [key=value ...]     # a new run
    python -m cluster.launch --resume RUN_DIR [--checkpoint iter-N] [key=value ...]   # continue a run
    ray job submit --working-dir . -- python -m cluster.launch --config configs/X.yaml run_dir=/abs/path

With ``cluster.mode=ray`` (the default) it starts a Ray cluster on 127.0.0.1 with the dashboard, or
joins the one in ``cluster.address`` / ``$RAY_ADDRESS`` (what ``ray job submit`` sets), checks that
every actor fits before starting any, runs the optional SFT warm start, then the training loop
(cluster/driver.py), and stops what it started. ``cluster.mode=local`` runs every component in this
process, without Ray. The run folder is locked for the run's life (one run per folder); ``--resume``
continues from the newest checkpoint that verifies (cluster/checkpoint.py).

Exit status: 0 done; 1 the run stopped (a failure, a non-finite update, an I/O error); 130 Ctrl-C; 143
SIGTERM; each of these ends with one line naming the last good checkpoint and the resume command, and a
failure inside a role (a programming error, restarts used up) prints the role's traceback above it; 2 bad
config, model path, resources or run folder (nothing was started).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import torch

from cluster import checkpoint, raymetrics
from cluster.driver import Hook, Trainer, default_buffer_dir, restore_teacher_buffer
from cluster.runlog import RunLog
from cluster.settings import eval_env_config
from cluster.storage import Pushing, Storage, StorageError
from cluster.supervisor import stop_message
from cluster.system import LocalSpawner, RunStopped, Spawner, System, local_device
from configs import Config, ConfigError, load_config
from configs.loader import parse_cli, to_yaml
from core import metric_names as names
from models.loading import resolve


class SetupError(ValueError):
    """Something to fix before a run can start (model path, device, resources); nothing was started."""


def run(
    cfg: Config, resume: bool = False, log=print, hook: Hook | None = None, checkpoint_name: str | None = None
) -> dict:
    """Train, or continue the run in ``cfg.run_dir`` from its newest intact checkpoint (or
    ``checkpoint_name``); returns the last record. The run folder is this run's alone while it runs."""
    storage = open_storage(cfg.run_dir or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}", cfg.storage_staging)
    run_dir = storage.local
    preflight(cfg)
    cfg = dataclasses.replace(cfg, run_dir=storage.location)
    with RunFolder(run_dir, log) as owned:
        _stage(storage, resume)
        latest = _resume_point(storage, checkpoint_name, log) if resume else None
        if not resume:
            owned.write("config.yaml", to_yaml(cfg))
            storage.push()
        progress = Progress(storage, latest)
        try:
            return _start(cfg, storage, latest, progress, log, hook)
        except (KeyboardInterrupt, Interrupted, OSError) as error:
            raise RunStopped(*progress.stopped(error)) from error


def open_storage(location: str, staging: str = "") -> Storage:
    try:
        return Storage(location, staging)
    except StorageError as error:
        raise SetupError(str(error)) from None


def _stage(storage: Storage, resume: bool) -> None:
    """A resumed run's files fetched into the staging folder (a URI location); a new run's location checked
    to hold none, and its staging folder emptied (a URI location)."""
    try:
        if resume:
            storage.pull()
        elif storage.holds_run():
            raise SetupError(
                f"{storage.location} already holds a run: continue it with --resume {storage.location}, or set "
                "another one"
            )
        else:
            storage.start_new()
    except StorageError as error:
        raise SetupError(str(error)) from None
    except OSError as error:
        raise SetupError(f"run_dir={storage.location} cannot be read: {error}") from None


def _start(cfg: Config, storage: Storage, latest: Path | None, progress: Progress, log, hook) -> dict:
    run_dir = storage.local
    spawner = start_spawner(cfg, run_dir, log)
    if _terminating_on_sigterm:  # ray.init put its own SIGTERM handler (an abort) in place of ours
        signal.signal(signal.SIGTERM, _terminate)
    staged = f" (written through {run_dir})" if storage.remote else ""
    log(f"run directory: {storage.location}{staged}")
    system = None
    try:
        cfg = warm_start(cfg, storage, spawner, log)
        buffer_dir = default_buffer_dir(run_dir)
        if latest is not None:
            restore_teacher_buffer(latest, buffer_dir)
        system = System(cfg, spawner, buffer_dir)
        for actor in system.wait_ready():
            log(f"  {actor['name']}: pid {actor['pid']}, {actor['device']}, {actor['threads']} threads")
        trainer = progress.trainer = Trainer(cfg, run_dir, system, log, hook)
        return _train(cfg, storage, trainer, latest, log)
    finally:
        if system is not None:
            system.shutdown()
        else:
            spawner.shutdown()


def _resume_point(storage: Storage, wanted: str | None, log) -> Path:
    try:
        choice = checkpoint.choose(storage.local, wanted)
    except checkpoint.CheckpointError as error:
        raise SetupError(str(error)) from None
    for line in choice.passed_over:
        log(f"passed over checkpoint {line}")
    if choice.passed_over:
        log(f"resuming from {choice.path.name}, the newest intact checkpoint")
    return choice.path


def _train(cfg: Config, storage: Storage, trainer: Trainer, latest: Path | None, log) -> dict:
    run_dir = storage.local
    start = trainer.restore(latest) if latest is not None else 0
    if latest is not None:
        aside = checkpoint.set_aside_after(run_dir, start)
        if aside is not None:
            log(f"checkpoints newer than {latest.name} moved to {aside} (this run supersedes them)")
        log(f"resumed from {latest} (iteration {start}, policy version {trainer.published.version})")
    sinks = raymetrics.sinks(cfg, storage.name, log)  # Ray's metrics endpoint, for Prometheus (Ray mode)
    sinks = [*sinks, Pushing(storage)]  # a URI location gets every record as it is written, checkpoints too
    runlog = RunLog(run_dir, log, resume_iteration=start if latest is not None else None, sinks=sinks)
    record: dict = {}
    try:
        if start == 0 and cfg.train.eval_before:
            began = time.perf_counter()
            record = {names.ITERATION: 0, names.TOTAL_ENV_STEPS: 0} | trainer.evaluate()
            runlog.write(record | {names.EVAL_SECONDS: time.perf_counter() - began})
        for index in range(start + 1, cfg.train.iterations + 1):
            for record in trainer.iteration(index):  # its own; first, one held for its evaluation (async)
                runlog.write(record)
        for record in trainer.finish():
            runlog.write(record)
    except BaseException:
        runlog.close_after_failure()
        _push_after_failure(storage, log)
        raise
    table = runlog.close()
    storage.push()
    log(f"\nheld-out evaluation ({cfg.eval.episodes} episodes, {cfg.env.id}):\n{table}")
    summary, curves, tb = (storage.show(run_dir / name) for name in ("summary.md", "curves.png", "tb"))
    log(f"summary: {summary}  curves: {curves}  tensorboard --logdir {tb}")
    return record


def _push_after_failure(storage: Storage, log) -> None:
    """What a stopping run wrote, copied to its location; an error doing it is a line in the log."""
    try:
        storage.push()
    except OSError as error:
        log(f"could not copy the run's files to {storage.location}: {error}")


class Interrupted(BaseException):
    """SIGTERM (``kill``, ``ray job stop``) reached the launcher; like KeyboardInterrupt, no ``except
    Exception`` (a role's failure handling) takes it for an error to recover from."""


class Progress:
    """The last good checkpoint while a run goes on, and the one line that ends a stopped run."""

    def __init__(self, storage: Storage, resumed_from: Path | None):
        self.storage, self.resumed_from = storage, resumed_from
        self.trainer: Trainer | None = None

    def stopped(self, error: BaseException) -> tuple[str, str, int]:
        """(message, what happened, exit status) for an interrupt or an I/O error."""
        if isinstance(error, KeyboardInterrupt):
            what, code = "interrupted (Ctrl-C)", 130
        elif isinstance(error, Interrupted):
            what, code = "terminated (SIGTERM)", 143
        elif getattr(error, "filename", None):
            what, code = f"cannot write or read {error.filename}: {error.strerror or error}", 1
        else:
            what, code = f"{type(error).__name__}: {error}", 1
        last = self.trainer.last_checkpoint if self.trainer is not None else None
        return stop_message(what, last or self.resumed_from, self.storage.local, self.storage.location), what, code


class RunFolder:
    """A run folder owned by one live run: an exclusive lock (``flock`` on ``<run_dir>/.lock``) held
    for the run's life and released by the OS however the process ends. The lock file names its
    owner; an owner's name left behind says that run ended without cleaning up (killed)."""

    LOCK = ".lock"

    def __init__(self, run_dir: Path, log):
        self.run_dir, self.log = run_dir, log
        self._file = None
        self._created = False
        self._written: list[Path] = []

    def __enter__(self) -> RunFolder:
        self._created = not self.run_dir.exists()
        while not self._lock():  # the lock file was removed under us (a run that failed to start): again
            pass
        previous = self._owner()
        if previous is not None:
            self.log(f"{self.run_dir}: the run that held it before ({previous}) ended without releasing it (killed?)")
        self._file.seek(0)
        self._file.truncate()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._file.write(json.dumps(me | {"command": " ".join(sys.argv)}))
        self._file.flush()
        return self

    def _lock(self) -> bool:
        path = self.run_dir / self.LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a+")
        except OSError as error:
            raise SetupError(
                f"run_dir {self.run_dir} cannot be used: {error.strerror}; set run_dir to a folder you can write"
            ) from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner() or "its owner has not written its name yet"
            self._file.close()
            raise SetupError(
                f"{self.run_dir} is in use by another run ({owner}). Wait for it to end or stop it, or set another "
                "run_dir"
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(self._file.fileno()).st_ino:
            return True
        self._file.close()
        return False

    def write(self, name: str, text: str) -> None:
        (self.run_dir / name).write_text(text)
        self._written.append(self.run_dir / name)

    def __exit__(self, kind, error, tb) -> None:
        if isinstance(error, SetupError):  # nothing ran: leave the folder as it was found
            for path in self._written:
                path.unlink(missing_ok=True)
            (self.run_dir / self.LOCK).unlink()  # while locked: a launch that opened it meanwhile opens anew
            if self._created and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
        self._file.seek(0)
        self._file.truncate()  # an empty lock file: its last owner ended cleanly
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()

    def _owner(self) -> str | None:
        """Who the lock file names (a live owner, or one that was killed), or None (an empty file)."""
        self._file.seek(0)
        try:
            owner = json.loads(self._file.read() or "null")
        except ValueError:
            owner = None
        if not isinstance(owner, dict):
            return None
        return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: {owner.get('command')}"


def preflight(cfg: Config) -> None:
    """Checks that need no actor: the model path, a held-out split apart from training, and CUDA where
    the config asks for it."""
    try:
        resolve(cfg.policy.path)
    except (FileNotFoundError, ValueError) as error:
        raise SetupError(f"policy.path: {error}") from None
    try:
        eval_env_config(cfg)
    except ValueError as error:
        raise SetupError(str(error)) from None
    if cfg.policy.engine == "vllm":
        from models.engines.vllm import VLLMUnavailable, check_available

        ray = cfg.cluster.mode == "ray"
        device = ("cuda" if cfg.cluster.rollout.num_gpus > 0 else "cpu") if ray else local_device(cfg, "rollout")
        try:  # a Ray driver need not see the GPUs its actors get: only the installed build is checked there
            check_available(device, visible=not ray)
        except VLLMUnavailable as error:
            raise SetupError(f"policy.engine=vllm: {error}") from None
    if cfg.cluster.mode == "local":
        for kind in ("rollout", "teacher"):
            if local_device(cfg, kind).startswith("cuda") and not torch.cuda.is_available():
                raise SetupError(
                    f"{'teacher.device' if kind == 'teacher' else 'policy.device'}={local_device(cfg, kind)} "
                    "but CUDA is not available here; use cpu"
                )


def start_spawner(cfg: Config, run_dir: Path, log) -> Spawner:
    if cfg.cluster.mode == "local":
        log("local mode: every component in this process (no Ray)")
        return LocalSpawner()
    from cluster import remote  # Ray only when asked for

    try:
        spawner = remote.start(cfg, namespace=f"gtr-turbo-{run_dir.name}", log=log)
    except remote.ResourceError as error:
        raise SetupError(str(error)) from None
    where = "started here" if spawner.cluster.started_here else "joined"
    log(f"ray cluster ({where}): {spawner.cluster.address}")
    log(f"dashboard: {spawner.cluster.dashboard_url or 'off (cluster.dashboard=false)'}")
    return spawner


def _sft_warm_start(cfg: Config, folder: str, token: str) -> dict[str, bytes] | None:
    """The SFT warm start, in a scratch folder on whichever node runs it. Where that node sees the run's folder
    (the same machine, or a shared disk: ``token`` is there) its files are moved into ``folder`` and None is
    returned; elsewhere every file it wrote (the checkpoint, its summary) is returned for the driver to write."""
    from cluster.warm_start import run

    target = Path(folder)
    shared = (target / token).is_file()
    scratch = Path(tempfile.mkdtemp(prefix=".warm-start-", dir=target if shared else None))
    try:
        output = scratch / "checkpoint"
        sft = dataclasses.replace(cfg.sft, output=str(output))
        run(dataclasses.replace(cfg, run_dir=str(scratch), sft=sft), evaluate_at_end=False)
        if shared:
            for path in scratch.iterdir():
                path.rename(target / path.name)
            return None
        return {p.relative_to(scratch).as_posix(): p.read_bytes() for p in sorted(scratch.rglob("*")) if p.is_file()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def warm_start(cfg: Config, storage: Storage, spawner: Spawner, log) -> Config:
    """With ``train.warm_start=sft``: SFT from ``policy.path`` (once per run), then train from it. The
    checkpoint is written into the run (``warm_start/checkpoint``); with a URI location the roles fetch it
    from there into their node's cache (models/loading.py)."""
    if cfg.train.warm_start != "sft":
        return cfg
    folder = storage.local / "warm_start"
    output = folder / "checkpoint"
    if (output / "config.json").is_file():
        log(f"warm start: reusing {storage.show(output)}")
    else:
        log(f"warm start: SFT on {cfg.env.id} from {cfg.policy.path} ({cfg.sft.steps} steps)")
        began = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)  # a warm start cut off before its checkpoint
        folder.mkdir(parents=True)
        token = f".driver-{uuid.uuid4().hex}"  # the task finds it where it shares this disk
        (folder / token).touch()
        files = spawner.run("learner", _sft_warm_start, cfg, str(folder), token)
        (folder / token).unlink()
        for relative, data in (files or {}).items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
        summary = folder / "sft_summary.json"
        if summary.is_file():  # it names the scratch folder the task wrote in
            summary.write_text(
                json.dumps(json.loads(summary.read_text()) | {"checkpoint": storage.show(output)}, indent=2)
            )
        storage.push()
        log(f"warm start: done in {(time.perf_counter() - began) / 60:.1f} min -> {storage.show(output)}")
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, path=storage.show(output)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a VLM agent with PPO and a merged-checkpoint teacher")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its newest intact checkpoint")
    parser.add_argument("--checkpoint", metavar="NAME", help="with --resume: this checkpoint (e.g. iter-00000004)")
    args, cfg = _config(parser, argv)
    if args.checkpoint is not None and args.resume is None:
        parser.error("--checkpoint needs --resume RUN_DIR")
    global _terminating_on_sigterm
    previous, _terminating_on_sigterm = signal.signal(signal.SIGTERM, _terminate), True
    try:
        run(cfg, resume=args.resume is not None, checkpoint_name=args.checkpoint)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        if error.__cause__ is not None and not _said_in_one_line(error):
            traceback.print_exception(error.__cause__, file=sys.stderr)  # a Ray error's includes the actor's
        print(f"run stopped: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)
        _terminating_on_sigterm = False
    return 0


def _said_in_one_line(error: BaseException) -> bool:
    """An interrupt or an I/O error (in the driver or in a role): its message says all, no traceback."""
    seen = []
    while error is not None and error not in seen:
        if isinstance(error, KeyboardInterrupt | Interrupted | OSError):
            return True
        seen.append(error)
        error = error.__cause__ or getattr(error, "cause", None)  # a RayTaskError's cause is the role's error
    return False


_terminating_on_sigterm = False  # main() turns SIGTERM into Interrupted (a library caller keeps its own)


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the run is stopping
    raise Interrupted()


def _config(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, Config]:
    """A new run's config (--config + overrides), or a resumed run's own config.yaml + overrides."""
    args, cfg = parse_cli(parser, argv)
    if args.resume is None:
        return args, cfg
    if args.config is not None:
        parser.error("--resume uses the run's own config.yaml; pass changes as key=value overrides")
    try:
        storage = Storage(args.resume, _staging_override(args.overrides))
        storage.pull(only="config.yaml")  # a URI location: its config first (run pulls the rest)
        cfg = load_config(storage.local / "config.yaml", [*args.overrides, f"run_dir={storage.location}"])
    except (ConfigError, StorageError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, cfg


def _staging_override(overrides: list[str]) -> str:
    found = [o.split("=", 1)[1] for o in overrides if o.startswith("storage_staging=")]
    return found[-1] if found else ""


if __name__ == "__main__":
    sys.exit(main())
