"""Entry point: train a VLM agent with PPO and a merged-checkpoint teacher.

    python -m cluster.launch --config configs/X.yaml [key=value ...]     # a new run
    python -m cluster.launch --resume RUN_DIR [key=value ...]            # continue from its latest checkpoint
    ray job submit --working-dir . -- python -m cluster.launch --config configs/X.yaml run_dir=/abs/path

With ``cluster.mode=ray`` (the default) it starts a Ray cluster on 127.0.0.1 with the dashboard, or
joins the one in ``cluster.address`` / ``$RAY_ADDRESS`` (what ``ray job submit`` sets), checks that
every actor fits before starting any, runs the optional SFT warm start, then the training loop
(cluster/driver.py), and stops what it started. ``cluster.mode=local`` runs every component in this
process, without Ray. Exit status: 0 done, 1 the run stopped (the message names the checkpoint to
resume from), 2 bad config, model path or resources (nothing was started).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path

import torch

from cluster import checkpoint
from cluster.driver import Hook, Trainer, default_buffer_dir, restore_teacher_buffer
from cluster.runlog import RunLog
from cluster.system import LocalSpawner, RunStopped, Spawner, System, local_device
from configs import Config, ConfigError, load_config
from configs.loader import parse_cli, to_yaml
from models.loading import resolve


class SetupError(ValueError):
    """Something to fix before a run can start (model path, device, resources); nothing was started."""


def run(cfg: Config, resume: bool = False, log=print, hook: Hook | None = None) -> dict:
    """Train, or continue the run in ``cfg.run_dir`` from its latest checkpoint; returns the last record."""
    run_dir = Path(cfg.run_dir or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    latest = checkpoint.latest(run_dir) if resume else None
    if resume and latest is None:
        where = checkpoint.folder(run_dir)
        raise SetupError(f"{run_dir} holds no complete checkpoint to resume from (looked in {where})")
    if not resume and ((run_dir / "metrics.jsonl").exists() or checkpoint.folder(run_dir).exists()):
        raise SetupError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or set another run_dir")
    preflight(cfg)
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    spawner = start_spawner(cfg, run_dir, log)
    log(f"run directory: {run_dir}")
    system = None
    try:
        cfg = warm_start(cfg, run_dir, spawner, log)
        buffer_dir = default_buffer_dir(cfg, run_dir)
        if latest is not None:
            restore_teacher_buffer(latest, buffer_dir)
        system = System(cfg, spawner, buffer_dir)
        for actor in system.wait_ready():
            log(f"  {actor['name']}: pid {actor['pid']}, {actor['device']}, {actor['threads']} threads")
        return _train(cfg, run_dir, Trainer(cfg, run_dir, system, log, hook), latest, log)
    finally:
        if system is not None:
            system.shutdown()
        else:
            spawner.shutdown()


def _train(cfg: Config, run_dir: Path, trainer: Trainer, latest: Path | None, log) -> dict:
    start = trainer.restore(latest) if latest is not None else 0
    if latest is not None:
        checkpoint.discard_after(run_dir, start)
        log(f"resumed from {latest} (iteration {start}, policy version {trainer.published.version})")
    runlog = RunLog(run_dir, log, resume_iteration=start if latest is not None else None)
    record: dict = {}
    try:
        if start == 0 and cfg.train.eval_before:
            began = time.perf_counter()
            record = {"iteration": 0, "rollout/total_env_steps": 0} | trainer.evaluate()
            runlog.write(record | {"time/eval": time.perf_counter() - began})
        for index in range(start + 1, cfg.train.iterations + 1):
            record = trainer.iteration(index)
            runlog.write(record)
    finally:
        table = runlog.close()
    log(f"\nheld-out evaluation ({cfg.eval.episodes} episodes, {cfg.env.id}):\n{table}")
    log(f"summary: {run_dir / 'summary.md'}  curves: {run_dir / 'curves.png'}  tensorboard --logdir {run_dir / 'tb'}")
    return record


def preflight(cfg: Config) -> None:
    """Checks that need no actor: the model path, and CUDA where the config asks for it."""
    try:
        resolve(cfg.policy.path)
    except (FileNotFoundError, ValueError) as error:
        raise SetupError(f"policy.path: {error}") from None
    if cfg.policy.engine == "vllm":
        from actors.engines.vllm import VLLMUnavailable, check_available

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


def _sft_warm_start(cfg: Config) -> str:
    from learner import sft

    sft.run(cfg, evaluate_at_end=False)
    return cfg.sft.output


def warm_start(cfg: Config, run_dir: Path, spawner: Spawner, log) -> Config:
    """With ``train.warm_start=sft``: SFT from ``policy.path`` (once per run dir), then train from it."""
    if cfg.train.warm_start != "sft":
        return cfg
    folder = run_dir / "warm_start"
    output = folder / "checkpoint"
    if (output / "config.json").is_file():
        log(f"warm start: reusing {output}")
    else:
        s = cfg.sft
        log(f"warm start: SFT on {cfg.env.id} from {cfg.policy.path} ({s.steps} steps, cap {s.minutes} min)")
        sft_cfg = dataclasses.replace(cfg, run_dir=str(folder), sft=dataclasses.replace(cfg.sft, output=str(output)))
        began = time.perf_counter()
        spawner.run("learner", _sft_warm_start, sft_cfg)
        log(f"warm start: done in {(time.perf_counter() - began) / 60:.1f} min -> {output}")
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, path=str(output)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a VLM agent with PPO and a merged-checkpoint teacher")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    args, cfg = _config(parser, argv)
    try:
        run(cfg, resume=args.resume is not None)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        if error.__cause__ is not None:  # what failed, with its traceback (a Ray error's includes the actor's)
            traceback.print_exception(error.__cause__, file=sys.stderr)
        print(f"run stopped: {error}", file=sys.stderr)
        return 1
    return 0


def _config(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, Config]:
    """A new run's config (--config + overrides), or a resumed run's own config.yaml + overrides."""
    args, cfg = parse_cli(parser, argv)
    if args.resume is None:
        return args, cfg
    saved = Path(args.resume) / "config.yaml"
    if args.config is not None:
        parser.error("--resume uses the run's own config.yaml; pass changes as key=value overrides")
    try:
        cfg = load_config(saved, [*args.overrides, f"run_dir={Path(args.resume).resolve()}"])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, cfg


if __name__ == "__main__":
    sys.exit(main())
