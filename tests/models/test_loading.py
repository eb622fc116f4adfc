import json

import pytest
import torch

from models import embedded, scoring
from models.loading import load_vlm, resolve


def _logprobs(model, processor):
    encoded = processor.encode([("a prompt", "with a tail")], [None])
    with torch.no_grad():
        return scoring.score(model, processor, encoded, [[10, 11, 12, 2]], temperature=1.0).logprobs


def test_embedded_model_sizes():
    model, _ = load_vlm("embedded:xs")
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000  # a few hundred thousand
    model_s, _ = load_vlm("embedded:s")
    assert 1_000_000 < sum(p.numel() for p in model_s.parameters()) < 10_000_000  # a few million
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_save_and_load_back_gives_identical_logprobs(tmp_path):
    model, processor = load_vlm("embedded:xs")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, processor_again = load_vlm(str(tmp_path))
    assert torch.equal(_logprobs(model, processor), _logprobs(again, processor_again))
    assert embedded.fingerprint(model) == embedded.fingerprint(again)


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        resolve(str(tmp_path))
    with pytest.raises(ValueError, match="embedded:xs"):
        resolve("embedded:huge")


def test_fast_patch_embedding_equals_the_conv3d():
    model, processor = load_vlm("embedded:xs")
    embed = model.model.visual.patch_embed
    still = processor.pixels(torch.randint(0, 256, (300, 300, 3), dtype=torch.uint8).numpy())[0]
    moving = still.clone()
    moving.view(-1, 3, 2, 196)[:, :, 1] += 0.5  # two different frames: no folding allowed
    for x in (still, moving):
        reference = embed.proj(x.view(-1, 3, 2, 14, 14)).view(-1, embed.embed_dim)
        assert torch.allclose(embed(x), reference, atol=1e-5)


@pytest.mark.parametrize(
    "size, billions, vocab", [("qwen2.5-vl-3b", 3.7546, 151936), ("qwen2.5-vl-7b", 8.2922, 152064)]
)
def test_random_stand_ins_have_the_published_architecture(size, billions, vocab):
    """The random-weight stand-ins for GPU timing: Qwen2.5-VL-3B/7B-Instruct's parameter counts."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from models.loading import load_processor

    tokenizer = load_processor("embedded:s").tokenizer
    config = embedded.model_config(size, tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 4) == billions
    assert config.text_config.vocab_size == vocab > len(tokenizer)  # padded rows: never sampled (scoring.py)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
