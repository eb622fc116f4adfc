import json

import numpy as np
import pytest

from actors.rollout import EVAL_SEED_BASE, RolloutSettings, RolloutWorker
from configs import load_config
from core.batch import summarize
from models.engines.base import SamplingParams, prompt_input
from models.engines.hf import HFEngine
from models.lora import LoraSettings
from tests.actors.scripted import ScriptedEngine


def _numberline_expert(prompt):
    # The text-mode prompt tail reads "Target: t. Current: c."
    target = int(prompt.tail.split("Target: ")[1].split(".")[0])
    current = int(prompt.tail.split("Current: ")[1].split(".")[0])
    move = "+" if target > current else "-"
    return json.dumps({"current number": current, "target number": target, "thoughts": "walk", "action": move})


def _cfg(*overrides):
    return load_config(None, ["env.id=gym_cards/NumberLine-v0", "env.obs_mode=text", *overrides]).env


def test_scripted_expert_rollout_is_valid_and_successful():
    worker = RolloutWorker(_cfg(), ScriptedEngine(_numberline_expert), RolloutSettings(num_envs=4), seed=0)
    batch = worker.sample(6)
    assert batch.env_steps == 24 and batch.num_envs == 4
    assert [t.env_index for t in batch.transitions[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]  # round-major
    assert all(t.valid and t.action_recovered and t.format_reward == 3.0 for t in batch.transitions)
    assert batch.episodes and all(e.success and e.valid_fraction == 1.0 for e in batch.episodes)
    assert sum(t.done for t in batch.transitions) == len(batch.episodes)
    # old_logprob = lambda * sum(thought) + sum(action) with every token at -0.5 (thought_weight 0.5).
    for t in batch.transitions:
        n_thought, n_action = sum(t.thought_mask), sum(t.action_mask)
        assert n_thought > 0 and n_action > 0 and n_thought + n_action == len(t.response_ids)
        assert t.old_logprob == pytest.approx(0.5 * -0.5 * n_thought - 0.5 * n_action)


def test_garbage_answers_get_the_format_penalty_and_a_fallback_action():
    worker = RolloutWorker(_cfg(), ScriptedEngine(lambda p: "I like turtles"), RolloutSettings(num_envs=3), seed=0)
    batch = worker.sample(4)
    assert all(not t.valid and not t.action_recovered and t.format_reward == -2.0 for t in batch.transitions)
    assert {t.action for t in batch.transitions} <= {0, 1}  # random fallback within the action space
    with pytest.raises(ValueError, match="no no-op"):
        RolloutWorker(_cfg(), ScriptedEngine(lambda p: ""), RolloutSettings(invalid_action="noop"))


def test_auto_reset_continues_each_env_from_its_own_seed():
    a = RolloutWorker(_cfg(), ScriptedEngine(_numberline_expert), RolloutSettings(num_envs=2), seed=5).sample(10)
    b = RolloutWorker(_cfg(), ScriptedEngine(_numberline_expert), RolloutSettings(num_envs=2), seed=5).sample(10)
    assert [t.observation for t in a.transitions] == [t.observation for t in b.transitions]
    c = RolloutWorker(_cfg(), ScriptedEngine(_numberline_expert), RolloutSettings(num_envs=2), seed=6).sample(10)
    assert [t.observation for t in a.transitions] != [t.observation for t in c.transitions]


def test_evaluation_uses_held_out_seeds_and_is_repeatable():
    worker = RolloutWorker(_cfg(), ScriptedEngine(_numberline_expert), RolloutSettings(num_envs=4), seed=0)
    first = worker.evaluate(10)
    assert len(first) == 10 and all(e.seed >= EVAL_SEED_BASE for e in first)
    assert summarize(first)["success"] == 1.0
    assert [(e.seed, e.ret, e.length) for e in first] == [(e.seed, e.ret, e.length) for e in worker.evaluate(10)]


def test_image_rollout_keeps_compact_observations_that_redraw_the_frame():
    cfg = load_config(None, ["env.id=gym_cards/NumberLine-v0"]).env  # image observations
    engine = HFEngine("embedded:xs", LoraSettings(rank=4, alpha=8, dropout=0.0))
    settings = RolloutSettings(num_envs=3, sampling=SamplingParams(temperature=1.0, top_k=5, max_new_tokens=12))
    worker = RolloutWorker(cfg, engine, settings, seed=0)
    batch = worker.sample(2)
    for t in batch.transitions:
        image = prompt_input(t.observation).image
        assert image.shape == (300, 300, 3) and image.dtype == np.uint8
        assert t.observation.frame[0] == "numberline" and len(t.response_ids) == len(t.old_logprobs) <= 12
    # The stored frame state redraws the exact pixels the policy saw: re-scoring gives the old log-probs.
    prompts = [prompt_input(t.observation) for t in batch.transitions]
    rescored = engine.score(prompts, [t.response_ids for t in batch.transitions], 1.0)
    for t, row in zip(batch.transitions, rescored, strict=True):
        assert max(abs(a - b) for a, b in zip(t.old_logprobs, row, strict=True)) < 1e-5


def test_state_round_trip_continues_the_same_episodes_and_samples():
    cfg = load_config(None, ["env.id=gym_cards/EZPoints-v0"]).env  # image observations, multi-step episodes
    settings = RolloutSettings(num_envs=3, sampling=SamplingParams(temperature=1.0, top_k=5, max_new_tokens=10))

    def worker():
        return RolloutWorker(cfg, HFEngine("embedded:xs", LoraSettings(4, 8, 0.0), seed=3), settings, seed=1)

    original = worker()
    original.sample(2)
    state = original.state_dict()
    expected = original.sample(3)
    restored = worker()  # a fresh worker (say, a restarted actor) picks up where the state was taken
    restored.load_state_dict(state)
    again = restored.sample(3)
    assert [t.observation for t in again.transitions] == [t.observation for t in expected.transitions]
    assert [t.response_ids for t in again.transitions] == [t.response_ids for t in expected.transitions]
    assert [(e.env_index, e.ret, e.length) for e in again.episodes] == [
        (e.env_index, e.ret, e.length) for e in expected.episodes
    ]


def test_workers_split_one_evaluation_by_episode_offset():
    def worker():
        return RolloutWorker(_cfg(), ScriptedEngine(_numberline_expert), RolloutSettings(num_envs=3), seed=0)

    whole = worker().evaluate(10)
    parts = worker().evaluate(4) + worker().evaluate(6, first=4)
    assert [(e.seed, e.ret, e.length) for e in parts] == [(e.seed, e.ret, e.length) for e in whole]


@pytest.mark.alfworld
def test_alfworld_evaluation_walks_the_eval_split_and_penalises_malformed_answers():
    """Held-out ALFWorld episode j plays game j of the evaluation split, however the episodes are split over
    workers; an answer that does not parse costs the format penalty and plays the no-op ("look")."""
    from envs.alfworld import collect_games
    from envs.alfworld_data import split_dir

    overrides = ["env.id=alfworld/ALFWorld-v0", "env.alfworld.task_types=[pick_and_place_simple]"]
    train, held_out = _cfg(*overrides), _cfg(*overrides, "env.alfworld.split=valid_unseen")
    settings = RolloutSettings(num_envs=2, format_valid=5.0, format_invalid=-5.0, invalid_action="noop")

    def worker():
        return RolloutWorker(
            train, ScriptedEngine(lambda p: '{"thoughts": "look", "action'), settings, eval_env_cfg=held_out
        )

    episodes = worker().evaluate(2) + worker().evaluate(1, first=2)
    games = [path for path, _ in collect_games(split_dir("valid_unseen"), ("pick_and_place_simple",))]
    assert [e.game for e in episodes] == games[:3]
    assert all(e.valid_fraction == 0.0 and e.length == 5 and e.ret == -3.0 for e in episodes)  # 5 looks in a row
    batch = worker().sample(1)
    assert all(t.format_reward == -5.0 and t.action == "look" and not t.action_recovered for t in batch.transitions)
