"""One iteration's record and its progress line. The names are the constants of core/metric_names.py
(its docstring says what each namespace holds); ``time/<phase>`` is one of PHASES (``merge_wait`` and
``merge_send`` are explained in cluster/driver.py)."""

from __future__ import annotations

from collections.abc import Sequence

from core import metric_names as names
from core.batch import Transition

PHASES = ("sample", "merge_wait", "score", "learn", "publish", "merge_send", "eval", "checkpoint")


def iteration_record(
    index: int,
    env_steps: int,
    total_env_steps: int,
    policy_version: int,
    episodes: dict[str, float],
    transitions: Sequence[Transition],
    learner: dict[str, float],
    teacher: dict[str, float],
    evaluation: dict[str, float],
    counters: dict[str, float],
    seconds: dict[str, float],
) -> dict:
    record: dict = {
        names.ITERATION: index,
        names.ENV_STEPS: env_steps,
        names.TOTAL_ENV_STEPS: total_env_steps,
        names.POLICY_VERSION: policy_version,
    }
    record |= {names.ROLLOUT + k: v for k, v in episodes.items()}
    if transitions:
        record[names.STEP_FORMAT_VALID] = sum(t.valid for t in transitions) / len(transitions)
        record[names.STEP_REWARD] = sum(t.env_reward for t in transitions) / len(transitions)
        record[names.STALE_STEPS] = float(sum(t.policy_version != policy_version - 1 for t in transitions))
    record |= learner | teacher | evaluation | counters
    record |= {names.TIME + k: v for k, v in seconds.items()}
    record[names.ITERATION_SECONDS] = sum(seconds.values())
    return record


def progress_line(record: dict) -> str:
    """One human line per iteration: counts, success, the main losses and the time per phase."""
    parts = [f"it {record.get(names.ITERATION, 0):4d}"]
    for key, label, fmt in (
        (names.TOTAL_ENV_STEPS, "steps", "{:.0f}"),
        (names.SUCCESS, "success", "{:.2f}"),
        (names.RETURN, "return", "{:.2f}"),
        (names.POLICY_LOSS, "pg", "{:.4f}"),
        (names.VALUE_LOSS, "vf", "{:.4f}"),
        (names.TEACHER_KL, "kl", "{:.4f}"),
        (names.EVAL_SUCCESS, "eval", "{:.3f}"),
        (names.EVAL_TEACHER_SUCCESS, "teacher eval", "{:.3f}"),
    ):
        if key in record:
            parts.append(f"{label} {fmt.format(record[key])}")
    if record.get(names.TEACHER_SKIPPED):
        parts.append("no guidance (teacher rebuilding)")
    times = " ".join(
        f"{k[5:]} {v:.1f}s" for k, v in record.items() if k.startswith(names.TIME) and k != names.ITERATION_SECONDS
    )
    return "  ".join(parts) + (f"  [{times}]" if times else "")
