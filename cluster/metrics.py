"""Metric names, in one place. Every name is namespaced and stable across versions:

- ``rollout/``: training episodes that finished this iteration (return, success, length, format validity,
  success on solvable hands), the step counts, the policy version published at the end of the iteration,
  ``stale_steps`` (steps sampled by an older policy than the one just updated: 0, the loop is on-policy)
  and rollout actor restarts;
- ``losses/``: the learner's (policy, value, entropy, clip fraction, approx KL, grad norm, lr, ...);
- ``teacher/``: KL penalty, merge time, checkpoints in the buffer, merged version, SFT labels, restarts,
  ``teacher/skipped`` (1 when the iteration ran without guidance because the teacher was being rebuilt) and
  ``teacher/unguided_iterations`` (how many such iterations so far);
- ``eval/``: held-out episodes of the student, and ``eval/teacher_*`` of the merged teacher as a policy;
- ``time/``: seconds per phase (PHASES; ``merge_wait`` and ``merge_send`` are explained in cluster/driver.py)
  and per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        "iteration": index,
        "rollout/env_steps": env_steps,
        "rollout/total_env_steps": total_env_steps,
        "rollout/policy_version": policy_version,
    }
    record |= {f"rollout/{k}": v for k, v in episodes.items()}
    if transitions:
        record["rollout/step_format_valid"] = sum(t.valid for t in transitions) / len(transitions)
        record["rollout/step_reward"] = sum(t.env_reward for t in transitions) / len(transitions)
        record["rollout/stale_steps"] = float(sum(t.policy_version != policy_version - 1 for t in transitions))
    record |= learner | teacher | evaluation | counters
    record |= {f"time/{k}": v for k, v in seconds.items()}
    record["time/iteration"] = sum(seconds.values())
    return record


def progress_line(record: dict) -> str:
    """One human line per iteration: counts, success, the main losses and the time per phase."""
    parts = [f"it {record.get('iteration', 0):4d}"]
    for key, label, fmt in (
        ("rollout/total_env_steps", "steps", "{:.0f}"),
        ("rollout/success", "success", "{:.2f}"),
        ("rollout/return", "return", "{:.2f}"),
        ("losses/policy", "pg", "{:.4f}"),
        ("losses/value", "vf", "{:.4f}"),
        ("teacher/kl", "kl", "{:.4f}"),
        ("eval/success", "eval", "{:.3f}"),
        ("eval/teacher_success", "teacher eval", "{:.3f}"),
    ):
        if key in record:
            parts.append(f"{label} {fmt.format(record[key])}")
    if record.get("teacher/skipped"):
        parts.append("no guidance (teacher rebuilding)")
    times = " ".join(f"{k[5:]} {v:.1f}s" for k, v in record.items() if k.startswith("time/") and k != "time/iteration")
    return "  ".join(parts) + (f"  [{times}]" if times else "")
