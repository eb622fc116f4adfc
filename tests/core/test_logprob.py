import torch

from core.logprob import step_logprob


def test_step_logprob_by_hand():
    # Row 0: thought tokens -1, -2 and action tokens -0.5, -0.25 with lambda 0.5:
    #   0.5 * (-1 - 2) + (-0.5 - 0.25) = -1.5 - 0.75 = -2.25
    # Row 1: one thought token -4, one action token -1, then padding (neither mask):
    #   0.5 * -4 + -1 = -3
    lp = torch.tensor([[-1.0, -2.0, -0.5, -0.25], [-4.0, -1.0, -9.0, -9.0]])
    thought = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    action = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    assert step_logprob(lp, thought, action, 0.5).tolist() == [-2.25, -3.0]
    assert abs(step_logprob(lp, thought, action, 0.2)[0].item() - (0.2 * -3 - 0.75)) < 1e-6  # ALFWorld: -1.35


def test_step_logprob_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    lp = -torch.rand(5, 9, generator=gen)
    thought = torch.rand(5, 9, generator=gen) > 0.5
    action = ~thought & (torch.rand(5, 9, generator=gen) > 0.3)
    fast = step_logprob(lp, thought, action, 0.5)
    for b in range(5):
        slow = sum(0.5 * lp[b, t] if thought[b, t] else lp[b, t] if action[b, t] else 0.0 for t in range(9))
        assert abs(fast[b].item() - float(slow)) < 1e-6
