"""The lm_head's log-probs and entropies (models/scoring.py ``head_logprobs``) against autograd's
straightforward log_softmax, values and gradients: with a temperature, banned ids, embedding rows past
the tokenizer's vocabulary, rows in several softmax chunks, and fp32 or bf16 logits."""

import pytest
import torch

from models import scoring


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_logprobs_match_log_softmax_in_values_and_gradients(monkeypatch, dtype):
    monkeypatch.setattr(scoring, "ROWS_AT_ONCE", 4)  # 11 rows: three chunks, the last a partial one
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False).to(dtype)
    hidden = torch.randn(11, 16, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, 30, (11,))
    targets[targets == 3] = 4  # never a banned id
    banned, vocab, temperature = [3, 7], 36, 0.7  # ids 36..39: embedding rows no token uses

    def reference():
        logits = head(hidden)[:, :vocab].float() / temperature
        logits = logits.index_fill(-1, torch.tensor(banned), float("-inf"))
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
        return log_probs.gather(-1, targets[:, None]).squeeze(-1), entropy

    weights = torch.randn(11)
    expected_lp, expected_entropy = reference()
    (expected_lp * weights).sum().backward()
    expected_grad, hidden.grad = hidden.grad.clone(), None
    token_lp, entropy = scoring.head_logprobs(head, hidden, targets, temperature, banned, vocab, entropy=True)
    (token_lp * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(token_lp, expected_lp, atol=tol) and torch.allclose(entropy, expected_entropy, atol=tol)
    assert not entropy.requires_grad  # logged, never a loss
    assert hidden.grad.dtype == dtype and torch.allclose(hidden.grad.float(), expected_grad.float(), atol=tol)
    with torch.no_grad():  # the learner's pass over the sampled steps: the same numbers
        again, _ = scoring.head_logprobs(head, hidden, targets, temperature, banned, vocab)
    assert torch.equal(again, token_lp.detach())
