"""Text ALFWorld, offline, through alfworld's wrappers (marker ``alfworld``; CI installs the extra)."""

import json
import pickle
from collections import defaultdict

import pytest
from gymnasium.utils.env_checker import check_env

from envs.alfworld import TASK_TYPES, ALFWorldEnv
from envs.alfworld_data import split_dir
from envs.experts import walkthrough

pytestmark = pytest.mark.alfworld


@pytest.fixture(scope="module")
def train_env():
    return ALFWorldEnv(split="train")


def _two_per_type(env):
    chosen = defaultdict(list)
    for path, task_type in env.games:
        if len(chosen[task_type]) < 2:
            chosen[task_type].append(path)
    return chosen


def _replay(env, game):
    obs, info = env.reset(options={"game": game})
    rewards = []
    for command in walkthrough(game):
        assert command in info["admissible_commands"]
        obs, reward, terminated, truncated, info = env.step(command)
        rewards.append(reward)
    return rewards, terminated, truncated, info


@pytest.mark.slow  # about 45 s here; test_walkthroughs_win_valid_unseen_games stays in the default tier
def test_walkthroughs_win_two_train_games_of_each_task_type(train_env):
    chosen = _two_per_type(train_env)
    assert sorted(chosen) == sorted(TASK_TYPES)
    for task_type, games in chosen.items():
        for game in games:
            rewards, terminated, truncated, info = _replay(train_env, game)
            assert terminated and not truncated and info["won"], game
            assert info["task_type"] == task_type and info["outcome"] == "won"
            assert info["goal_condition_rate"] == 1.0
            assert rewards[-1] == 51.0  # 50 * won + goal-condition rate 1.0


def test_walkthroughs_win_valid_unseen_games():
    env = ALFWorldEnv(split="valid_unseen", num_games=10)
    assert len(env.games) == 10
    for game, _ in env.games:
        _, terminated, _, info = _replay(env, game)
        assert terminated and info["won"], game


def test_inadmissible_action_costs_one_and_changes_nothing(train_env):
    obs, info = train_env.reset(seed=0)
    rate = info["goal_condition_rate"]
    obs, reward, terminated, truncated, info = train_env.step("fly to the moon")
    assert reward == pytest.approx(rate - 1.0)
    assert not (terminated or truncated) and not info["admissible"]
    assert info["feedback"] == "Nothing happens." and "Previous actions: fly to the moon" in obs


def test_identical_actions_truncate_with_penalty(train_env):
    _, info = train_env.reset(seed=1)
    results = [train_env.step("look") for _ in range(5)]
    assert [r[3] for r in results] == [False] * 4 + [True]
    rate = results[-1][4]["goal_condition_rate"]
    assert results[-1][1] == pytest.approx(rate - 3.0) and results[-1][4]["outcome"] == "repeats"


def test_action_budget_truncates_at_forty_with_penalty_and_fifty_without():
    env = ALFWorldEnv(split="valid_unseen", num_games=1)
    env.reset(seed=0)
    results = [env.step(["look", "inventory"][i % 2]) for i in range(40)]
    assert [r[3] for r in results].index(True) == 39
    assert results[-1][4]["outcome"] == "max_actions"
    assert results[-1][1] == pytest.approx(results[-1][4]["goal_condition_rate"] - 3.0)
    env = ALFWorldEnv(split="valid_unseen", num_games=1, max_actions=0)
    env.reset(seed=0)
    results = [env.step(["look", "inventory"][i % 2]) for i in range(50)]
    assert [r[3] for r in results].index(True) == 49
    assert results[-1][4]["outcome"] == "max_steps" and results[-1][1] == results[-2][1]  # no penalty


def test_check_env_seeding_and_pickle():
    env = ALFWorldEnv(split="valid_unseen", num_games=3)
    check_env(env, skip_render_check=True)
    first = env.reset(seed=5)[1]["gamefile"]
    assert env.reset(seed=5)[1]["gamefile"] == first
    obs, info = env.reset(seed=2)
    command = info["admissible_commands"][0]
    env.step(command)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.text_view() == env.text_view()
    nxt = env._info()["admissible_commands"][-1]
    a, b = env.step(nxt), clone.step(nxt)
    assert a[0] == b[0] and a[1:4] == b[1:4]


def test_task_type_filter_and_errors(tmp_path):
    env = ALFWorldEnv(split="valid_unseen", task_types=["pick_two_obj_and_place"])
    assert len(env.games) == 17 and {t for _, t in env.games} == {"pick_two_obj_and_place"}
    with pytest.raises(ValueError, match="unknown ALFWorld task types"):
        ALFWorldEnv(split="valid_unseen", task_types=["juggle"])
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        ALFWorldEnv(split="test")
    with pytest.raises(FileNotFoundError, match="env.alfworld.data_dir"):
        ALFWorldEnv(split="valid_unseen", data_dir=str(tmp_path))


def test_vendored_split_has_all_games():
    games = list(split_dir("valid_unseen").glob("*/*/game.tw-pddl"))
    assert len(games) == 134
    assert all(json.loads(g.read_text())["solvable"] for g in games[:5])


def test_missing_extra_names_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "textworld", None)  # makes `import textworld` raise ImportError
    with pytest.raises(ImportError, match="scripts/setup.sh alfworld"):
        ALFWorldEnv(split="valid_unseen")
