"""Metric names, in one place. Every name is namespaced and stable across versions:

- ``rollout/``: training episodes that finished this iteration (return, success, length, format validity,
  success on solvable hands) and the step counts;
- ``losses/``: the learner's (policy, value, entropy, clip fraction, approx KL, grad norm, lr, ...);
- ``teacher/``: KL penalty, merge time, checkpoints in the buffer, merged version, SFT labels;
- ``eval/``: held-out episodes of the student, and ``eval/teacher_*`` of the merged teacher as a policy;
- ``time/``: seconds per phase (sample, score, learn, publish, merge, eval) and per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.trajectory import Transition


def iteration_record(
    index: int,
    env_steps: int,
    policy_version: int,
    episodes: dict[str, float],
    transitions: Sequence[Transition],
    learner: dict[str, float],
    teacher: dict[str, float],
    evaluation: dict[str, float],
    seconds: dict[str, float],
) -> dict:
    record: dict = {"iteration": index, "rollout/env_steps": env_steps, "rollout/policy_version": policy_version}
    record |= {f"rollout/{k}": v for k, v in episodes.items()}
    if transitions:
        record["rollout/step_format_valid"] = sum(t.valid for t in transitions) / len(transitions)
        record["rollout/step_reward"] = sum(t.env_reward for t in transitions) / len(transitions)
    record |= learner | teacher | evaluation
    record |= {f"time/{k}": v for k, v in seconds.items()}
    record["time/iteration"] = sum(seconds.values())
    return record


def progress_line(record: dict) -> str:
    """One human line per iteration: counts, success, the main losses and the time per phase."""
    parts = [f"it {record.get('iteration', 0):4d}"]
    for key, label, fmt in (
        ("rollout/env_steps", "steps", "{:.0f}"),
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
    times = " ".join(f"{k[5:]} {v:.1f}s" for k, v in record.items() if k.startswith("time/") and k != "time/iteration")
    return "  ".join(parts) + (f"  [{times}]" if times else "")
