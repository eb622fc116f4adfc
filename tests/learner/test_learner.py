"""PPO Learner on the embedded xs model, with batches sampled by the real engine."""

import pytest
import torch

from actors.rollout import RolloutSettings, RolloutWorker
from configs import load_config
from core.batch import SFTLabel
from core.logprob import step_logprob
from core.ppo_loss import policy_loss, value_loss
from learner.learner import Learner, NonFiniteError
from models.engines.base import SamplingParams
from models.engines.hf import HFEngine
from models.lora import LoraSettings

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)
SAMPLING = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=12)


def _batch(seed=0, rounds=3, k=4):
    cfg = load_config(None, ["env.id=gym_cards/NumberLine-v0", "env.obs_mode=text"])
    engine = HFEngine("embedded:xs", LORA, seed=seed)
    return RolloutWorker(cfg.env, engine, RolloutSettings(num_envs=k, sampling=SAMPLING), seed=seed).sample(rounds)


def _learner(lora=LORA, device="cpu", **overrides):
    cfg = load_config(None, [f"learner.{k}={v}" for k, v in overrides.items()]).learner
    return Learner(
        cfg,
        "embedded:xs",
        lora,
        temperature=1.0,
        thought_weight=0.5,
        total_updates=10,
        updates_per_iteration=4,
        device=device,
    )


def _losses(learner, batch, advantages, returns, old_values):
    """The PPO objective on a fixed batch with fixed advantages, at the learner's current weights."""
    transitions = batch.transitions
    with torch.no_grad():
        out, values = learner.policy.evaluate(
            learner._encode([t.observation for t in transitions]), [t.response_ids for t in transitions], 1.0
        )
        width = out.logprobs.shape[1]
        thought = torch.tensor([t.thought_mask + [False] * (width - len(t.thought_mask)) for t in transitions])
        action = torch.tensor([t.action_mask + [False] * (width - len(t.action_mask)) for t in transitions])
        new_logp = step_logprob(out.logprobs, thought, action, 0.5)
        old_logp = torch.tensor([t.old_logprob for t in transitions])
        pg, _ = policy_loss(new_logp, old_logp, advantages, 0.1)
        return pg.item(), value_loss(values, old_values, returns, 0.1).item()


def test_update_lowers_the_loss_and_changes_only_lora_and_value_head():
    batch = _batch()
    learner = _learner(lr=1e-3, max_grad_norm=1.0, minibatch_size=6, micro_batch_size=4)
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    old_values, advantages, returns, _ = learner._advantages([batch])
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg0, vf0 = _losses(learner, batch, advantages, returns, old_values)
    assert abs(pg0 + advantages.mean().item()) < 1e-4  # ratio 1 at the start: the sampler's log-probs are ours
    stats = learner.update([batch])
    pg1, vf1 = _losses(learner, batch, advantages, returns, old_values)
    assert pg1 < pg0 and vf1 < vf0
    changed = {n for n, p in learner.policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or n.startswith("value_head.") for n in changed)
    assert any(n.startswith("value_head.") for n in changed) and any("lora_B" in n for n in changed)
    assert stats["losses/optimizer_steps"] == 4 * 2  # 4 epochs x 2 minibatches of 6 (12 steps)
    for key in (
        "losses/policy",
        "losses/value",
        "losses/entropy",
        "losses/clip_fraction",
        "losses/approx_kl",
        "losses/grad_norm",
        "losses/explained_variance",
    ):
        assert key in stats


def test_kl_penalty_shifts_advantages_and_sft_labels_add_a_loss():
    batch = _batch()
    learner = _learner()
    _, plain, _, _ = learner._advantages([batch])
    stats = learner.update([batch], kl=[0.5] * batch.env_steps)
    assert stats["teacher/kl"] == 0.5
    with pytest.raises(ValueError, match="KL penalties"):
        learner.update([batch], kl=[0.0])
    t = batch.transitions[0]
    label = SFTLabel(t.observation, t.response_ids, [True] * len(t.response_ids))
    assert "losses/sft" in learner.update([batch], sft_labels=[label])
    assert plain.shape == (batch.env_steps,)


def test_a_non_finite_loss_or_weight_stops_the_update():
    batch = _batch()
    learner = _learner()
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    with pytest.raises(NonFiniteError, match="non-finite PPO minibatch .*policy nan.*step was not taken"):
        learner.update([batch], kl=[float("nan")] * batch.env_steps)  # a NaN penalty: NaN advantages
    assert all(torch.equal(p, before[n]) for n, p in learner.policy.named_parameters())
    with pytest.raises(NonFiniteError):
        _learner(lr=3e37).update([batch])  # a finite rate, but Adam steps of about 3e38 overflow float32
    learner = _learner(epochs=1, minibatch_size=12)  # one optimizer step, which leaves a weight infinite
    step = learner.optimizer.step
    learner.optimizer.step = lambda: (step(), learner.policy.trainable_parameters()[0].data.fill_(float("inf")))
    with pytest.raises(NonFiniteError, match="weights are no longer finite"):
        learner.update([batch])


def test_format_reward_is_added_after_gae():
    batch = _batch()
    learner = _learner()
    values, advantages, returns, raw = learner._advantages([batch])
    fmt = torch.tensor([t.format_reward for t in batch.transitions])
    assert torch.allclose(advantages, raw + fmt) and torch.allclose(returns, raw + values + fmt)


def test_publish_versions():
    learner = _learner()
    v1, adapter = learner.publish()
    v2, _ = learner.publish()
    assert (v1, v2) == (1, 2) and set(adapter) == set(learner.policy.adapter())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_state_round_trip_reproduces_the_next_update_bit_for_bit(device):
    """With LoRA dropout on, so the random state (the device's too, on a GPU) must travel with the state."""
    first, second = _batch(seed=1), _batch(seed=2)
    lora = LoraSettings(rank=4, alpha=8, dropout=0.3)
    original = _learner(lora, device, lr=1e-3, max_grad_norm=1.0)
    original.update([first])
    state = original.state_dict()
    original.update([second])
    resumed = _learner(lora, device, lr=1e-3, max_grad_norm=1.0)
    torch.manual_seed(123)  # whatever the process's random state, the learner's own decides
    if device == "cuda":
        torch.cuda.manual_seed(123)
    resumed.load_state_dict(state)
    resumed.update([second])
    a, b = original.policy.adapter(), resumed.policy.adapter()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(
        torch.equal(x, y)
        for x, y in zip(original.policy.value_head.parameters(), resumed.policy.value_head.parameters(), strict=True)
    )


def test_gradient_checkpointing_changes_no_update():
    """Recomputed activations (dropout masks replayed) give the very update of the stored ones."""
    batch = _batch(seed=3)
    lora = LoraSettings(rank=4, alpha=8, dropout=0.3)
    plain = _learner(lora, lr=1e-3, max_grad_norm=1.0)
    recomputed = _learner(lora, lr=1e-3, max_grad_norm=1.0, gradient_checkpointing=True)
    forwards = {}
    for name, learner in (("plain", plain), ("recomputed", recomputed)):
        attention = learner.policy.model.get_base_model().model.language_model.layers[0].self_attn
        forwards[name] = 0
        attention.register_forward_pre_hook(lambda *_, name=name: forwards.__setitem__(name, forwards[name] + 1))
    stats = plain.update([batch]), recomputed.update([batch])
    assert forwards["recomputed"] > forwards["plain"]  # backward ran the layers again
    a, b = plain.policy.adapter(), recomputed.policy.adapter()
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    assert any(not torch.equal(a[k], _learner(lora).policy.adapter()[k]) for k in a)  # the update did something
    assert stats[0]["losses/policy"] == pytest.approx(stats[1]["losses/policy"], abs=1e-6)
