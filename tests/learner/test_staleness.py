"""The learner of the asynchronous loop (issue 19): a batch sampled by an older version is scored under
that version for decoupled PPO's weights; an on-policy batch trains exactly as in the synchronous loop."""

import pytest
import torch

from configs import load_config
from core.ppo_loss import policy_loss
from learner.learner import Learner
from tests.learner.test_learner import LORA, _batch


def _learner(max_staleness: int) -> Learner:
    cfg = load_config(None, ["learner.minibatch_size=6", "learner.micro_batch_size=6", "learner.lr=1e-2"]).learner
    return Learner(
        cfg,
        "embedded:xs",
        LORA,
        temperature=1.0,
        thought_weight=0.5,
        total_updates=10,
        updates_per_iteration=4,
        max_staleness=max_staleness,
    )


def _adapters_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stale_batch_is_scored_under_the_version_that_sampled_it():
    learner, reference = _learner(1), _learner(1)  # the same initial weights: both are version 0
    stale = _batch(seed=1)  # sampled by version 0
    transitions = stale.transitions
    assert {t.policy_version for t in transitions} == {0}
    behaviour_by_v0 = reference._sample_pass(transitions)

    learner.update([_batch(seed=0)])
    version, _ = learner.publish()
    assert version == 1 and sorted(learner.history) == [0, 1]
    before = learner.policy.adapter()
    sampled = learner._sample_pass(transitions)
    behaviour = learner._behaviour_pass(transitions, sampled)
    assert _adapters_equal(learner.policy.adapter(), before)  # version 1 swapped back in, bit for bit
    assert torch.allclose(behaviour.logp, behaviour_by_v0.logp, atol=1e-5)
    assert not torch.allclose(sampled.logp, behaviour.logp, atol=1e-3)  # the update moved the policy

    stats = learner.update([stale])
    assert stats["rollout/staleness"] == 1.0 and stats["rollout/staleness_max"] == 1.0
    assert 0.0 < stats["losses/behaviour_weight"] <= learner.cfg.behaviour_weight_cap
    assert 0.0 <= stats["losses/behaviour_weight_capped"] <= 1.0
    assert stats["rollout/logprob_gap"] < 1e-4  # the engine (version 0) against the behaviour pass


def test_an_on_policy_batch_trains_exactly_as_in_the_synchronous_loop():
    sync, async_ = _learner(0), _learner(1)
    batch = _batch(seed=0)
    a, b = sync.update([batch]), async_.update([batch])
    assert _adapters_equal(sync.policy.adapter(), async_.policy.adapter())
    assert a["losses/policy"] == b["losses/policy"] and "losses/behaviour_weight" not in b
    assert b["rollout/staleness_max"] == 0.0
    assert sync.history == {}  # the synchronous learner keeps no old adapters


def test_a_batch_older_than_the_bound_is_an_error_naming_it():
    learner = _learner(1)
    stale = _batch(seed=1)  # version 0
    for _ in range(2):
        learner.update([_batch(seed=0)])
        learner.publish()
    assert sorted(learner.history) == [1, 2]
    with pytest.raises(ValueError, match=r"version\(s\) \[0\].*keeps versions \[1, 2\].*max_staleness=1"):
        learner.update([stale])


def test_the_kept_versions_survive_a_state_round_trip():
    learner = _learner(1)
    learner.update([_batch(seed=0)])
    learner.publish()
    restored = _learner(1)
    restored.load_state_dict(learner.state_dict())
    assert sorted(restored.history) == [0, 1]
    assert all(_adapters_equal(restored.history[v], learner.history[v]) for v in (0, 1))


def test_decoupled_weights_scale_each_steps_term():
    new = torch.tensor([0.0, -0.2, 0.3], requires_grad=True)
    old, advantages = torch.zeros(3), torch.tensor([1.0, -2.0, 0.5])
    plain, _ = policy_loss(new, old, advantages, 0.1)
    ones, _ = policy_loss(new, old, advantages, 0.1, torch.ones(3))
    assert torch.equal(plain, ones)
    weights = torch.tensor([2.0, 0.5, 1.0])
    weighted, _ = policy_loss(new, old, advantages, 0.1, weights)
    ratio = new.detach().exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(0.9, 1.1) * advantages)
    assert torch.allclose(weighted, -(weights * surrogate).mean())
