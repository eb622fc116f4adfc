import pytest

import envs
from configs import load_config
from core.answer import parse_response
from envs.tasks import expert_answer, spec_for


@pytest.mark.parametrize("env_id", [envs.POINTS24, envs.EZPOINTS, envs.NUMBERLINE, envs.BLACKJACK])
def test_expert_answers_parse_back_to_the_actions_that_win(env_id):
    env = envs.make_env(load_config(None, [f"env.id={env_id}", "env.obs_mode=text"]).env)
    spec = spec_for(env_id)
    wins = episodes = 0
    for seed in range(40):
        _, info = env.reset(seed=seed)
        while True:
            answer = expert_answer(env_id, env, info)
            if answer is None:  # only unsolvable Points24 hands have no plan
                assert env_id == envs.POINTS24 and not info["solvable"]
                break
            parsed = parse_response(answer, spec)
            assert parsed.valid, answer
            _, _, terminated, truncated, info = env.step(parsed.action)
            if terminated or truncated:
                episodes += 1
                wins += info["success"]
                break
    if env_id != envs.BLACKJACK:  # the hit-below-17 rule is an expert, not an oracle
        assert wins == episodes > 20
