"""A random-action fuzz of 100k steps across the card envs raises nothing and keeps the invariants."""

import numpy as np

from envs.blackjack import BlackjackEnv
from envs.ezpoints import EZPointsEnv
from envs.numberline import NumberLineEnv
from envs.points24 import Points24Env

REWARDS = {
    Points24Env: {0.0, -1.0, 10.0},
    EZPointsEnv: {0.0, -1.0, 10.0},
    NumberLineEnv: {0.0, -1.0, 1.0},
    BlackjackEnv: {0.0, -1.0, 1.0},
}


def test_random_fuzz_100k_steps():
    rng = np.random.default_rng(0)
    steps = 0
    for index, (env_cls, allowed) in enumerate(REWARDS.items()):
        # Images on a quarter of the steps (the renderer is fuzzed too), text on the rest, for speed.
        for obs_mode, n in (("image", 6_250), ("text", 18_750)):
            env = env_cls(obs_mode=obs_mode)
            obs, _ = env.reset(seed=index)
            for _ in range(n):
                obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
                assert reward in allowed
                assert env.observation_space.contains(obs)
                if isinstance(env, (Points24Env, EZPointsEnv)):
                    assert len("".join(info["formula"])) <= env.max_formula_chars + 2
                if terminated or truncated:
                    obs, _ = env.reset()
                steps += 1
    assert steps == 100_000
