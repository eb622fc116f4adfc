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
    sampled = learner._sample_pass(batch.transitions)
    # A teacher 0.5 less confident on every token: k1_clip is 0.5 per thought token, so 0.5 per step with
    # thoughts and 0 for a step without any.
    rows = zip(sampled.token_logprobs, batch.transitions, strict=True)
    teacher = [(row[: len(t.response_ids)] - 0.5).tolist() for row, t in rows]
    with_thoughts = [any(t.thought_mask) for t in batch.transitions]
    stats = learner.update([batch], teacher_logprobs=teacher)
    assert stats["teacher/kl"] == pytest.approx(0.5 * sum(with_thoughts) / len(with_thoughts), abs=1e-6)
    with pytest.raises(ValueError, match="teacher log-probs for 1 transitions"):
        learner.update([batch], teacher_logprobs=[[0.0]])
    with pytest.raises(ValueError, match="teacher log-probs of 1 tokens for a response of"):
        learner.update([batch], teacher_logprobs=[[0.0]] * batch.env_steps)
    t = batch.transitions[0]
    label = SFTLabel(t.observation, t.response_ids, [True] * len(t.response_ids))
    assert "losses/sft" in learner.update([batch], sft_labels=[label])
    assert plain.shape == (batch.env_steps,)


def test_the_learner_scores_the_sampled_tokens_itself_and_reports_the_engines_gap():
    """fp32 on CPU: the engine and the learner agree (gap < 1e-5). An engine that is off by 0.3 per token
    (as a bf16 or vLLM engine is, by less) shows in the gap and no longer moves the first ratio from 1."""
    batch = _batch()
    stats = _learner(epochs=1, minibatch_size=12).update([batch])
    assert stats["rollout/logprob_gap"] < 1e-5 and stats["rollout/token_logprob_gap"] < 1e-5
    assert stats["rollout/logprob_gap_max"] < 1e-5
    for t in batch.transitions:
        t.old_logprobs = [lp + 0.3 for lp in t.old_logprobs]
        t.old_logprob += 0.3 * (0.5 * sum(t.thought_mask) + sum(t.action_mask))
    stats = _learner(epochs=1, minibatch_size=12).update([batch])  # one minibatch: its ratio is the first
    assert stats["rollout/token_logprob_gap"] == pytest.approx(0.3, abs=1e-5)
    assert stats["rollout/logprob_gap_max"] > 1.0
    assert stats["losses/approx_kl"] < 1e-9 and stats["losses/clip_fraction"] == 0.0


def test_a_non_finite_loss_or_weight_stops_the_update():
    batch = _batch()
    learner = _learner()
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    with pytest.raises(NonFiniteError, match="non-finite PPO minibatch .*policy nan.*step was not taken"):
        learner.update([batch], teacher_logprobs=[[float("nan")] * len(t.response_ids) for t in batch.transitions])
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
    plain = _learner(lora, lr=1e-3, max_grad_norm=1.0, share_prefix=False)  # the same dropout draws
    recomputed = _learner(lora, lr=1e-3, max_grad_norm=1.0, share_prefix=False, gradient_checkpointing=True)
    forwards = {"plain": 0, "recomputed": 0}

    def count(name):  # forwards of whole micro-batches (not of a shared prefix's single row)
        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            forwards[name] += hidden.shape[0] > 1

        return hook

    for name, learner in (("plain", plain), ("recomputed", recomputed)):
        layer = learner.policy.model.get_base_model().model.language_model.layers[0].self_attn
        layer.register_forward_pre_hook(count(name), with_kwargs=True)
    stats = plain.update([batch]), recomputed.update([batch])
    assert forwards["recomputed"] > forwards["plain"]  # backward ran the layers again
    a, b = plain.policy.adapter(), recomputed.policy.adapter()
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    assert any(not torch.equal(a[k], _learner(lora).policy.adapter()[k]) for k in a)  # the update did something
    assert stats[0]["losses/policy"] == pytest.approx(stats[1]["losses/policy"], abs=1e-6)
