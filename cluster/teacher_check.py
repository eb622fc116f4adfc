"""The merged teacher as a policy, taken apart: how a run's merge plays against the checkpoints it merges.

    python -m cluster.teacher_check runs/<run> [--at 5] [--episodes 100] [--density 0.8]

Reads a finished (or running) run's folder: its config, its starting weights (the SFT warm start's
checkpoint, or ``policy.path``) and the teacher's checkpoint buffer (``<run>/teacher``, every published
adapter). Every policy below plays the run's held-out evaluation episodes (same seeds, same sampling as
the run's evaluations), served by one engine as ``W0 + dW``:

- the start (``W0``) and each checkpoint ``v1 .. v<at>`` alone: the student at that version;
- merges of the newest checkpoint with itself, which must play as that checkpoint: TIES of it alone
  (at the run's density, and at density 1), TIES of it twice, the linear merge of it alone;
- the run's teacher at ``--at`` (TIES of ``v1 .. v<at>`` with the run's density and weights), the same
  at density 1 (no trimming), and the linear (weighted-mean) merge.

Beside each: the size of its update relative to the linear merge of the same checkpoints
(``|dW| / |linear|``) and its distance from it (``|dW - linear| / |linear|``), over all LoRA'd
modules. The table goes to stdout and ``<run>/teacher_check.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch

from actors.rollout import RolloutWorker
from cluster.settings import eval_env_config, eval_sampling, eval_seed_base, lora_settings, rollout_settings
from configs import Config, ConfigError, load_config
from core.batch import summarize
from core.ties import WEIGHTINGS
from models.engines.hf import HFEngine
from models.lora import adapter_modules, iter_lora_deltas
from teacher.buffer import CheckpointBuffer
from teacher.merge import merge_stream, trim_thresholds

Deltas = dict[str, torch.Tensor]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the merged teacher as a policy, against what it merges")
    parser.add_argument("run", type=Path, help="a run folder (runs/<run>) with config.yaml and teacher/")
    parser.add_argument(
        "--at", type=int, default=0, help="the newest version merged (default: the run's first evaluation)"
    )
    parser.add_argument("--episodes", type=int, default=0, help="held-out episodes per policy (default: eval.episodes)")
    parser.add_argument("--density", type=float, default=0.0, help="TIES density (default: the run's teacher.density)")
    args = parser.parse_args(argv)
    try:
        cfg, model_path, buffer = _open_run(args.run)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    versions = buffer.versions()
    at = args.at or (cfg.train.eval_every or cfg.train.iterations)
    if at not in versions:
        print(f"error: version {at} is not in {buffer.folder} (it holds {versions}); choose --at", file=sys.stderr)
        return 2
    density = args.density or cfg.teacher.density
    rows = check(cfg, model_path, buffer, [v for v in versions if v <= at], density, args.episodes, log=print)
    table = markdown(rows, cfg, at, density)
    print(table)
    (args.run / "teacher_check.md").write_text(table + "\n")
    return 0


def _open_run(run: Path) -> tuple[Config, str, CheckpointBuffer]:
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run / 'config.yaml'} does not exist: give a run folder (runs/<run>)")
    cfg = load_config(run / "config.yaml")
    warm = run / "warm_start" / "checkpoint"
    model_path = str(warm) if cfg.train.warm_start == "sft" else cfg.policy.path
    if cfg.train.warm_start == "sft" and not (warm / "config.json").is_file():
        raise FileNotFoundError(
            f"{warm} does not hold the run's SFT checkpoint; the run has not finished its warm start"
        )
    folder = run / "teacher"  # the driver's copy (before issue 20, train.buffer_dir could move it)
    if not folder.is_dir() and cfg.train.buffer_dir:
        folder = Path(cfg.train.buffer_dir)
    buffer = CheckpointBuffer(folder) if folder.is_dir() else None  # a buffer makes its folder: only open one
    if buffer is None or not buffer.versions():
        raise FileNotFoundError(f"{folder} holds no teacher checkpoints (a run with teacher.guidance=none keeps none)")
    return cfg, model_path, buffer


def check(
    cfg: Config,
    model_path: str,
    buffer: CheckpointBuffer,
    versions: list[int],
    density: float,
    episodes: int,
    log=print,
) -> list[dict]:
    """One row per policy: its label, held-out results and weight-space size and distance."""
    torch.set_num_threads(cfg.policy.threads)
    lora = lora_settings(cfg)
    engine = HFEngine(model_path, lora, dtype=cfg.policy.dtype, device="cpu", seed=cfg.seed)
    worker = RolloutWorker(
        cfg.env, engine, rollout_settings(cfg, cfg.eval.num_envs), cfg.seed, eval_env_cfg=eval_env_config(cfg)
    )
    n = episodes or cfg.eval.episodes
    newest = versions[-1]
    weights = WEIGHTINGS[cfg.teacher.weights](len(versions), cfg.teacher.ema_alpha)
    rows = []

    def play(label: str, deltas: Deltas | None, reference: Deltas | None) -> None:
        if deltas is not None:
            engine.set_module_deltas(deltas.items(), version=len(rows) + 1)
        result = summarize(worker.evaluate(n, eval_sampling(cfg), eval_seed_base(cfg)))
        row = {"policy": label, **result}
        if deltas is not None and reference is not None:
            row |= _distance(deltas, reference)
        rows.append(row)
        log(f"{label}: success {result['success']:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        play("start (W0, the SFT checkpoint)", None, None)
        alone = {v: dict(iter_lora_deltas(buffer.load(v), lora.scaling)) for v in versions}
        for v in versions:
            play(f"checkpoint v{v} alone (the student at version {v})", alone[v], alone[v])
        last = alone[newest]
        for label, copies, method, d in (
            (f"TIES of v{newest} alone, density {density:g}", 1, "ties", density),
            (f"TIES of v{newest} alone, density 1", 1, "ties", 1.0),
            (f"TIES of v{newest} twice, density {density:g}", 2, "ties", density),
            (f"linear of v{newest} alone", 1, "linear", density),
        ):
            play(label, _merge(buffer, [newest] * copies, None, method, d, lora.scaling, Path(tmp)), last)
        linear = _merge(buffer, versions, weights, "linear", density, lora.scaling, Path(tmp))
        play(
            f"the run's teacher: TIES of v{versions[0]}..v{newest}, density {density:g}, {cfg.teacher.weights}",
            _merge(buffer, versions, weights, "ties", density, lora.scaling, Path(tmp)),
            linear,
        )
        play(
            f"TIES of v{versions[0]}..v{newest}, density 1",
            _merge(buffer, versions, weights, "ties", 1.0, lora.scaling, Path(tmp)),
            linear,
        )
        play(f"linear of v{versions[0]}..v{newest}, {cfg.teacher.weights}", linear, linear)
    return rows


def _merge(
    buffer: CheckpointBuffer, versions: list[int], weights, method: str, density: float, scaling: float, tmp: Path
) -> Deltas:
    """The teacher's merge (teacher/merge.py's streamed code, as the run's teacher runs it) of ``versions``
    (repeats allowed: each copy is its own checkpoint)."""
    if weights is None:
        weights = WEIGHTINGS["sma"](len(versions), 0.5)
    folder = tmp / f"merge-{len(list(tmp.iterdir()))}"
    scratch = CheckpointBuffer(folder)
    adapters = [buffer.load(v) for v in versions]
    for i, adapter in enumerate(adapters):  # copies under new version numbers: each is its own checkpoint
        scratch.add(i + 1, adapter)
    thresholds = [trim_thresholds(a, scaling, density) for a in adapters] if method == "ties" else None
    with ExitStack() as stack:
        handles = scratch.open_all(list(range(1, len(versions) + 1)), stack)
        modules = adapter_modules(handles[0].keys())
        return dict(merge_stream(handles, modules, torch.as_tensor(weights), scaling, method, thresholds))


def _distance(deltas: Deltas, reference: Deltas) -> dict[str, float]:
    ref = sum(float(r.pow(2).sum()) for r in reference.values()) ** 0.5
    size = sum(float(d.pow(2).sum()) for d in deltas.values()) ** 0.5
    gap = sum(float((deltas[m] - reference[m]).pow(2).sum()) for m in reference) ** 0.5
    return {"size": size / max(ref, 1e-12), "gap": gap / max(ref, 1e-12)}


def markdown(rows: list[dict], cfg: Config, at: int, density: float) -> str:
    lines = [
        f"Held-out {cfg.env.id} ({int(rows[0]['episodes'])} episodes each, the run's evaluation seeds and sampling); "
        f"merges of the teacher's buffer up to v{at}, TIES density {density:g}. |dW| and |dW - ref| are relative to "
        "the reference: the checkpoint itself for the rows that merge one checkpoint, the linear merge for the rest.",
        "",
        "| policy | success | return | length | format valid | \\|dW\\| / ref | \\|dW - ref\\| / ref |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['size']:.3f}" if "size" in r else "-"
        gap = f"{r['gap']:.3f}" if "gap" in r else "-"
        lines.append(
            f"| {r['policy']} | {100 * r['success']:.1f} % | {r['return']:.2f} | {r['length']:.1f} | "
            f"{100 * r['format_valid']:.1f} % | {size} | {gap} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
