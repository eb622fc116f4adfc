"""GAE, PPO losses and KL estimators: hand-worked values and slow reference loops."""

import math

import pytest
import torch

from core.gae import gae
from core.kl import thought_kl
from core.ppo_loss import explained_variance, policy_loss, value_loss


def test_gae_by_hand():
    # gamma = lam = 0.5. Env 0 ends at its last step; env 1 ends at its first and then continues.
    # env 0: t2: delta = 2 - 1.5 = 0.5                        A2 = 0.5
    #        t1: delta = 0 + 0.5*1.5 - 1.0 = -0.25            A1 = -0.25 + 0.25*0.5 = -0.125
    #        t0: delta = 1 + 0.5*1.0 - 0.5 = 1.0              A0 = 1.0 + 0.25*(-0.125) = 0.96875
    # env 1: t2: delta = 0 + 0.5*2 (bootstrap) - 1 = 0        A2 = 0
    #        t1: delta = 1 + 0.5*1 - 1 = 0.5                  A1 = 0.5
    #        t0: done, so delta = 0 - 1 = -1 and no carry     A0 = -1
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [1.0, 1.0], [1.5, 1.0]])
    dones = torch.tensor([[0, 1], [0, 0], [1, 0]], dtype=torch.bool)
    adv, ret = gae(rewards, values, dones, torch.tensor([9.0, 2.0]), gamma=0.5, lam=0.5)
    assert adv.tolist() == [[0.96875, -1.0], [-0.125, 0.5], [0.5, 0.0]]
    assert torch.equal(ret, adv + values)


def _slow_gae(rewards, values, dones, next_values, gamma, lam):
    rounds, k = rewards.shape
    out = torch.zeros(rounds, k)
    for env in range(k):
        for t in range(rounds):
            total, discount = 0.0, 1.0
            for u in range(t, rounds):  # A_t = sum_u (gamma lam)^(u-t) delta_u, stopping at an episode end
                nxt = values[u + 1, env] if u + 1 < rounds else next_values[env]
                delta = rewards[u, env] + gamma * nxt * (0.0 if dones[u, env] else 1.0) - values[u, env]
                total += discount * delta
                if dones[u, env]:
                    break
                discount *= gamma * lam
            out[t, env] = total
    return out


def test_gae_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    dones, nxt = torch.rand(7, 4, generator=g) < 0.3, torch.randn(4, generator=g)
    adv, _ = gae(rewards, values, dones, nxt, gamma=0.9, lam=0.95)
    assert torch.allclose(adv, _slow_gae(rewards, values, dones, nxt, 0.9, 0.95), atol=1e-5)


def test_policy_loss_by_hand():
    # ratios 1 and 1.5 with advantage 1 and clip 0.1: min(1, 1) and min(1.5, 1.1) -> loss -(1 + 1.1)/2
    # approx_kl = mean(0, (1.5 - 1) - ln 1.5) = (0.5 - 0.405465) / 2
    loss, stats = policy_loss(torch.tensor([0.0, math.log(1.5)]), torch.zeros(2), torch.ones(2), clip=0.1)
    assert loss.item() == pytest.approx(-1.05)
    assert float(stats["clip_fraction"]) == 0.5
    assert float(stats["approx_kl"]) == pytest.approx((0.5 - math.log(1.5)) / 2)
    # ratio 0.5 with advantage -1: min(-0.5, 0.9 * -1) = -0.9 -> loss 0.9 (the pessimistic bound)
    loss, _ = policy_loss(torch.tensor([math.log(0.5)]), torch.zeros(1), -torch.ones(1), clip=0.1)
    assert loss.item() == pytest.approx(0.9)


def test_value_loss_by_hand():
    # V 2.0, V_old 1.0, R 3.0, clip 0.1: (2-3)^2 = 1; clipped V = 1.1, (1.1-3)^2 = 3.61; 0.5 * max = 1.805
    assert value_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([3.0]), 0.1).item() == pytest.approx(1.805)
    assert value_loss(torch.tensor([1.05]), torch.tensor([1.0]), torch.tensor([1.05]), 0.1).item() == 0.0


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.full((3,), 2.0), target) == 0.0
    assert math.isnan(explained_variance(target, torch.ones(3)))


def test_kl_estimators_by_hand():
    student = torch.tensor([[-1.0, -2.0, -0.5]])
    teacher = torch.tensor([[-1.5, -1.0, -0.5]])
    thought = torch.tensor([[True, True, False]])
    # k1 = s - t = [0.5, -1.0, (0)] -> clipped at 0: [0.5, 0] -> mean over the 2 thought tokens 0.25
    assert thought_kl(student, teacher, thought, "k1_clip").item() == pytest.approx(0.25)
    assert thought_kl(student, teacher, thought, "abs").item() == pytest.approx(0.75)
    # k3 with r = t - s = [-0.5, 1.0]: e^-0.5 + 0.5 - 1 = 0.1065307, e^1 - 1 - 1 = 0.7182818
    assert thought_kl(student, teacher, thought, "k3").item() == pytest.approx((0.1065307 + 0.7182818) / 2, abs=1e-6)
    # No thought tokens: no penalty; the same model as teacher: no penalty.
    assert thought_kl(student, teacher, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0
    for estimator in ("k1_clip", "abs", "k3"):
        assert thought_kl(student, student, thought, estimator).item() == 0.0
    with pytest.raises(ValueError, match="k1_clip"):
        thought_kl(student, teacher, thought, "k2")


def test_k1_clip_caps_at_ten():
    assert thought_kl(torch.tensor([[0.0]]), torch.tensor([[-50.0]]), torch.tensor([[True]])).item() == 10.0


def test_kl_and_policy_loss_match_slow_loops():
    g = torch.Generator().manual_seed(3)
    student, teacher = -torch.rand(4, 6, generator=g) * 3, -torch.rand(4, 6, generator=g) * 3
    thought = torch.rand(4, 6, generator=g) > 0.4
    for estimator, per_token in (
        ("k1_clip", lambda s, t: min(max(s - t, 0.0), 10.0)),
        ("abs", lambda s, t: abs(s - t)),
        ("k3", lambda s, t: math.exp(t - s) - (t - s) - 1.0),
    ):
        fast = thought_kl(student, teacher, thought, estimator)
        for b in range(4):
            values = [per_token(student[b, i].item(), teacher[b, i].item()) for i in range(6) if thought[b, i]]
            assert fast[b].item() == pytest.approx(sum(values) / len(values) if values else 0.0, abs=1e-5)
    new, old, adv = torch.randn(8, generator=g) * 0.3, torch.randn(8, generator=g) * 0.3, torch.randn(8, generator=g)
    loss, _ = policy_loss(new, old, adv, 0.2)
    slow = 0.0
    for i in range(8):
        ratio = math.exp(new[i].item() - old[i].item())
        slow += -min(ratio * adv[i].item(), min(max(ratio, 0.8), 1.2) * adv[i].item()) / 8
    assert loss.item() == pytest.approx(slow, abs=1e-5)
