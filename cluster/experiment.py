"""A grid of training runs x seeds from one SFT warm start and one env-step budget, and its results.

    python -m cluster.experiment configs/experiments/ezpoints_main.yaml [--only kl,ppo] [--parallel 2]
                                                                         [--results-only]

1. The SFT warm start runs once (``python -m cluster.sft`` on the base config); every run starts from
   its checkpoint, and its held-out evaluation is every run's point at env step 0.
2. Every (run, seed) is ``python -m cluster.launch`` in a subprocess with the base config, the
   experiment's overrides, the run's overrides and ``seed=<k>``; all runs evaluate on the same held-out
   episodes (``eval.seed``), and all share the base config's env-step budget (iterations x rounds x
   envs x workers; an override that changes it is refused). Every run sets ``teacher.required=true``
   unless the base config or an override sets it: a run whose teacher failed stops rather than train on
   without guidance, which would blur the comparison. ``parallel`` runs go side by side (one per
   core here). A run that finished before (it trained all its iterations) is not run again, and one cut off
   resumes from its newest intact checkpoint (``cluster.launch --resume``; from scratch if it had none),
   so an interrupted experiment continues where it stopped; its log is ``<output>/<run>/seed<k>/launch.log``.
   Every start of a run (and of the warm start) adds a line to its ``provenance.jsonl``: the time, the
   project's commit and the CPU, so a grid that spans sessions and machines says what ran where.
3. ``<output>/<name>.md`` (final held-out success and return, mean and spread over seeds, a 95 % interval
   and the collapse rate: seeds 10+ points below the start at any evaluation; the merged teacher next to
   the student; every seed at every evaluation; every run against the first, the baseline: a one-sided
   Fisher test of the collapse counts and a permutation test of final success) and ``<output>/<name>.png``
   (held-out success against env steps).
   Several experiments may share one output folder (and so one warm start, and runs they have in common).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster import checkpoint
from cluster.runlog import read_records
from configs import ConfigError, load_config
from core import metric_names as names


@dataclass
class ExperimentSpec:
    name: str = "experiment"
    base: str = ""  # a training config every run starts from ("" = the schema's defaults)
    overrides: list[str] = field(default_factory=list)  # applied to every run and to the warm start
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_seed: int = 0  # every run evaluates on the held-out episodes of this seed
    runs: dict[str, list[str]] = field(default_factory=dict)  # run name -> its overrides
    parallel: int = 2  # runs side by side
    output: str = ""  # "" = runs/experiments/<name>


def load_spec(path: str | Path, cli: list[str] = ()) -> ExperimentSpec:
    try:
        spec = OmegaConf.merge(OmegaConf.structured(ExperimentSpec), OmegaConf.load(path), OmegaConf.from_dotlist(cli))
        spec = OmegaConf.to_object(spec)
    except OmegaConfBaseException as error:
        raise ConfigError(f"experiment file {path}: {str(error).splitlines()[0]}") from None
    if not spec.runs or not spec.seeds or spec.parallel < 1:
        raise ConfigError(f"experiment file {path}: needs at least one run, one seed and parallel >= 1")
    return spec


@dataclass
class Job:
    run: str
    seed: int
    folder: Path
    argv: list[str]


def env_steps(cfg) -> int:
    return cfg.train.iterations * cfg.train.rounds * cfg.rollout.num_envs * cfg.train.num_workers


def plan(spec: ExperimentSpec, output: Path) -> tuple[list[str], list[Job]]:
    """The warm start's command and every run's, each config checked before anything starts."""
    config = ["--config", spec.base] if spec.base else []
    base = [*config, *spec.overrides]
    common = [f"eval.seed={spec.eval_seed}"]
    start = output / "warm_start"
    warm = [*base, *common, f"seed={spec.eval_seed}", f"run_dir={start}", f"sft.output={start / 'checkpoint'}"]
    budget = env_steps(_load(base + common))
    jobs, required = [], _teacher_required(spec)
    for seed in spec.seeds:  # seed by seed: a grid cut off part-way has every arm at the same seeds
        for run, overrides in spec.runs.items():
            folder = output / run / f"seed{seed}"
            argv = [*config, *required, *spec.overrides, *overrides, *common, f"seed={seed}", f"run_dir={folder}"]
            argv += [f"policy.path={start / 'checkpoint'}", "train.warm_start=none", "train.eval_before=false"]
            cfg = _load(argv)
            if env_steps(cfg) != budget:
                steps = env_steps(cfg)
                raise ConfigError(f"run {run} trains {steps} env steps, the experiment {budget}: keep one budget")
            jobs.append(Job(run, seed, folder, argv))
    return warm, jobs


def _teacher_required(spec: ExperimentSpec) -> list[str]:
    """``teacher.required=true``, placed before every override (a later one wins), unless the base config
    sets the key itself."""
    if spec.base and OmegaConf.select(OmegaConf.load(spec.base), "teacher.required") is not None:
        return []
    return ["teacher.required=true"]


def _load(argv: list[str]):
    """The config a command line of ``--config X key=value ...`` stands for."""
    config = argv[1] if argv[:1] == ["--config"] else None
    return load_config(config, argv[2:] if config else argv)


def run_all(spec: ExperimentSpec, output: Path, only: set[str] | None, log=print) -> None:
    warm, jobs = plan(spec, output)
    output.mkdir(parents=True, exist_ok=True)
    start = output / "warm_start" / "checkpoint"
    if not (start / "config.json").is_file():
        log(f"warm start -> {start}")
        record_provenance(output / "warm_start")
        _run([sys.executable, "-m", "cluster.sft", *warm], output / "warm_start.log")
    todo = [j for j in jobs if (only is None or j.run in only) and not finished(j.folder)]
    log(f"{len(todo)} runs to go ({len(jobs)} in the grid), {spec.parallel} at a time")
    running: list[tuple[Job, subprocess.Popen, float]] = []
    while todo or running:
        while todo and len(running) < spec.parallel:
            job = todo.pop(0)
            argv = [sys.executable, "-m", "cluster.launch", *job.argv]
            if _resumable(job.folder):  # a run cut off before its end: on from its newest intact checkpoint
                argv = [sys.executable, "-m", "cluster.launch", "--resume", str(job.folder)]
                log(f"resuming {job.run} seed {job.seed} from {checkpoint.choose(job.folder).path.name}")
            else:
                if job.folder.exists():  # cut off before its first checkpoint: from scratch
                    shutil.rmtree(job.folder)
                job.folder.mkdir(parents=True)
                log(f"started {job.run} seed {job.seed}")
            record_provenance(job.folder)
            running.append((job, _start(argv, job.folder / "launch.log"), time.perf_counter()))
        time.sleep(1.0)
        for item in list(running):
            job, process, began = item
            if process.poll() is not None:
                running.remove(item)
                minutes = (time.perf_counter() - began) / 60
                state = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see launch.log)"
                log(f"{job.run} seed {job.seed}: {state} in {minutes:.1f} min")
                before = _minutes(job.folder)  # a resumed run adds its time to the cut-off one's
                (job.folder / "wall_minutes.txt").write_text(f"{before + minutes:.2f}\n")


def finished(folder: Path) -> bool:
    """Whether the run in ``folder`` trained every iteration its config asks for. (Not whether it wrote
    summary.md: a run stopped part-way writes one too.)"""
    config, metrics = folder / "config.yaml", folder / "metrics.jsonl"
    if not (config.is_file() and metrics.is_file()):
        return False
    iterations = OmegaConf.load(config).train.iterations
    return any(record.get(names.ITERATION, 0) >= iterations for record in read_records(metrics))


PROVENANCE = "provenance.jsonl"  # every start of a run: time, commit, CPU
ROOT = Path(__file__).resolve().parent.parent


def record_provenance(folder: Path) -> None:
    """Add this start's time, commit and CPU to ``<folder>/provenance.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    line = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": project_commit(), "cpu": cpu_name()}
    with open(folder / PROVENANCE, "a") as out:
        out.write(json.dumps(line) + "\n")


def project_commit() -> str:
    """The project's commit, ``+changes`` when its code differs from it (results folders aside); ``unknown``
    outside a git checkout."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def cpu_name() -> str:
    """The CPU's model name and core count (``/proc/cpuinfo`` where there is one)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def provenance(output: Path, data: Curves) -> str:
    """Which commits and CPUs the finished runs (``data``, as ``curves`` gives) and the warm start ran on,
    with their counts."""
    runs = [output / run / f"seed{seed}" for run, seeds in data.items() for seed in seeds]
    starts = [
        json.loads(line)
        for folder in [output / "warm_start", *runs]
        if (folder / PROVENANCE).is_file()
        for line in (folder / PROVENANCE).read_text().splitlines()
    ]
    if not starts:
        return ""
    commits, cpus = (Counter(start[key] for start in starts) for key in ("commit", "cpu"))
    by_commit = "; ".join(f"{commit} ({n})" for commit, n in commits.items())
    by_cpu = "; ".join(f"{cpu} ({n})" for cpu, n in cpus.items())
    return f"Starts of the warm start and the finished runs, by commit: {by_commit}. By CPU: {by_cpu}.\n"


def _resumable(folder: Path) -> bool:
    try:
        checkpoint.choose(folder)
    except checkpoint.CheckpointError:
        return False
    return (folder / "config.yaml").is_file()


def _start(argv: list[str], log_path: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, stdout=open(log_path, "a"), stderr=subprocess.STDOUT, env=env)


def _run(argv: list[str], log_path: Path) -> None:
    if _start(argv, log_path).wait() != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed; see {log_path}")


# ---------------------------------------------------------------------- results


def start_point(output: Path) -> dict[str, float]:
    """The warm start's held-out evaluation: every run's point at env step 0."""
    summary = output / "warm_start" / "sft_summary.json"
    if not summary.is_file():
        return {}
    history = json.loads(summary.read_text())["history"]
    return history[-1] if history else {}


Curves = dict[str, dict[int, list[tuple[int, dict]]]]  # run -> seed -> [(env steps, evaluation record)]


def curves(output: Path, spec: ExperimentSpec) -> Curves:
    """run -> seed -> [(env steps, evaluation record)], the warm start's at 0."""
    start = start_point(output)
    out: dict[str, dict[int, list[tuple[int, dict]]]] = {}
    for run in spec.runs:
        for seed in spec.seeds:
            path = output / run / f"seed{seed}" / "metrics.jsonl"
            if not finished(path.parent):
                continue
            points = [(0, {names.EVAL + k: v for k, v in start.items()})] if start else []
            points += [(r[names.TOTAL_ENV_STEPS], r) for r in read_records(path) if names.EVAL_SUCCESS in r]
            out.setdefault(run, {})[seed] = points
    return out


def _stat(values: list[float], percent: bool) -> str:
    if not values:
        return "-"
    scale = 100 if percent else 1
    mean, std = scale * float(np.mean(values)), scale * float(np.std(values))
    unit = " %" if percent else ""
    spread = f" ({scale * min(values):.0f}-{scale * max(values):.0f})" if percent else ""
    return f"{mean:.1f}{unit} ± {std:.1f}{spread}"


# Student's t, 97.5 % quantile, by degrees of freedom (a 95 % interval of a mean over seeds); a df between
# two rows takes the smaller df's, wider, value.
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
    60: 2.000,
}


def interval95(values: list[float]) -> tuple[float, float]:
    """The t interval of the mean of ``values`` (seeds), (nan, nan) below two values."""
    if len(values) < 2:
        return float("nan"), float("nan")
    df = len(values) - 1
    t = T975[max(k for k in T975 if k <= df)] if df <= 60 else 1.96
    mean, half = float(np.mean(values)), t * float(np.std(values, ddof=1)) / len(values) ** 0.5
    return mean - half, mean + half


def rate_interval95(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95 % interval of a rate seen k times in n trials: the collapse rate over
    seeds, where n is 5 and a normal approximation would be meaningless."""

    def tail(p: float, at_least: int) -> float:  # P(X >= at_least), X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(at_least, n + 1))

    def solve(f, target: float) -> float:  # f increases with p; bisection
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(lambda p: tail(p, k), 0.025)
    high = 1.0 if k == n else solve(lambda p: tail(p, k + 1), 0.975)
    return low, high


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p that the first group's rate is the higher: k1 of n1 seeds against k2 of n2.
    Given k1 + k2 events among n1 + n2 seeds, the chance that n1 seeds drawn at random hold k1 or more."""
    events, seeds = k1 + k2, n1 + n2
    ways = sum(math.comb(events, i) * math.comb(seeds - events, n1 - i) for i in range(k1, min(events, n1) + 1))
    return ways / math.comb(seeds, n1)


EXACT_PERMUTATIONS = 200_000  # above this many splits of the seeds, permutation_p samples this many instead


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided permutation p of the difference in means of a and b: the share of all splits of the pooled
    values into groups of their sizes whose |difference| is at least the one seen. Exact (every split) up to
    EXACT_PERMUTATIONS splits, sampled past that (seeded, so a report rebuilds the same). It assumes nothing
    about the shape of the values: a collapsed seed is an outlier a t test would misread."""
    pooled, size = np.asarray([*a, *b], dtype=float), len(a)
    seen = abs(float(np.mean(a)) - float(np.mean(b))) - 1e-12
    total = pooled.sum()

    def gap(first_sum: float) -> float:
        return abs(first_sum / size - (total - first_sum) / (len(pooled) - size))

    if math.comb(len(pooled), size) <= EXACT_PERMUTATIONS:
        sums = [pooled[list(pick)].sum() for pick in itertools.combinations(range(len(pooled)), size)]
    else:
        rng = np.random.default_rng(0)
        sums = [pooled[rng.permutation(len(pooled))[:size]].sum() for _ in range(EXACT_PERMUTATIONS)]
    return sum(gap(s) >= seen for s in sums) / len(sums)


COLLAPSE_POINTS = 0.10  # a seed collapses when an evaluation falls this far below the start


def collapsed(points: list[tuple[int, dict]], start: float) -> bool:
    """Whether any evaluation after the start fell COLLAPSE_POINTS or more below ``start``."""
    return any(_fallen(r, start) for _, r in points[1:])


def ended_down(points: list[tuple[int, dict]], start: float) -> bool:
    """Whether the last evaluation after the start is still COLLAPSE_POINTS or more below ``start``."""
    return len(points) > 1 and _fallen(points[-1][1], start)


def _fallen(record: dict, start: float) -> bool:
    return record[names.EVAL_SUCCESS] <= start - COLLAPSE_POINTS + 1e-9


def results_table(output: Path, data: Curves, start: dict[str, float]) -> str:
    lines = [
        "| run | seeds | final success | 95 % interval | collapsed (95 % interval) | success (solvable) | return "
        "| teacher success | teacher - student (mean over evals) | minutes / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if start:
        lines.append(
            f"| SFT start | - | {100 * start.get('success', 0):.1f} % | - | - | "
            f"{100 * start.get('success_solvable', start.get('success', 0)):.1f} % | {start.get('return', 0):.2f} "
            "| = student | 0 | - |"
        )
    for run, seeds in data.items():
        finals = [points[-1][1] for points in seeds.values()]
        gaps = [gap for at_step in _gaps(seeds).values() for gap in at_step]
        minutes = [_minutes(output / run / f"seed{s}") for s in seeds]
        low, high = interval95([r[names.EVAL_SUCCESS] for r in finals])
        ci = f"{100 * max(low, 0.0):.1f}-{100 * min(high, 1.0):.1f} %" if low == low else "-"  # a rate: 0-100 %
        fell, down = _collapses(seeds, start) if start else (None, None)
        lines.append(
            f"| {run} | {len(seeds)} | {_stat([r[names.EVAL_SUCCESS] for r in finals], True)} | {ci} | "
            f"{_collapse_cell(fell, down, len(seeds))} | "
            f"{_stat([r.get(names.EVAL_SUCCESS_SOLVABLE, r[names.EVAL_SUCCESS]) for r in finals], True)} | "
            f"{_stat([r[names.EVAL_RETURN] for r in finals], False)} | "
            f"{_stat([r[names.EVAL_TEACHER_SUCCESS] for r in finals if names.EVAL_TEACHER_SUCCESS in r], True)} | "
            f"{(f'{100 * np.mean(gaps):+.1f} points') if gaps else '-'} | "
            f"{np.mean([m for m in minutes if m]) if any(minutes) else 0:.1f} |"
        )
    return "\n".join(lines)


def seed_table(data: Curves) -> str:
    """Every seed's held-out success at every evaluation, so that a dip that recovered reads apart from a fall
    that stayed (both count as collapsed)."""
    lines = ["| run | seed | held-out success at each evaluation (%) | lowest after the start | last |"]
    lines.append("|---|---|---|---|---|")
    for run, seeds in data.items():
        for seed, points in sorted(seeds.items()):
            values = [100 * r[names.EVAL_SUCCESS] for _, r in points]
            each = " / ".join(f"{v:.0f}" for v in values)
            lines.append(f"| {run} | {seed} | {each} | {min(values[1:] or values):.1f} | {values[-1]:.1f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _collapses(seeds: dict[int, list[tuple[int, dict]]], start: dict[str, float]) -> tuple[int, int]:
    """How many seeds collapsed (at any evaluation), and how many were still down at the end."""
    fell = sum(collapsed(points, start["success"]) for points in seeds.values())
    return fell, sum(ended_down(points, start["success"]) for points in seeds.values())


def _collapse_cell(fell: int | None, down: int | None, seeds: int) -> str:
    if fell is None:
        return "-"
    low, high = rate_interval95(fell, seeds)
    return f"{fell} of {seeds} ({100 * low:.0f}-{100 * high:.0f} %; {down} at the end)"


def versus_table(data: Curves, start: dict[str, float]) -> str:
    """Every run against the first (the baseline, e.g. plain PPO): the collapse counts with a one-sided Fisher
    test (does the baseline collapse more often?), at any evaluation and at the end, and the difference in
    final success with a two-sided permutation test. Empty without the start (``start_point``) or with one
    run."""
    if not start or len(data) < 2:
        return ""
    (first, base), *others = data.items()
    lines = [
        f"| run | collapsed: run / {first} | Fisher p ({first} more) | down at the end: run / {first} "
        f"| Fisher p ({first} more) | final success, run - {first} | permutation p |",
        "|---|---|---|---|---|---|---|",
    ]

    def finals(seeds) -> list[float]:
        return [points[-1][1][names.EVAL_SUCCESS] for points in seeds.values()]

    base_counts, m = _collapses(base, start), len(base)
    for run, seeds in others:
        n, cells = len(seeds), []
        for k, j in zip(_collapses(seeds, start), base_counts, strict=True):  # at any evaluation, at the end
            cells += [f"{k} of {n} / {j} of {m}", f"{fisher_greater(j, m, k, n):.2f}"]
        difference = 100 * (np.mean(finals(seeds)) - np.mean(finals(base)))
        cells += [f"{difference:+.1f} points", f"{permutation_p(finals(seeds), finals(base)):.2f}"]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def teacher_table(data: Curves) -> str:
    """The merged teacher as a policy next to the student, at every evaluation (mean over seeds)."""
    lines = [
        "| run | env steps | student success | teacher success | teacher - student | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for run, seeds in data.items():
        steps = sorted({s for points in seeds.values() for s, r in points if names.EVAL_TEACHER_SUCCESS in r})
        for step in steps:
            pairs = [
                (r[names.EVAL_SUCCESS], r[names.EVAL_TEACHER_SUCCESS])
                for points in seeds.values()
                for s, r in points
                if s == step and names.EVAL_TEACHER_SUCCESS in r
            ]
            student, teacher = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
            lines.append(
                f"| {run} | {step} | {100 * student:.1f} % | {100 * teacher:.1f} % | "
                f"{100 * (teacher - student):+.1f} | {len(pairs)} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def _minutes(folder: Path) -> float:
    path = folder / "wall_minutes.txt"
    return float(path.read_text()) if path.is_file() else 0.0


def plot(data: Curves, title: str, path: Path) -> None:
    """Held-out success against env steps (each arm's mean over seeds, its min-max band and every seed thin),
    and, where a run evaluates its merged teacher, teacher - student at every evaluation (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = {run: _gaps(seeds) for run, seeds in data.items()}
    panels = 2 if any(gaps.values()) else 1
    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 5), squeeze=False)
    success, gap = axes[0][0], axes[0][-1]
    for run, seeds in data.items():
        steps = sorted({s for points in seeds.values() for s, _ in points})
        rows = [[dict(points).get(s, {}).get(names.EVAL_SUCCESS) for s in steps] for points in seeds.values()]
        mean = [np.mean([r[i] for r in rows if r[i] is not None]) for i in range(len(steps))]
        low = [min(r[i] for r in rows if r[i] is not None) for i in range(len(steps))]
        high = [max(r[i] for r in rows if r[i] is not None) for i in range(len(steps))]
        (line,) = success.plot(steps, mean, marker="o", label=f"{run} ({len(seeds)} seeds)")
        success.fill_between(steps, low, high, alpha=0.15, color=line.get_color())
        for row in rows:
            kept = [(s, v) for s, v in zip(steps, row, strict=True) if v is not None]
            success.plot(*zip(*kept, strict=True), linewidth=0.6, alpha=0.4, color=line.get_color())
        if panels == 2 and gaps[run]:
            at = sorted(gaps[run])
            gap.plot(at, [np.mean(gaps[run][s]) for s in at], marker="o", color=line.get_color(), label=run)
    success.set_xlabel("env steps")
    success.set_ylabel("held-out success (mean; band min-max, thin lines: seeds)")
    success.set_title(title)
    success.legend()
    if panels == 2:
        gap.axhline(0.0, color="grey", linewidth=0.8)
        gap.set_xlabel("env steps")
        gap.set_ylabel("teacher - student, held-out success (mean over seeds)")
        gap.set_title("the merged teacher as a policy")
        gap.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _gaps(seeds: dict[int, list[tuple[int, dict]]]) -> dict[int, list[float]]:
    """env steps -> teacher - student success at that evaluation, one value per seed that evaluated both."""
    out: dict[int, list[float]] = {}
    for points in seeds.values():
        for step, r in points:
            if names.EVAL_TEACHER_SUCCESS in r:
                out.setdefault(step, []).append(r[names.EVAL_TEACHER_SUCCESS] - r[names.EVAL_SUCCESS])
    return out


def write_results(output: Path, spec: ExperimentSpec) -> str:
    data = curves(output, spec)  # the finished runs, read once for the table, the plot and provenance
    start = start_point(output)
    table = results_table(output, data, start)
    runs = f"{output}/<run>/seed<k>/ (summary.md, metrics.jsonl)"
    text = f"# {spec.name}\n\n{table}\n\nPlot: {spec.name}.png. Runs: {runs}.\n"
    ran = provenance(output, data)
    if ran:
        text += f"\n{ran}"
    every = seed_table(data)
    if every:
        text += f"\n## Every seed (the first value is the warm start's)\n\n{every}\n"
    versus = versus_table(data, start)
    if versus:
        first = next(iter(data))
        text += f"\n## Every run against {first}\n\n{versus}\n"
    teacher = teacher_table(data)
    if teacher:
        text += f"\n## The merged teacher as a policy, at every evaluation\n\n{teacher}\n"
    (output / f"{spec.name}.md").write_text(text)
    plot(data, spec.name, output / f"{spec.name}.png")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a grid of training configs x seeds and tabulate it")
    parser.add_argument("experiment", help="an experiment file under configs/experiments/")
    parser.add_argument("--only", help="comma-separated run names to run (the results cover every finished run)")
    parser.add_argument("--results-only", action="store_true", help="only rebuild <output>/<name>.md and .png")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the experiment file (e.g. parallel=1)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.experiment, args.overrides)
        output = Path(spec.output or f"runs/experiments/{spec.name}")
        if not args.results_only:
            began = time.perf_counter()
            run_all(spec, output, set(args.only.split(",")) if args.only else None)
            print(f"grid done in {(time.perf_counter() - began) / 60:.1f} min")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(write_results(output, spec))
    print(f"results: {output / (spec.name + '.md')}  plot: {output / (spec.name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
