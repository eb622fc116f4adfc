import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.blackjack import BlackjackEnv, hand_sum, usable_ace
from envs.ezpoints import EZPointsEnv, solvable_hands
from envs.numberline import NumberLineEnv
from envs.points24 import Points24Env
from envs.solver import is_solvable

ALL_CARD_ENVS = [Points24Env, EZPointsEnv, NumberLineEnv, BlackjackEnv]


def play(env, tokens):
    """Step a formula env through action tokens; returns the list of step results."""
    return [env.step(env.action_tokens.index(t)) for t in tokens]


# ----------------------------------------------------------------------------- all card envs


@pytest.mark.parametrize("env_id", envs.CARD_ENV_IDS)
@pytest.mark.parametrize("obs_mode", ["image", "text"])
def test_check_env(env_id, obs_mode):
    check_env(gym.make(env_id, obs_mode=obs_mode).unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", envs.CARD_ENV_IDS)
def test_registered_ids_make_the_env(env_id):
    env = envs.make_env(type("Cfg", (), {"id": env_id, "obs_mode": "image", "max_steps": 0})())
    obs, info = env.reset(seed=0)
    assert obs.shape == (300, 300, 3) and obs.dtype == np.uint8
    assert isinstance(info["text"], str) and info["text"]


def _rollout(env, seed, n=60):
    """Observations and rewards of n random-policy steps with auto-reset, all seeded."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    trace = [obs]
    for _ in range(n):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        trace += [obs, reward, terminated, truncated]
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append(obs)
    return trace


def _same(a, b):
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("env_cls", ALL_CARD_ENVS)
def test_same_seed_same_episode(env_cls):
    assert _same(_rollout(env_cls(), 7), _rollout(env_cls(), 7))
    assert not _same(_rollout(env_cls(obs_mode="text"), 7), _rollout(env_cls(obs_mode="text"), 8))


@pytest.mark.parametrize("env_cls", ALL_CARD_ENVS)
def test_pickled_env_continues_identically(env_cls):
    env = env_cls()
    env.reset(seed=3)
    env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(5):
        action = env.action_space.sample()
        a, b = env.step(action), clone.step(action)
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4]
        if a[2] or a[3]:
            break


# ----------------------------------------------------------------------------- Points24


def test_points24_actions_and_info():
    env = Points24Env()
    assert env.action_tokens == ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "-", "*", "/", "(", ")", "=")
    _, info = env.reset(seed=0, options={"hand": [13, 1, 5, 11], "suits": ["H", "S", "D", "C"]})
    assert info["hand"] == [13, 1, 5, 11] and info["values"] == [10, 1, 5, 10]  # A=1, J/Q/K=10
    assert info["suits"] == ["H", "S", "D", "C"] and info["formula"] == []
    assert info["solvable"] is True  # 10 + 10 + 5 - 1 = 24
    assert info["text"] == "Cards: KH AS 5D JC\nCard values: 10, 1, 5, 10\nFormula: "


def test_points24_exact_solution_scores_ten():
    env = Points24Env()
    env.reset(seed=0, options={"hand": [3, 3, 8, 8]})
    steps = play(env, ["8", "/", "(", "3", "-", "8", "/", "3", ")", "="])
    assert [s[1] for s in steps] == [0.0] * 9 + [10.0]
    assert steps[-1][2] is True and steps[-1][4]["outcome"] == "solved"


def test_points24_overuse_costs_one_and_keeps_the_formula():
    env = Points24Env()
    env.reset(seed=0, options={"hand": [3, 3, 8, 8]})
    steps = play(env, ["3", "+", "3", "+", "3", "4"])
    rewards = [s[1] for s in steps]
    assert rewards == [0.0, 0.0, 0.0, 0.0, -1.0, -1.0]  # the third 3 and the absent 4 are rejected
    assert not any(s[2] or s[3] for s in steps)  # the episode continues
    assert steps[-1][4]["formula"] == ["3", "+", "3", "+"] and steps[-1][4]["outcome"] == "overused"


@pytest.mark.parametrize(
    "tokens",
    [
        ["3", "+", "3", "+", "8", "+", "8", "="],  # 22: wrong value
        ["8", "*", "3", "="],  # 24 but two cards unused
        ["8", "3", "="],  # two numbers in a row: malformed, never "83"
        ["(", "8", "*", "3", "="],  # unbalanced
        ["="],
    ],
)
def test_points24_wrong_answers_cost_one_and_end(tokens):
    env = Points24Env()
    env.reset(seed=0, options={"hand": [3, 3, 8, 8]})
    _, reward, terminated, truncated, info = play(env, tokens)[-1]
    assert (reward, terminated, truncated, info["outcome"]) == (-1.0, True, False, "wrong")


def test_points24_length_limit_truncates_beyond_twenty_characters():
    env = Points24Env()
    env.reset(seed=0, options={"hand": [10, 10, 10, 10]})
    tokens = ["("] * 7 + ["10", "+", "10"] + [")"] * 7 + ["-", "10"]
    steps = play(env, tokens)
    assert len("".join(tokens[:-1])) == 20  # exactly 20 characters is still allowed ("10" counts two)
    assert [s[1:4] for s in steps[:-1]] == [(0.0, False, False)] * (len(tokens) - 1)
    _, reward, terminated, truncated, info = steps[-1]  # 22 characters
    assert (reward, terminated, truncated, info["outcome"]) == (-1.0, False, True, "too_long")


def test_points24_step_limit_ends_rejected_number_loops():
    env = Points24Env(max_steps=5)
    env.reset(seed=0, options={"hand": [3, 3, 8, 8]})
    steps = play(env, ["4"] * 5)
    assert [s[1] for s in steps] == [-1.0] * 5
    assert steps[-1][3] is True and steps[-1][4]["outcome"] == "step_limit"
    assert not any(s[3] for s in steps[:-1])


def test_points24_image_shows_the_formula():
    env = Points24Env()
    first, _ = env.reset(seed=0)
    second = play(env, ["("])[0][0]
    assert not np.array_equal(first, second)  # the new token is drawn
    assert np.array_equal(first[:150], second[:150])  # the cards did not move
    again = Points24Env()
    again.reset(seed=0)
    assert np.array_equal(play(again, ["("])[0][0], second)  # same state, same pixels


def test_solvable_share_of_random_hands_is_about_73_percent():
    env = Points24Env(obs_mode="text")
    solvable = [env.reset(seed=seed)[1]["solvable"] for seed in range(3000)]
    assert 0.70 < np.mean(solvable) < 0.76


def test_points24_rejects_bad_hands():
    with pytest.raises(ValueError, match="4 ranks in 1..13"):
        Points24Env().reset(options={"hand": [1, 2, 14, 3]})
    with pytest.raises(ValueError, match="suits"):
        Points24Env().reset(options={"hand": [1, 2, 3, 4], "suits": ["X", "H", "H", "H"]})


# ----------------------------------------------------------------------------- EZPoints


def test_ezpoints_hands_are_always_solvable():
    env = EZPointsEnv(obs_mode="text")
    assert len(env.action_tokens) == 13 and env.action_tokens[-3:] == ("+", "*", "=")
    for seed in range(500):
        _, info = env.reset(seed=seed)
        assert info["solvable"] and is_solvable(info["values"], 12, "+*")
    # Ordered value pairs: (2,10) (10,2) by sum, each 4 rank pairs (10 J Q K) = 8; (3,9) (9,3) (4,8) (8,4)
    # (5,7) (7,5) (6,6) by sum and (2,6) (6,2) (3,4) (4,3) by product, one rank pair each = 11.
    assert len(solvable_hands()) == 19


def test_ezpoints_rules():
    env = EZPointsEnv()
    env.reset(seed=0, options={"hand": [12, 2]})  # Q (10) and 2
    assert [s[1] for s in play(env, ["10", "+", "2", "="])] == [0.0, 0.0, 0.0, 10.0]
    env.reset(seed=0, options={"hand": [6, 6]})
    steps = play(env, ["6", "*", "6", "6", "+", "+", "+"])  # the third 6 is rejected
    assert [s[1] for s in steps] == [0.0, 0.0, 0.0, -1.0, 0.0, 0.0, -1.0]
    # "6*6++" has 5 characters (allowed); "6*6+++" has 6 and truncates.
    assert steps[-2][3] is False and steps[-1][3] is True and steps[-1][4]["outcome"] == "too_long"
    with pytest.raises(ValueError, match="always solvable"):
        env.reset(options={"hand": [1, 10]})


# ----------------------------------------------------------------------------- NumberLine


def test_numberline_rewards():
    env = NumberLineEnv()
    env.reset(seed=0, options={"start": 1, "target": 3})
    results = [env.step(a)[1:4] for a in (0, 0, 1, 1, 1)]
    # left to 0 (farther: -1), wall bump at 0 (no closer: -1), right to 1 (closer: 0), to 2 (0), to 3 (+1, done)
    assert results == [
        (-1.0, False, False),
        (-1.0, False, False),
        (0.0, False, False),
        (0.0, False, False),
        (1.0, True, False),
    ]


def test_numberline_truncates_after_ten_steps_and_draws_distinct_pairs():
    env = NumberLineEnv(obs_mode="text")
    env.reset(seed=0, options={"start": 0, "target": 5})
    results = [env.step(0) for _ in range(10)]
    assert [r[3] for r in results] == [False] * 9 + [True]
    pairs = {tuple(env.reset(seed=s)[1][k] for k in ("position", "target")) for s in range(400)}
    assert len(pairs) == 30 and all(p != t for p, t in pairs)  # every ordered pair with start != target
    assert env.reset(seed=0, options={"start": 2, "target": 4})[0] == "Target: 4\nCurrent: 2"


# ----------------------------------------------------------------------------- Blackjack


def test_blackjack_hand_arithmetic():
    assert hand_sum([1, 6]) == 17 and usable_ace([1, 6])  # soft 17
    assert hand_sum([1, 6, 10]) == 17 and not usable_ace([1, 6, 10])  # the ace drops to 1
    assert hand_sum([13, 12]) == 20 and hand_sum([1, 1]) == 12


def test_blackjack_bust_and_stand():
    env = BlackjackEnv(obs_mode="text")
    obs, info = env.reset(seed=0, options={"player": [10, 13], "dealer": [10, 9]})
    assert info["player_sum"] == 20 and info["dealer"] == [10]  # the hole card stays hidden
    assert "??" in obs
    _, reward, terminated, _, info = env.step(0)  # stand on 20 against 19: the dealer stands at 19
    assert (reward, terminated) == (1.0, True) and info["dealer"] == [10, 9]
    env.reset(seed=0, options={"player": [10, 13], "dealer": [10, 10]})
    results = [env.step(1)]  # hit on 20: any card but an ace busts
    while not results[-1][2]:
        results.append(env.step(1))
    assert results[-1][1] == -1.0 and hand_sum(env.player_ranks) > 21


def test_blackjack_natural_rules():
    env = BlackjackEnv(natural=True)
    env.reset(seed=0, options={"player": [1, 12], "dealer": [10, 7]})
    assert env.step(0)[1] == 1.5  # natural 21 beats the standing 17: 1.5 with natural=True
    env = BlackjackEnv(sab=True)
    env.reset(seed=0, options={"player": [1, 12], "dealer": [10, 1]})
    assert env.step(0)[1] == 0.0  # both naturals: a draw under Sutton and Barto
