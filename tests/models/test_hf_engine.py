"""The transformers engine on the embedded xs model (fp32, CPU)."""

import pytest
import torch

import envs
import models.engines.hf as hf
from envs.points24 import Points24Env
from envs.tasks import prompt_text, spec_for
from models import scoring
from models.engines.base import PromptInput, SamplingParams
from models.engines.hf import HFEngine
from models.loading import load_vlm
from models.lora import LoraSettings, add_lora
from tests.actors.scripted import random_adapter

LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)
SAMPLE = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=24)
GREEDY = SamplingParams(temperature=0.0, top_k=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def engine():
    return HFEngine("embedded:xs", LORA, seed=0)


def _prompts(n: int, images: bool = True) -> list[PromptInput]:
    env, out = Points24Env(), []
    for seed in range(n):
        obs, info = env.reset(seed=seed)
        with_image = images and seed % 2 == 0  # a mixed batch: image and text-only prompts
        p = prompt_text(envs.POINTS24, info, with_image)
        out.append(PromptInput(p.text, obs if with_image else None, p.tail))
    return out


def _random_adapter(seed: int) -> dict[str, torch.Tensor]:
    return random_adapter(LORA, seed)


def test_sampled_logprobs_equal_rescored_logprobs(engine):
    prompts = _prompts(6)
    gens = engine.generate(prompts, SAMPLE, spec_for(envs.POINTS24))
    scored = engine.score(prompts, [g.token_ids for g in gens], SAMPLE.temperature)
    for gen, row in zip(gens, scored, strict=True):
        assert len(gen.token_ids) == len(gen.logprobs) == len(row) > 0
        assert max(abs(a - b) for a, b in zip(gen.logprobs, row, strict=True)) < 1e-5
        assert len(gen.thought_mask) == len(gen.action_mask) == len(gen.token_ids)


def test_batched_equals_one_by_one(engine):
    prompts = _prompts(5)
    batched = engine.generate(prompts, GREEDY)
    for prompt, gen in zip(prompts, batched, strict=True):
        single = engine.generate([prompt], GREEDY)[0]
        assert single.token_ids == gen.token_ids
        assert max(abs(a - b) for a, b in zip(single.logprobs, gen.logprobs, strict=True)) < 1e-5


def test_shared_prefix_cache_changes_nothing(engine, monkeypatch):
    prompts = _prompts(4)
    cached = engine.generate(prompts, GREEDY)
    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)  # force the plain prefill
    plain = engine.generate(prompts, GREEDY)
    for a, b in zip(cached, plain, strict=True):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-5


def test_top_k_and_banned_tokens(engine):
    prompts = _prompts(4, images=False)
    top1 = engine.generate(prompts, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=16))
    greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16))
    assert [g.token_ids for g in top1] == [g.token_ids for g in greedy]  # top-1 sampling is greedy
    banned = set(engine.processor.banned_token_ids)
    assert banned and not any(banned & set(g.token_ids) for g in engine.generate(prompts, SAMPLE))


def test_same_seed_same_samples():
    a = HFEngine("embedded:xs", LORA, seed=3).generate(_prompts(3), SAMPLE)
    b = HFEngine("embedded:xs", LORA, seed=3).generate(_prompts(3), SAMPLE)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_adapter_round_trip_between_engines():
    adapter = _random_adapter(1)
    first, second = HFEngine("embedded:xs", LORA), HFEngine("embedded:xs", LORA)
    prompts = _prompts(3)
    before = first.generate(prompts, GREEDY)
    first.load_adapter(adapter, version=1)
    second.load_adapter(first.adapter(), version=7)
    assert (first.adapter_version, second.adapter_version) == (1, 7)
    after = first.generate(prompts, GREEDY)
    assert [g.token_ids for g in after] == [g.token_ids for g in second.generate(prompts, GREEDY)]
    assert [g.token_ids for g in after] != [g.token_ids for g in before]  # the adapter does something
    # The merged weights compute what the peft model (the learner's form) computes.
    model, processor = load_vlm("embedded:xs")
    policy = add_lora(model, LORA)
    from models.lora import load_adapter_state

    load_adapter_state(policy, adapter)
    responses = [g.token_ids for g in after]
    with torch.no_grad():
        peft_lp = scoring.score(policy, processor, first.encode(prompts), responses, 1.0).logprobs
    merged_lp = first.score(prompts, responses, 1.0)
    for row, ref in zip(merged_lp, peft_lp, strict=True):
        assert max(abs(a - float(b)) for a, b in zip(row, ref, strict=False)) < 1e-4


def test_loading_a_new_version_replaces_the_old_one_exactly():
    engine = HFEngine("embedded:xs", LORA)
    fresh = HFEngine("embedded:xs", LORA)
    prompts = _prompts(2)
    engine.load_adapter(_random_adapter(1), 1)
    engine.load_adapter(_random_adapter(2), 2)
    fresh.load_adapter(_random_adapter(2), 2)
    responses = [[100, 101, 102], [103, 104]]
    assert engine.score(prompts, responses, 1.0) == fresh.score(prompts, responses, 1.0)  # no drift, no residue


def test_bad_adapter_is_a_clear_error_and_changes_nothing(engine):
    engine.load_adapter(_random_adapter(5), 5)
    prompts, responses = _prompts(2), [[100, 101, 102], [103, 104]]
    before = engine.score(prompts, responses, 1.0)
    adapter = _random_adapter(0)
    adapter.pop([k for k in adapter if "lora_B" in k][-1])  # the last module: the others come first
    with pytest.raises(ValueError, match="lora_A"):
        engine.load_adapter(adapter, 6)
    assert engine.adapter_version == 5 and engine.score(prompts, responses, 1.0) == before


def test_scoring_rejects_vision_tokens_in_responses(engine):
    with pytest.raises(ValueError, match="vision placeholder"):
        engine.score(_prompts(1), [[engine.processor.image_token_id]], 1.0)


def test_an_adapter_for_other_modules_changes_nothing(engine):
    engine.load_adapter(_random_adapter(3), 3)
    prompts, responses = _prompts(2), [[100, 101, 102], [103, 104]]
    before = engine.score(prompts, responses, 1.0)
    foreign = {k.replace("q_proj", "x_proj"): v for k, v in _random_adapter(4).items()}
    with pytest.raises(ValueError, match="does not adapt"):
        engine.load_adapter(foreign, 4)
    assert engine.adapter_version == 3 and engine.score(prompts, responses, 1.0) == before


def test_padded_embedding_rows_are_never_sampled_or_scored():
    """Real checkpoints (and the random 3B/7B stand-ins) have more embedding rows than tokenizer ids."""
    model, processor = load_vlm("embedded:xs")
    extra = 64
    model.resize_token_embeddings(processor.vocab_size + extra, mean_resizing=False)
    with torch.no_grad():  # make the padded rows the likeliest tokens by far
        model.get_output_embeddings().weight[processor.vocab_size :] = 50 * model.get_output_embeddings().weight[:extra]
    engine = HFEngine.from_model(model, processor, LORA, seed=0)
    prompts = _prompts(4)
    gens = engine.generate(prompts, SAMPLE)
    assert all(max(g.token_ids) < processor.vocab_size for g in gens)
    scored = engine.score(prompts, [g.token_ids for g in gens], SAMPLE.temperature)
    for gen, row in zip(gens, scored, strict=True):
        assert max(abs(a - b) for a, b in zip(gen.logprobs, row, strict=True)) < 1e-5


@pytest.mark.gpu
def test_on_cuda_sampled_logprobs_equal_rescored_and_the_cpu_engines():
    gpu, cpu = HFEngine("embedded:xs", LORA, device="cuda", seed=0), HFEngine("embedded:xs", LORA)
    adapter = _random_adapter(1)
    gpu.load_adapter(adapter, 1)
    cpu.load_adapter(adapter, 1)
    prompts = _prompts(6)
    gens = gpu.generate(prompts, SAMPLE, spec_for(envs.POINTS24))
    responses = [g.token_ids for g in gens]
    on_gpu, on_cpu = gpu.score(prompts, responses, 1.0), cpu.score(prompts, responses, 1.0)
    for gen, row, ref in zip(gens, on_gpu, on_cpu, strict=True):
        assert max(abs(a - b) for a, b in zip(gen.logprobs, row, strict=True)) < 1e-4
        assert max(abs(a - b) for a, b in zip(row, ref, strict=True)) < 1e-3
