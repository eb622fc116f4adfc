"""Training success over a window of ended episodes, and the share still running (issue 18)."""

from types import SimpleNamespace

import pytest

from cluster.metrics import EpisodeWindow, progress_line
from core import metric_names as names
from core.batch import Batch, EpisodeStats


def _batch(ends: list[list[bool]], wins: list[bool]) -> Batch:
    """A batch of rounds x envs whose step (round r, env k) ends an episode when ends[r][k]; the ended
    episodes win in order of ``wins``."""
    transitions = [SimpleNamespace(done=done) for row in ends for done in row]
    episodes = [
        EpisodeStats(env_index=0, ret=10.0 if w else -1.0, length=1, success=w, valid_fraction=1.0) for w in wins
    ]
    return Batch(transitions, episodes, policy_version=0, num_envs=len(ends[0]))


def test_an_early_iteration_reports_its_few_quick_wins_beside_the_episodes_still_running():
    window = EpisodeWindow(size=4)
    # Iteration 1: 2 envs x 2 rounds; one quick win ends, both envs end the iteration mid-episode.
    first = window.add([_batch([[True, False], [False, False]], [True])])
    assert first == {
        names.RUNNING_SHARE: pytest.approx(2 / 3),
        names.WINDOW_SUCCESS: 1.0,
        names.WINDOW_RETURN: 10.0,
        names.WINDOW_EPISODES: 1.0,
    }
    # Iteration 2: three losses end (one env's last step ends its episode: it is not running).
    second = window.add([_batch([[True, False], [False, True]], [False, False]), _batch([[True]], [False])])
    assert second[names.RUNNING_SHARE] == pytest.approx(1 / 4)
    assert second[names.WINDOW_SUCCESS] == pytest.approx(1 / 4)
    assert second[names.WINDOW_EPISODES] == 4.0
    # Iteration 3: one more win pushes the first one out of a window of 4.
    third = window.add([_batch([[True]], [True])])
    assert third[names.WINDOW_SUCCESS] == pytest.approx(1 / 4)
    assert third[names.WINDOW_RETURN] == pytest.approx((10 - 3) / 4)
    assert third[names.RUNNING_SHARE] == 0.0


def test_the_window_survives_a_checkpoint_and_is_named_in_the_progress_line():
    window = EpisodeWindow(size=3)
    window.add([_batch([[True, True]], [True, False])])
    restored = EpisodeWindow(size=3)
    restored.load(window.state())
    assert restored.add([]) == window.add([])
    none_ended = EpisodeWindow(size=3).add([_batch([[False, False]], [])])
    assert none_ended == {names.RUNNING_SHARE: 1.0}  # no success figure from zero episodes
    record = {names.ITERATION: 3, **restored.add([_batch([[False]], [])])}
    assert "success 0.50  of last 2 ended  running 100%" in progress_line(record)
