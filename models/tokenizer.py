"""A small byte-level BPE tokenizer for the embedded model, trained here on the tasks' own text.

It mirrors the real Qwen2.5 tokenizer where that matters: the same pre-tokenizer regex (every digit
its own token, which keeps card arithmetic readable), byte-level fallback (any text encodes), the
Qwen-VL special tokens and a Qwen-style chat template with the image placeholder
``<|vision_start|><|image_pad|><|vision_end|>``. Training takes under a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
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
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS),
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
