"""Env speed on one core: reset and step time with and without the rendered image.

    .venv/bin/python -m bench.envs [--steps 20000] [--alfworld-steps 200]

(Run as a module: as a script, this file would shadow the ``envs`` package.)

Random actions with auto-reset. "step" is the median of single steps that do not end an episode;
"loop steps/s" counts every step and reset over the whole run, the rate a rollout sees. The
reference gym_cards envs measured 0.50 ms per Points24 step and 122 ms per reset on this machine
(../shared/notes/gym_cards.md). Target: a Points24 step with its image under 1 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from envs.blackjack import BlackjackEnv  # noqa: E402
from envs.ezpoints import EZPointsEnv  # noqa: E402
from envs.numberline import NumberLineEnv  # noqa: E402
from envs.points24 import Points24Env  # noqa: E402


def measure(env, steps: int, seed: int = 0, sample=None) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    sample = sample or (lambda: int(rng.integers(env.action_space.n)))
    step_times, reset_times = [], []
    start = time.perf_counter()
    t = time.perf_counter()
    env.reset(seed=seed)
    reset_times.append(time.perf_counter() - t)
    for _ in range(steps):
        t = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(sample())
        elapsed = time.perf_counter() - t
        if terminated or truncated:
            t = time.perf_counter()
            env.reset()
            reset_times.append(time.perf_counter() - t)
        else:
            step_times.append(elapsed)
    total = time.perf_counter() - start
    return {
        "step_ms": 1e3 * statistics.median(step_times),
        "step_p90_ms": 1e3 * float(np.percentile(step_times, 90)),
        "reset_ms": 1e3 * statistics.median(reset_times),
        "loop_sps": steps / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--alfworld-steps", type=int, default=200, help="0 skips ALFWorld")
    args = parser.parse_args()
    rows = []
    for env_cls in (Points24Env, EZPointsEnv, NumberLineEnv, BlackjackEnv):
        for mode in ("image", "text"):
            rows.append((env_cls.__name__, mode, measure(env_cls(obs_mode=mode), args.steps)))
    if args.alfworld_steps:
        rows.append(("ALFWorldEnv", "text", _alfworld(args.alfworld_steps)))
    print(f"{'env':<14} {'obs':<6} {'step ms':>8} {'p90 ms':>8} {'reset ms':>9} {'loop steps/s':>13}")
    for name, mode, r in rows:
        times = f"{r['step_ms']:>8.3f} {r['step_p90_ms']:>8.3f} {r['reset_ms']:>9.3f}"
        print(f"{name:<14} {mode:<6} {times} {r['loop_sps']:>13,.0f}")


def _alfworld(steps: int) -> dict[str, float]:
    try:
        from envs.alfworld import ALFWorldEnv
    except ImportError:
        return {
            "step_ms": float("nan"),
            "step_p90_ms": float("nan"),
            "reset_ms": float("nan"),
            "loop_sps": float("nan"),
        }
    env = ALFWorldEnv(split="valid_unseen")
    rng = np.random.default_rng(0)
    # Random admissible commands: the env's real work (TextWorld step + goal-condition rate).
    return measure(env, steps, sample=lambda: str(rng.choice(env.admissible_commands)))


if __name__ == "__main__":
    main()
