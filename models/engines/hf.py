"""The transformers engine: batched multimodal sampling with log-probs, scoring, adapter loading.

Adapters are merged into the weights (``W = W0 + scaling * B @ A`` from pristine base copies), so
decoding runs plain linear layers. One prefill over the left-padded batch, then a plain decode loop
with the KV cache: temperature and top-k sampling, the log-prob of each sampled token under
``log_softmax(logits / temperature)``, and early exit once every row has produced its stop token.
Positions come from ``models.scoring``, the same rule the scoring forward uses, so sampled and
re-scored log-probs agree (tests: 1e-5 in fp32).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from core.answer import PromptSpec
from models import scoring
from models.engines.base import Generation, PromptInput, SamplingParams, finish
from models.loading import load_vlm
from models.lora import LoraSettings, MergedWeights, adapter_modules, iter_lora_deltas, lora_target_modules
from models.processing import EncodedPrompt

DEFAULT_LORA = LoraSettings()
MIN_SHARED_PREFIX = 16  # tokens; below this a shared prefix is not worth a separate forward


class HFEngine:
    """A Qwen2.5-VL policy (base + LoRA) served with transformers on CPU or GPU."""

    def __init__(
        self,
        model_path: str,
        lora: LoraSettings | None = DEFAULT_LORA,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
    ):
        model, processor = load_vlm(model_path, dtype=dtype, device=device)
        self._setup(model, processor, lora, device, seed)

    @classmethod
    def from_model(cls, model, processor, lora: LoraSettings | None = None, seed: int = 0) -> HFEngine:
        """Serve a model already in memory (e.g. the SFT trainer's, for its evaluations)."""
        engine = cls.__new__(cls)
        engine._setup(model, processor, lora, str(next(model.parameters()).device), seed)
        return engine

    def _setup(self, model, processor, lora: LoraSettings | None, device: str, seed: int) -> None:
        self.model, self.processor = model, processor
        self.lora = lora
        self.merged = MergedWeights(self.model, lora_target_modules(self.model)) if lora is not None else None
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._version = 0
        self._adapter: dict[str, torch.Tensor] = {}
        self._loads = 0  # adapter loads so far: the prefix cache is valid for one set of weights
        self._prefix = None  # ((prefix ids, loads), KV cache of the prefix)
        self.timing: dict[str, float] = {}  # seconds per phase of the last generate
        self._prefill_seconds = 0.0

    # ------------------------------------------------------------------ protocol

    @property
    def adapter_version(self) -> int:
        return self._version

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None:
        """Serve adapter ``version`` from now on (a LoRA state dict as models.lora.adapter_state gives)."""
        if self.merged is None:
            raise ValueError("this engine was built without LoRA (lora=None); it cannot load adapters")
        self.merged.check(adapter_modules(adapter))
        self.merged.apply(iter_lora_deltas(adapter, self.lora.scaling, self.device))
        self._adapter = dict(adapter)
        self._version = version
        self._loads += 1

    def get_rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def set_module_deltas(self, deltas: Iterable[tuple[str, torch.Tensor | None]], version: int) -> None:
        """Serve ``W0 + dW`` given module by module (the teacher's streamed merge) as ``version``."""
        if self.merged is None:
            raise ValueError("this engine was built without LoRA (lora=None); it cannot take weight updates")
        for name, delta in deltas:
            self.merged.apply_module(name, delta)
        self._adapter = {}
        self._version = version
        self._loads += 1

    def adapter(self) -> dict[str, torch.Tensor]:
        """The adapter being served (empty before the first load)."""
        return dict(self._adapter)

    def encode(self, prompts: Sequence[PromptInput]):
        return self.processor.encode([(p.text, p.tail) for p in prompts], [p.image for p in prompts])

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingParams, spec: PromptSpec | None = None
    ) -> list[Generation]:
        t0 = time.perf_counter()
        encoded = self.encode(prompts)
        t1 = time.perf_counter()
        tokens, logprobs = self._sample(encoded, sampling)
        t2 = time.perf_counter()
        out = [
            finish(Generation(list(p.input_ids), ids, lps, "", []), self.processor.tokenizer, spec)
            for p, ids, lps in zip(encoded, tokens, logprobs, strict=True)
        ]
        self.timing = {
            "encode": t1 - t0,
            "prefill": self._prefill_seconds,
            "decode": t2 - t1 - self._prefill_seconds,
            "parse": time.perf_counter() - t2,
        }
        return out

    @torch.no_grad()
    def score(
        self, prompts: Sequence[PromptInput], responses: Sequence[Sequence[int]], temperature: float
    ) -> list[list[float]]:
        """The log-prob of every given response token (the instruction every prompt starts with runs once)."""
        out = scoring.score(self.model, self.processor, self.encode(prompts), responses, temperature, share_prefix=True)
        return [row[: len(r)].tolist() for row, r in zip(out.logprobs.cpu(), responses, strict=True)]

    # ------------------------------------------------------------------ decoding

    def _sample(self, encoded, sampling: SamplingParams) -> tuple[list[list[int]], list[list[float]]]:
        model, proc = self.model, self.processor
        start = time.perf_counter()
        out, attention, next_position = self._prefill(encoded)
        self._prefill_seconds = time.perf_counter() - start
        past, logits = _reserve(out.past_key_values, sampling.max_new_tokens), out.logits[:, -1]
        n = len(encoded)
        stop = torch.tensor(proc.stop_token_ids, device=self.device)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        lengths = torch.full((n,), sampling.max_new_tokens, dtype=torch.long, device=self.device)
        tokens, logps = [], []
        for step in range(sampling.max_new_tokens):
            token, logp = self._pick(logits, sampling)
            token = torch.where(done, torch.full_like(token, proc.pad_token_id), token)
            tokens.append(token)
            logps.append(logp)
            hit = torch.isin(token, stop) & ~done
            lengths = torch.where(hit, torch.full_like(lengths, step + 1), lengths)
            done |= hit
            if bool(done.all()) or step + 1 == sampling.max_new_tokens:
                break
            attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype, device=self.device)], dim=1)
            pos = (next_position + step).view(1, n, 1).expand(3, n, 1)
            out = model(
                input_ids=token[:, None],
                attention_mask=attention,
                position_ids=pos,
                past_key_values=past,
                use_cache=True,
            )
            past, logits = out.past_key_values, out.logits[:, -1]
        token_rows = torch.stack(tokens, dim=1).tolist()
        logp_rows = torch.stack(logps, dim=1).tolist()
        return (
            [row[: int(k)] for row, k in zip(token_rows, lengths, strict=True)],
            [row[: int(k)] for row, k in zip(logp_rows, lengths, strict=True)],
        )

    def _prefill(self, encoded: list[EncodedPrompt]):
        """Forward the prompts; returns the model output, the attention mask and each row's next position.

        Prompts of one task share their instruction (prompts.PromptText), so the longest common
        token prefix of the batch (cut before the first image token, whose embedding differs per
        row) is computed once per adapter version and its KV cache copied to every row; only the
        rest of each prompt is forwarded, left-padded after the shared prefix.
        """
        model, proc = self.model, self.processor
        prefix = _common_prefix(encoded, proc.image_token_id) if len(encoded) > 1 else []
        if len(prefix) < MIN_SHARED_PREFIX:
            batch = {k: v.to(self.device) for k, v in proc.model_inputs(encoded, pad_left=True).items()}
            positions, next_position = scoring.position_ids(model, batch)
            out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
            return out, batch["attention_mask"], next_position
        n, shared = len(encoded), len(prefix)
        rest = [EncodedPrompt(p.input_ids[shared:], p.pixel_values, p.image_grid_thw) for p in encoded]
        batch = {k: v.to(self.device) for k, v in proc.model_inputs(rest, pad_left=True).items()}
        head = torch.tensor(prefix, device=self.device).expand(n, shared)
        full = {
            "input_ids": torch.cat([head, batch["input_ids"]], dim=1),
            "attention_mask": torch.cat([torch.ones_like(head), batch["attention_mask"]], dim=1),
            "mm_token_type_ids": torch.cat([torch.zeros_like(head), batch["mm_token_type_ids"]], dim=1),
        }
        if "image_grid_thw" in batch:
            full["image_grid_thw"] = batch["image_grid_thw"]
        positions, next_position = scoring.position_ids(model, full)
        past = copy.deepcopy(self._prefix_cache(tuple(prefix)))
        past.batch_repeat_interleave(n)
        out = model(
            **batch | {"attention_mask": full["attention_mask"]},
            position_ids=positions[:, :, shared:],
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )
        return out, full["attention_mask"], next_position

    def _prefix_cache(self, prefix: tuple[int, ...]):
        if self._prefix is None or self._prefix[0] != (prefix, self._loads):
            ids = torch.tensor([prefix], device=self.device)
            positions = torch.arange(len(prefix), device=self.device).view(1, 1, -1).expand(3, 1, -1)
            out = self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1)
            self._prefix = ((prefix, self._loads), out.past_key_values)
        return self._prefix[1]

    def _pick(self, logits: torch.Tensor, sampling: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled (or greedy) next tokens (B,) and their log-probs at the sampling temperature."""
        proc = self.processor
        log_probs = scoring.tempered_log_probs(logits, sampling.temperature, proc.banned_token_ids, proc.vocab_size)
        if sampling.temperature <= 0:
            token = log_probs.argmax(dim=-1)
        else:
            candidates = log_probs
            if 0 < sampling.top_k < logits.shape[-1]:
                kth = log_probs.topk(sampling.top_k, dim=-1).values[:, -1:]
                candidates = log_probs.masked_fill(log_probs < kth, float("-inf"))
            token = torch.multinomial(candidates.exp(), 1, generator=self.generator).squeeze(-1)
        return token, log_probs.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def _common_prefix(encoded: list[EncodedPrompt], stop_token: int) -> list[int]:
    """The longest token prefix all prompts share, ending before the first ``stop_token``."""
    first = encoded[0].input_ids
    length = min(len(p.input_ids) for p in encoded) - 1  # every row keeps at least one own token
    for i in range(max(length, 0)):
        token = first[i]
        if token == stop_token or any(p.input_ids[i] != token for p in encoded):
            return first[:i]
    return first[: max(length, 0)]


class _ReservedLayer(DynamicLayer):
    """A KV-cache layer with room reserved for the whole response: appending a token writes into a
    preallocated buffer instead of concatenating (copying) the whole cache at every decode step."""

    @classmethod
    def around(cls, layer: DynamicLayer, extra: int) -> _ReservedLayer:
        new = cls()
        keys, values = layer.keys, layer.values
        new.dtype, new.device, new.is_initialized = keys.dtype, keys.device, True
        batch, heads, length, _ = keys.shape
        new._keys = keys.new_empty((batch, heads, length + extra, keys.shape[-1]))
        new._values = values.new_empty((batch, heads, length + extra, values.shape[-1]))
        new._keys[:, :, :length] = keys
        new._values[:, :, :length] = values
        new._length = length
        new.keys, new.values = new._keys[:, :, :length], new._values[:, :, :length]
        return new

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError("KV cache reservation exceeded: more tokens than max_new_tokens")
        self._keys[:, :, self._length : end] = key_states
        self._values[:, :, self._length : end] = value_states
        self._length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def _reserve(cache, extra: int):
    """Swap each layer of a freshly prefilled DynamicCache for a _ReservedLayer with ``extra`` slots."""
    cache.layers = [_ReservedLayer.around(layer, extra) for layer in cache.layers]
    return cache
