"""Per-token log-probs of given responses in one forward pass, shared by the rollout engine's
scoring, the learner and the teacher, so all three compute the same function.

Log-probs are ``log_softmax(logits / temperature)`` at the sampling temperature (1 for greedy), so
sampled, re-scored and teacher numbers are comparable (DESIGN.md section 6). Positions are always
computed here, from the attention mask and the image grids, and passed explicitly: the generation
loop uses the same rule, which is what makes sampled and re-scored log-probs agree to 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.processing import EncodedPrompt, VLProcessor


def position_ids(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids (3, B, L) for a padded batch and each row's next position (B,)."""
    attention = batch["attention_mask"]
    if "image_grid_thw" in batch:
        positions, _ = _vl_model(model).get_rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=attention,
        )
    else:
        flat = (attention.long().cumsum(-1) - 1).clamp(min=0) * attention
        positions = flat.unsqueeze(0).expand(3, -1, -1)
    next_position = (positions.max(dim=0).values * attention).max(dim=-1).values + 1
    return positions, next_position


def _vl_model(model):
    """The Qwen2_5_VLModel inside a (possibly peft-wrapped) Qwen2_5_VLForConditionalGeneration."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def lm_head(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.lm_head


def tempered_log_probs(
    logits: torch.Tensor, temperature: float, banned: Sequence[int], vocab_size: int | None = None
) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` over the tokens a response may contain (fp32).

    Temperature 0 (greedy) scores at temperature 1. ``banned`` (vision placeholders) get -inf; only
    the first ``vocab_size`` ids (the tokenizer's) are kept, so padded embedding rows are never sampled.
    """
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits[..., :vocab_size]
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    if banned:
        logits = logits.index_fill(-1, torch.tensor(banned, device=logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


@dataclass
class ScoreOutput:
    logprobs: torch.Tensor  # (B, T) log-probs of the response tokens, 0 where masked
    mask: torch.Tensor  # (B, T) True on real response tokens
    prompt_hidden: torch.Tensor  # (B, H) final hidden state of each prompt's last token
    entropy: torch.Tensor  # (B, T) entropy of the tempered next-token distribution, 0 where masked


def score(
    model,
    processor: VLProcessor,
    prompts: Sequence[EncodedPrompt],
    responses: Sequence[Sequence[int]],
    temperature: float,
) -> ScoreOutput:
    """One right-padded forward over prompt + response; differentiable when grad is enabled."""
    banned = set(processor.banned_token_ids)
    if any(banned.intersection(r) for r in responses):
        raise ValueError("a response holds a vision placeholder token; policies never generate those")
    batch = processor.model_inputs(prompts, responses, pad_left=False)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    positions, _ = position_ids(model, batch)
    out = _vl_model(model)(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=positions,
        pixel_values=batch.get("pixel_values"),
        image_grid_thw=batch.get("image_grid_thw"),
        mm_token_type_ids=batch["mm_token_type_ids"],
        use_cache=False,
    )
    hidden = out.last_hidden_state  # (B, L, H)
    n, width = len(prompts), max(len(r) for r in responses) if responses else 0
    prompt_lens = torch.tensor([len(p.input_ids) for p in prompts], device=device)
    response_lens = torch.tensor([len(r) for r in responses], device=device)
    steps = torch.arange(width, device=device)
    mask = steps.unsqueeze(0) < response_lens.unsqueeze(1)  # (B, T)
    # The logits predicting response token j sit at position prompt_len + j - 1.
    rows = torch.arange(n, device=device).unsqueeze(1).expand(n, width)
    cols = (prompt_lens.unsqueeze(1) - 1 + steps.unsqueeze(0)).clamp(max=hidden.shape[1] - 1)
    log_probs = tempered_log_probs(
        lm_head(model)(hidden[rows[mask], cols[mask]]),
        temperature,
        processor.banned_token_ids,
        processor.vocab_size,
    )
    targets = batch["input_ids"][rows[mask], cols[mask] + 1]
    token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
    logprobs = torch.zeros((n, width), device=device, dtype=token_lp.dtype)
    entropies = torch.zeros_like(logprobs)
    logprobs = logprobs.masked_scatter(mask, token_lp)
    entropies = entropies.masked_scatter(mask, entropy)
    prompt_hidden = hidden[torch.arange(n, device=device), prompt_lens - 1]
    return ScoreOutput(logprobs, mask, prompt_hidden, entropies)
