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
from transformers.modeling_outputs import BaseModelOutputWithPooling

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
    return torch.log_softmax(_tempered(logits, temperature, banned, vocab_size), dim=-1)


def _tempered(
    logits: torch.Tensor, temperature: float, banned: Sequence[int], vocab_size: int | None, copy: bool = True
) -> torch.Tensor:
    """The logits a response token is drawn from (fp32, banned ids at -inf). The scaling and the ban are
    in place: on a copy, or on ``logits`` itself when it is fp32 and ``copy`` is off."""
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits[..., :vocab_size]
    logits = logits.to(torch.float32, copy=copy)
    logits.div_(temperature if temperature > 0 else 1.0)
    if banned:
        logits.index_fill_(-1, torch.tensor(banned, device=logits.device), float("-inf"))
    return logits


ROWS_AT_ONCE = 256  # rows of (rows, V) temporaries the head's softmax passes hold at a time


class _TokenLogprob(torch.autograd.Function):
    """Tempered log-prob of each row's target (and, without a gradient, each row's entropy) from the
    lm_head's output, holding two (N, V) tensors at most: the tempered logits (kept for the backward)
    and, in the backward, the gradient, written in place. The softmax passes go ``ROWS_AT_ONCE`` rows
    at a time. Autograd's own ops would keep the tempered, log-softmaxed and exponentiated copies and
    make one gradient tensor per step back (bench/score_memory.py measures both)."""

    @staticmethod
    def forward(ctx, raw, targets, temperature, banned, vocab_size, entropy):
        scale = temperature if temperature > 0 else 1.0
        logits = _tempered(raw, scale, banned, vocab_size, copy=raw.dtype == torch.float32 and raw.requires_grad)
        lse = torch.empty(len(logits), device=logits.device)
        entropies = torch.empty(len(logits) if entropy else 0, device=logits.device)
        for start in range(0, len(logits), ROWS_AT_ONCE):
            rows = slice(start, start + ROWS_AT_ONCE)
            lse[rows] = torch.logsumexp(logits[rows], dim=-1)
            if entropy:  # H = lse - sum(p * x), with p * x = 0 where p = 0 (x = -inf)
                probs = (logits[rows] - lse[rows, None]).exp()
                entropies[rows] = lse[rows] - torch.where(probs > 0, probs * logits[rows], 0.0).sum(-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.scale, ctx.banned, ctx.width = scale, banned, raw.shape[-1]
        ctx.mark_non_differentiable(entropies)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse, entropies

    @staticmethod
    def backward(ctx, grad, _):
        logits, targets, lse = ctx.saved_tensors
        # d/dx (x[y] - lse(x)) = onehot(y) - softmax(x), then through the scaling and the ban
        out = torch.empty(len(logits), ctx.width, device=logits.device, dtype=torch.float32)
        for start in range(0, len(logits), ROWS_AT_ONCE):
            rows = slice(start, start + ROWS_AT_ONCE)
            used = out[rows, : logits.shape[-1]]
            torch.sub(logits[rows], lse[rows, None], out=used)
            used.exp_().mul_(-grad[rows, None])
        out[:, logits.shape[-1] :] = 0.0  # embedding rows past the tokenizer's vocabulary
        out.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1))
        out.div_(ctx.scale)
        if ctx.banned:
            out.index_fill_(-1, torch.tensor(ctx.banned, device=out.device), 0.0)
        return out, None, None, None, None, None


def head_logprobs(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    banned: Sequence[int],
    vocab_size: int | None,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, H) final hidden states and the (N,) tokens that followed -> their tempered log-probs (N,) and,
    when asked, the entropies (N,, no gradient). The part of scoring whose memory grows with the
    vocabulary (``_TokenLogprob``)."""
    raw = head(hidden)
    token_lp, entropies = _TokenLogprob.apply(raw, targets, temperature, list(banned), vocab_size, entropy)
    return token_lp, entropies if entropy else None


@dataclass
class ScoreOutput:
    logprobs: torch.Tensor  # (B, T) log-probs of the response tokens, 0 where masked
    mask: torch.Tensor  # (B, T) True on real response tokens
    prompt_hidden: torch.Tensor  # (B, H) final hidden state of each prompt's last token
    entropy: torch.Tensor | None  # (B, T) entropy of the tempered next-token distribution (when asked), 0 masked


def vision_trains(model) -> bool:
    """Whether any vision-tower weight has a gradient (then its features cannot be computed once)."""
    return any(p.requires_grad for p in _vl_model(model).visual.parameters())


def image_features(model, processor: VLProcessor, prompts: Sequence[EncodedPrompt]) -> list[torch.Tensor | None]:
    """The vision tower's output for each prompt's image (None for a text prompt), no gradient: computed
    once and passed to ``score(images=...)`` while the vision tower does not change (it is frozen)."""
    with_image = [p for p in prompts if p.pixel_values is not None]
    if not with_image:
        return [None] * len(prompts)
    device = next(model.parameters()).device
    with torch.no_grad():
        pixels = torch.cat([p.pixel_values for p in with_image]).to(device)
        grids = torch.cat([p.image_grid_thw for p in with_image]).to(device)
        features = iter(_vl_model(model).get_image_features(pixels, grids, return_dict=True).pooler_output)
    return [next(features) if p.pixel_values is not None else None for p in prompts]


def shared_prefix(batch: dict[str, torch.Tensor], prompt_lens: Sequence[int], minimum: int = 16) -> int:
    """How many leading tokens every row has in common (text only: an image placeholder's embedding
    depends on its picture), leaving each prompt at least one token of its own; 0 when under ``minimum``
    or for a single row."""
    ids, types = batch["input_ids"], batch["mm_token_type_ids"]
    if len(ids) < 2:
        return 0
    limit = min(prompt_lens) - 1
    same = (ids[:, :limit] == ids[:1, :limit]).all(0) & (types[:, :limit] == 0).all(0)
    length = int(same.long().cumprod(0).sum())
    return length if length >= minimum else 0


def score(
    model,
    processor: VLProcessor,
    prompts: Sequence[EncodedPrompt],
    responses: Sequence[Sequence[int]],
    temperature: float,
    *,
    images: Sequence[torch.Tensor | None] | None = None,
    share_prefix: bool = False,
    entropy: bool = False,
) -> ScoreOutput:
    """One right-padded forward over prompt + response; differentiable when grad is enabled.

    ``images``: the prompts' image features from ``image_features`` (the vision tower is not run again).
    ``share_prefix``: the tokens every row starts with go through the model once, as one row whose keys
    and values every row then attends to (the same numbers to float rounding, and the same gradients:
    they flow back through the shared row). With LoRA dropout on, that row's dropout mask is shared.
    Off under gradient checkpointing, which drops the cache. ``entropy``: also the per-token entropy,
    without gradients.
    """
    banned = set(processor.banned_token_ids)
    if any(banned.intersection(r) for r in responses):
        raise ValueError("a response holds a vision placeholder token; policies never generate those")
    batch = processor.model_inputs(prompts, responses, pad_left=False)
    positions, _ = position_ids(model, batch)  # on the host: get_rope_index reads values (syncs on a GPU)
    prompt_len_list = [len(p.input_ids) for p in prompts]
    checkpointing = getattr(model, "is_gradient_checkpointing", False) and model.training
    split = shared_prefix(batch, prompt_len_list) if share_prefix and not checkpointing else 0  # host, too
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    positions = positions.to(device)
    vl = _vl_model(model)
    media: dict = {}
    if images is not None:
        shown = [f for f in images if f is not None]
        if shown:
            media["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=shown)}
    elif "pixel_values" in batch:
        media = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
    elif "image_grid_thw" in batch:
        raise ValueError("prompts whose pixels were dropped need their image features: score(images=...)")
    ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
    cache = None
    if split:
        head = vl(
            input_ids=ids[:1, :split],
            attention_mask=attention[:1, :split],
            position_ids=positions[:, :1, :split],
            mm_token_type_ids=types[:1, :split],
            use_cache=True,
        )
        cache = head.past_key_values
        cache.batch_repeat_interleave(len(prompts))
    out = vl(
        input_ids=ids[:, split:],
        attention_mask=attention,
        position_ids=positions[:, :, split:],
        mm_token_type_ids=types[:, split:],
        past_key_values=cache,
        use_cache=cache is not None,
        **media,
    )
    hidden = out.last_hidden_state  # (B, L - split, H): position i of a row is hidden[:, i - split]
    n, width = len(prompts), max(len(r) for r in responses) if responses else 0
    prompt_lens = torch.tensor(prompt_len_list, device=device)
    response_lens = torch.tensor([len(r) for r in responses], device=device)
    steps = torch.arange(width, device=device)
    mask = steps.unsqueeze(0) < response_lens.unsqueeze(1)  # (B, T)
    # The logits predicting response token j sit at position prompt_len + j - 1.
    rows = torch.arange(n, device=device).unsqueeze(1).expand(n, width)
    cols = (prompt_lens.unsqueeze(1) - 1 + steps.unsqueeze(0)).clamp(max=ids.shape[1] - 1)
    token_lp, token_entropy = head_logprobs(
        lm_head(model),
        hidden[rows[mask], cols[mask] - split],
        ids[rows[mask], cols[mask] + 1],
        temperature,
        processor.banned_token_ids,
        processor.vocab_size,
        entropy,
    )
    logprobs = torch.zeros((n, width), device=device, dtype=token_lp.dtype).masked_scatter(mask, token_lp)
    entropies = None
    if token_entropy is not None:
        entropies = torch.zeros((n, width), device=device).masked_scatter(mask, token_entropy)
    prompt_hidden = hidden[torch.arange(n, device=device), prompt_lens - 1 - split]
    return ScoreOutput(logprobs, mask, prompt_hidden, entropies)
