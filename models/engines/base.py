"""The policy-engine protocol and the types that cross it.

An engine turns prompts (text + optional image) into sampled responses with per-token log-probs,
scores given responses, and loads adapter versions. The rollout worker, the evaluation loop and the
teacher only talk to this Protocol, so the transformers engine and a vLLM engine are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from core.answer import ParsedResponse, PromptSpec, parse_response, token_masks
from core.batch import Observation
from envs import render
from models.tokenizer import token_char_spans


@dataclass(frozen=True)
class PromptInput:
    """A user message: ``text``, then the image (if any), then ``tail`` (prompts.PromptText)."""

    text: str
    image: np.ndarray | None = None  # (H, W, 3) uint8, or None for a text-only prompt
    tail: str = ""


def prompt_input(observation: Observation) -> PromptInput:
    """The engine input an observation stands for, its frame redrawn (batches keep the state, not pixels)."""
    image = None if observation.frame is None else render.from_state(observation.frame)
    return PromptInput(observation.text, image, observation.tail)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.2  # 0 = greedy; log-probs then use temperature 1
    top_k: int = 5  # 0 = no top-k truncation
    max_new_tokens: int = 64


@dataclass
class Generation:
    """One sampled response."""

    prompt_ids: list[int]  # (P,) the encoded prompt, image placeholders expanded
    token_ids: list[int]  # (T,) response tokens, the stop token included when one was produced
    logprobs: list[float]  # (T,) log-probs at the sampling temperature
    text: str  # the response text without special tokens
    spans: list[tuple[int, int]]  # (T,) each token's character span in ``text``
    parsed: ParsedResponse | None = None
    thought_mask: list[bool] = field(default_factory=list)  # (T,)
    action_mask: list[bool] = field(default_factory=list)  # (T,)


class PolicyEngine(Protocol):
    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingParams, spec: PromptSpec | None = None
    ) -> list[Generation]: ...

    def score(
        self, prompts: Sequence[PromptInput], responses: Sequence[Sequence[int]], temperature: float
    ) -> list[list[float]]: ...

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None: ...

    def get_rng_state(self) -> Any:
        """The sampling RNG's state, for checkpoints: restored, the same calls sample the same tokens."""
        ...

    def set_rng_state(self, state: Any) -> None: ...

    @property
    def adapter_version(self) -> int: ...


def finish(generation: Generation, tokenizer, spec: PromptSpec | None) -> Generation:
    """Fill text, spans and (with a spec) the parse and the thought/action masks."""
    generation.text, generation.spans = token_char_spans(tokenizer, generation.token_ids)
    if spec is not None:
        generation.parsed = parse_response(generation.text, spec)
        generation.thought_mask, generation.action_mask = token_masks(
            generation.spans, generation.parsed.action_key_start
        )
    return generation
