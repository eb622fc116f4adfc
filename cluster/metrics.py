"""One iteration's record and its progress line. The names are the constants of core/metric_names.py
(its docstring says what each namespace holds); ``time/<phase>`` is one of PHASES (``merge_wait`` and
``merge_send`` are explained in cluster/driver.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from core import metric_names as names
from core.batch import Batch, Transition

PHASES = ("sample", "merge_wait", "score", "learn", "publish", "merge_send", "eval", "checkpoint")


def iteration_record(
    index: int,
    env_steps: int,
    total_env_steps: int,
    policy_version: int,
    episodes: dict[str, float],
    window: dict[str, float],
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
    record |= {names.ROLLOUT + k: v for k, v in episodes.items()} | window
    if transitions:
        record[names.STEP_FORMAT_VALID] = sum(t.valid for t in transitions) / len(transitions)
        record[names.STEP_REWARD] = sum(t.env_reward for t in transitions) / len(transitions)
        record[names.STALE_STEPS] = float(sum(t.policy_version != policy_version - 1 for t in transitions))
    record |= learner | teacher | evaluation | counters
    record |= {names.TIME + k: v for k, v in seconds.items()}
    record[names.ITERATION_SECONDS] = sum(seconds.values())
    return record


class EpisodeWindow:
    """Training success and return over the last ``size`` ended episodes, and how many episodes an
    iteration left running: an iteration's own ended episodes are the quick ones (a win ends early, a
    loss runs to the step cap), so its success alone reads high early and low when play gets longer."""

    def __init__(self, size: int):
        self.ended: deque[tuple[float, float]] = deque(maxlen=size)  # (success, return)

    def add(self, batches: Sequence[Batch]) -> dict[str, float]:
        """The iteration's window metrics, after adding its ended episodes."""
        ended = [e for b in batches for e in b.episodes]
        self.ended.extend((float(e.success), e.ret) for e in ended)
        running = sum(not t.done for b in batches for t in b.transitions[len(b.transitions) - b.num_envs :])
        out = {names.RUNNING_SHARE: running / max(len(ended) + running, 1)}
        if self.ended:
            out |= {
                names.WINDOW_SUCCESS: sum(s for s, _ in self.ended) / len(self.ended),
                names.WINDOW_RETURN: sum(r for _, r in self.ended) / len(self.ended),
                names.WINDOW_EPISODES: float(len(self.ended)),
            }
        return out

    def state(self) -> list[list[float]]:
        return [list(pair) for pair in self.ended]

    def load(self, state: list[list[float]]) -> None:
        self.ended.clear()
        self.ended.extend((float(s), float(r)) for s, r in state)


def progress_line(record: dict) -> str:
    """One human line per iteration: counts, success, the main losses and the time per phase."""
    parts = [f"it {record.get(names.ITERATION, 0):4d}"]
    for key, label, fmt in (
        (names.TOTAL_ENV_STEPS, "steps", "{:.0f}"),
        (names.WINDOW_SUCCESS, "success", "{:.2f}"),
        (names.WINDOW_EPISODES, "of last", "{:.0f} ended"),
        (names.RUNNING_SHARE, "running", "{:.0%}"),
        (names.WINDOW_RETURN, "return", "{:.2f}"),
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
