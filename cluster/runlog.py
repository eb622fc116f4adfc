"""What a run writes as it goes: metrics.jsonl, TensorBoard events, progress lines; at the end a PNG
of the training curves and a markdown summary.

    <run_dir>/metrics.jsonl   one JSON object per record (iteration 0 = the evaluation before training)
    <run_dir>/tb/             TensorBoard events: tensorboard --logdir <run_dir>/tb
    <run_dir>/curves.png      success, return, losses and time per phase against env steps
    <run_dir>/summary.md      the evaluation table, the start-vs-end table, and how many iterations ran
                              without the teacher's guidance (it was being rebuilt), when any did

A resumed run keeps the records up to its checkpoint and drops the rest (TensorBoard: purge_step).
tensorboard and matplotlib are imported lazily (STYLE.md 13); without them those outputs are skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from cluster import metrics
from core import metric_names as names

EVAL_COLUMNS = (
    ("success", "success"),
    ("success_solvable", "success (solvable)"),
    ("return", "return"),
    ("format_valid", "format valid"),
)


class Sink(Protocol):
    """Somewhere else each record goes (cluster/raymetrics.py: Ray's metrics, for Prometheus)."""

    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        log: Callable[[str], None] = print,
        resume_iteration: int | None = None,
        sinks: Sequence[Sink] = (),
    ):
        self.run_dir, self.log, self.sinks = run_dir, log, tuple(sinks)
        self.path = run_dir / "metrics.jsonl"
        if resume_iteration is not None and self.path.exists():
            kept = [r for r in read_records(self.path) if r.get(names.ITERATION, 0) <= resume_iteration]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._sink = open(self.path, "a")
        self._tb = _tensorboard(run_dir / "tb", None if resume_iteration is None else resume_iteration + 1)

    def write(self, record: dict) -> None:
        self._sink.write(json.dumps(record) + "\n")
        self._sink.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != names.ITERATION and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, record[names.ITERATION])
            self._tb.flush()
        for sink in self.sinks:
            sink.write(record)
        self.log(metrics.progress_line(record))

    def close(self) -> str:
        """Write curves.png and summary.md; returns the start-vs-end table."""
        for sink in self.sinks:
            sink.close()
        self._sink.close()
        if self._tb is not None:
            self._tb.close()
        records = read_records(self.path)
        table = start_end_table(records)
        (self.run_dir / "summary.md").write_text(summary_markdown(self.run_dir, records, table))
        plot_curves(records, self.run_dir / "curves.png")
        unguided = unguided_line(records)
        if unguided:
            self.log(unguided)
        return table

    def close_after_failure(self) -> None:
        """``close`` for a run that is stopping: what can still be written is, and an error doing it (the
        folder became unwritable, the disk is full) is a line in the log, not a second traceback."""
        try:
            self.close()
        except OSError as error:
            self.log(f"could not write the run's summary: {error}")


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tensorboard(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def _evaluations(records: list[dict]) -> list[dict]:
    return [r for r in records if names.EVAL_SUCCESS in r]


def start_end_table(records: list[dict]) -> str:
    """Held-out results at the start (after SFT / before RL), at the end, and of the merged teacher."""
    evals = _evaluations(records)
    if not evals:
        return "(no evaluation recorded)"
    first, last = evals[0], evals[-1]
    rows = [(f"student at start (iteration {first[names.ITERATION]})", first, names.EVAL)]
    if last is not first:
        rows.append((f"student at end (iteration {last[names.ITERATION]})", last, names.EVAL))
    teacher = next((r for r in reversed(evals) if names.EVAL_TEACHER_SUCCESS in r), None)
    if teacher is not None:
        version = int(teacher.get(names.MERGED_VERSION, 0))
        rows.append((f"merged teacher (iteration {teacher[names.ITERATION]}, v{version})", teacher, names.EVAL_TEACHER))
    head = "| policy | " + " | ".join(label for _, label in EVAL_COLUMNS) + " |"
    lines = [head, "|---" * (len(EVAL_COLUMNS) + 1) + "|"]
    for name, record, prefix in rows:
        cells = [_cell(record.get(prefix + key), key) for key, _ in EVAL_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if key == "return" else f"{100 * value:.1f} %"


def unguided_line(records: list[dict]) -> str:
    """ "N of M iterations ran without guidance (...)" when N > 0, else "" (STYLE.md 17: never silent)."""
    trained = [r for r in records if r.get(names.ITERATION, 0) > 0]
    unguided = int(sum(r.get(names.TEACHER_SKIPPED, 0) for r in trained))
    if not unguided:
        return ""
    return (
        f"{unguided} of {len(trained)} iterations ran without guidance (teacher rebuilding); "
        "teacher.required=true stops the run instead"
    )


def summary_markdown(run_dir: Path, records: list[dict], table: str) -> str:
    trained = [r for r in records if r.get(names.ITERATION, 0) > 0]
    unguided = unguided_line(records)
    last = trained[-1] if trained else {}
    seconds = sum(r.get(names.ITERATION_SECONDS, 0.0) for r in trained)
    lines = [
        f"# Run summary: {run_dir.name}",
        "",
        f"- iterations: {last.get(names.ITERATION, 0)}, env steps: {int(last.get(names.TOTAL_ENV_STEPS, 0))}, "
        f"policy version: {int(last.get(names.POLICY_VERSION, 0))}",
        f"- training time (sum of iteration times): {seconds / 60:.1f} min",
        *_window_line(last),
        f"- rollout actor restarts: {int(last.get(names.ROLLOUT_RESTARTS, 0))}, teacher restarts: "
        f"{int(last.get(names.TEACHER_RESTARTS, 0))}, iterations without guidance: "
        f"{int(sum(r.get(names.TEACHER_SKIPPED, 0) for r in trained))}",
        *([f"- **{unguided}**"] if unguided else []),
        "",
        "## Start and end (held-out episodes)",
        "",
        table,
        "",
        "## Every evaluation",
        "",
        "| iteration | env steps | success | success (solvable) | return | format valid | teacher success |",
        "|---|---|---|---|---|---|---|",
    ]
    columns = (
        (names.EVAL_SUCCESS, "s"),
        (names.EVAL_SUCCESS_SOLVABLE, "s"),
        (names.EVAL_RETURN, "return"),
        (names.EVAL_FORMAT_VALID, "s"),
        (names.EVAL_TEACHER_SUCCESS, "s"),
    )
    for r in _evaluations(records):
        cells = " | ".join(_cell(r.get(key), kind) for key, kind in columns)
        lines.append(f"| {r[names.ITERATION]} | {int(r.get(names.TOTAL_ENV_STEPS, 0))} | {cells} |")
    lines += ["", "Curves: curves.png; every metric: metrics.jsonl and tb/ (tensorboard --logdir tb)."]
    return "\n".join(lines) + "\n"


def _window_line(last: dict) -> list[str]:
    if names.WINDOW_SUCCESS not in last:
        return []
    return [
        f"- training success over the last {int(last[names.WINDOW_EPISODES])} ended episodes: "
        f"{100 * last[names.WINDOW_SUCCESS]:.1f} % (return {last[names.WINDOW_RETURN]:.2f}); "
        f"{100 * last.get(names.RUNNING_SHARE, 0):.0f} % of the last iteration's episodes were still running"
    ]


def plot_curves(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    window = int(max((r.get(names.WINDOW_EPISODES, 0) for r in records), default=0))
    panels = (
        (
            "success: held-out (fixed hands), training (last ended episodes)",
            (
                (names.EVAL_SUCCESS, "held-out, student"),
                (names.EVAL_TEACHER_SUCCESS, "held-out, merged teacher"),
                (names.WINDOW_SUCCESS, f"training, last {window} ended episodes (train.episode_window)"),
                (names.RUNNING_SHARE, "share of training episodes still running at iteration end"),
            ),
        ),
        (
            "return",
            (
                (names.EVAL_RETURN, "held-out, student"),
                (names.EVAL_TEACHER_RETURN, "held-out, merged teacher"),
                (names.WINDOW_RETURN, "training, last ended episodes"),
            ),
        ),
        ("policy loss, entropy / 10", ((names.POLICY_LOSS, "policy loss"), ("losses/entropy_scaled", "entropy / 10"))),
        ("value loss", ((names.VALUE_LOSS, "value loss"),)),
        ("teacher KL penalty (thought tokens)", ((names.TEACHER_KL, "KL per step"),)),
        ("seconds per phase", tuple((names.TIME + p, p) for p in metrics.PHASES)),
    )
    scaled = [{"losses/entropy_scaled": r[names.ENTROPY] / 10} if names.ENTROPY in r else {} for r in records]
    records = [r | extra for r, extra in zip(records, scaled, strict=True)]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for key, label in keys:
            points = [(r.get(names.TOTAL_ENV_STEPS, 0), r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                style = ":" if key == names.RUNNING_SHARE else "-"
                ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("env steps")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
