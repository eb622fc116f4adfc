"""The embedded default: a tiny, randomly initialised Qwen2.5-VL built from a config in code.

Nothing is downloaded. ``materialize("s")`` trains the tokenizer on the tasks' own text, builds the
model with a fixed seed and saves model + tokenizer + image processor to a cache folder once, so
that every process (learner, rollout actors, teacher) loads the very same weights through the same
``from_pretrained`` path a real Qwen2.5-VL checkpoint takes (models/loading.py).

Sizes (parameters counted with their vocabulary):
- ``xs``: text 64 hidden (2 heads of 32), 2 layers; vision 32 hidden, 1 block; vocab 512 -> about 0.2 M.
- ``s``: text 256 hidden, 2 layers; vision 128 hidden, 2 blocks; vocab 1024 -> about 3.4 M. The size
  ``../shared/notes/learnability.md`` found best on this CPU.
- ``qwen2.5-vl-3b`` / ``qwen2.5-vl-7b``: the published Qwen2.5-VL-3B/7B-Instruct architectures (3.75 B
  and 8.29 B parameters, their embedding rows, vision tower with window attention and image processor
  limits) with random weights, for timing on a GPU without a model hub. With the ``qwen-vocab`` extra
  they get Qwen2.5's real 151,665-token vocabulary (models/tokenizer.py), so prompts are as long as a
  real checkpoint's; without it, the ``s`` tokenizer (1024 ids: sampling and scoring only ever see those,
  ``VLProcessor.vocab_size``, and prompt text takes more tokens). The cache folder names which one.
  Built in bfloat16, on the GPU when there is one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import envs
from envs.tasks import TASKS, expert_answer, prompt_text
from models.processing import VLProcessor
from models.tokenizer import has_qwen_vocabulary, qwen_tokenizer, train_tokenizer

# Bump when anything below changes what gets built, so caches are rebuilt.
BUILD_VERSION = 6

SIZES = {
    "xs": {
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,  # head size 32: the smallest vLLM's CPU attention runs
            "num_key_value_heads": 2,
            "mrope_section": [4, 6, 6],
        },
        "vision": {"hidden_size": 32, "intermediate_size": 64, "depth": 1, "num_heads": 1},
        "vocab_size": 512,
    },
    "s": {
        "text": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "mrope_section": [8, 12, 12],
        },
        "vision": {"hidden_size": 128, "intermediate_size": 256, "depth": 2, "num_heads": 4},
        "vocab_size": 1024,
    },
}
# Qwen2.5-VL's published shapes (config.json of the -Instruct checkpoints). Vision towers are the same.
_QWEN_VISION = {
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "depth": 32,
    "num_heads": 16,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "window_size": 112,
}
SIZES |= {
    "qwen2.5-vl-3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "mrope_section": [16, 24, 24],
        },
        "vision": _QWEN_VISION,
        "vocab_size": 1024,  # the trained tokenizer's, without the qwen-vocab extra
        "real_vocabulary": True,
        "model_vocab_size": 151936,
        "tie_word_embeddings": True,
        "max_pixels": 12845056,
        "dtype": "bfloat16",
    },
    "qwen2.5-vl-7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "mrope_section": [16, 24, 24],
        },
        "vision": _QWEN_VISION,
        "vocab_size": 1024,
        "real_vocabulary": True,
        "model_vocab_size": 152064,
        "tie_word_embeddings": False,
        "max_pixels": 12845056,
        "dtype": "bfloat16",
    },
}
# 300x300 env frames become 196x196 for the tiny models (the ``max_pixels`` of the real ones: 308x308).
IMAGE_PIXELS = 224 * 224
PREFIX = "embedded:"


def is_embedded(path: str) -> bool:
    return path.startswith(PREFIX)


def size_of(path: str) -> str:
    size = path[len(PREFIX) :]
    if size not in SIZES:
        raise ValueError(f"unknown embedded model {path!r}; choose one of {', '.join(PREFIX + s for s in SIZES)}")
    return size


def tokenizer_kind(size: str) -> str:
    """``qwen2.5`` (the real vocabulary) where the size wants it and the extra is installed, else ``trained``."""
    return "qwen2.5" if SIZES[size].get("real_vocabulary") and has_qwen_vocabulary() else "trained"


def cache_dir(size: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    vocab = "-qwen-vocab" if tokenizer_kind(size) == "qwen2.5" else ""
    return Path(base) / "gtr-turbo" / "models" / f"embedded-{size}{vocab}-v{BUILD_VERSION}"


def materialize(size: str) -> Path:
    """The folder holding the embedded model of ``size``, built on first use (about 2 s)."""
    folder = cache_dir(size)
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        model, processor = build(size)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        info = {"size": size, "build_version": BUILD_VERSION, "tokenizer": tokenizer_kind(size)}
        (Path(tmp) / "embedded.json").write_text(json.dumps(info))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # lost a race to another process: fine
                raise
        else:
            os.makedirs(tmp)  # TemporaryDirectory removes its folder on exit
    return folder


def build(size: str, seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, VLProcessor]:
    """A fresh random model and its processor (not cached; see ``materialize``)."""
    spec = SIZES[size]
    tokenizer = qwen_tokenizer() if tokenizer_kind(size) == "qwen2.5" else train_tokenizer(corpus(), spec["vocab_size"])
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=56 * 56,
        max_pixels=spec.get("max_pixels", IMAGE_PIXELS),
    )
    processor = VLProcessor(tokenizer, image_processor)
    config = model_config(size, tokenizer)
    dtype = getattr(torch, spec.get("dtype", "float32"))
    device = "cuda" if dtype != torch.float32 and torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]), _default_dtype(dtype), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), processor


def model_config(size: str, tokenizer) -> Qwen2_5_VLConfig:
    spec = SIZES[size]
    text, vision = spec["text"], spec["vision"]
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": spec.get("model_vocab_size", len(tokenizer)),
            "hidden_size": text["hidden_size"],
            "intermediate_size": text["intermediate_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_key_value_heads": text["num_key_value_heads"],
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": text["mrope_section"]},
            "bos_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": vision["depth"],
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "out_hidden_size": text["hidden_size"],
            "fullatt_block_indexes": vision.get("fullatt_block_indexes", [vision["depth"] - 1]),
            "window_size": vision.get("window_size", 112),
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        tie_word_embeddings=spec.get("tie_word_embeddings", True),
        **ids,
    )


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def corpus(episodes: int = 60) -> Iterator[str]:
    """The tokenizer's training text: every env's prompts and expert answers, plus ALFWorld phrases.

    Deterministic (fixed seeds), so the tokenizer is the same on every machine.
    """
    for env_id in [env_id for env_id, task in TASKS.items() if task.visual]:  # ALFWorld: phrases below
        env = envs.make_env(_EnvCfg(env_id))
        for seed in range(episodes):
            _, info = env.reset(seed=seed)
            for _ in range(30):
                prompt = prompt_text(env_id, info, with_image=bool(seed % 2))
                yield prompt.text + "\n" + prompt.tail
                answer = expert_answer(env_id, env, info)
                if answer is None:
                    break
                yield answer
                action = json.loads(answer)["action"]
                _, _, terminated, truncated, info = env.step(env.unwrapped.action_tokens.index(action))
                if terminated or truncated:
                    break
    yield from ALFWORLD_PHRASES


class _EnvCfg:
    def __init__(self, env_id: str):
        self.id, self.obs_mode, self.max_steps = env_id, "text", 0


ALFWORLD_PHRASES = [
    "You are an expert household agent.\nTask: put a clean mug in coffeemachine.\n"
    "Observation: You arrive at countertop 1. On the countertop 1, you see a apple 1, a bread 1, and a mug 2.\n"
    "Previous actions: go to countertop 1\n"
    "Admissible actions: examine countertop 1; go to cabinet 1; go to drawer 2; go to fridge 1; go to microwave 1; "
    "go to sinkbasin 1; go to stoveburner 1; go to toaster 1; help; inventory; look; take mug 2 from countertop 1",
    "Task: heat some egg and put it in diningtable. Task: cool some lettuce and put it in garbagecan. "
    "Task: examine the alarmclock with the desklamp. Task: find two pillow and put them in sofa.",
    "You open the fridge 1. The fridge 1 is open. In it, you see a tomato 1, and a potato 2. Nothing happens. "
    "You pick up the cup 1 from the shelf 3. You put the cup 1 in/on the cabinet 4. You clean the plate 1 using "
    "the sinkbasin 1. You heat the egg 1 using the microwave 1. You cool the lettuce 1 using the fridge 1. "
    "You turn on the desklamp 1. You are carrying: a pen 2. You close the drawer 5.",
    "open drawer 1; close drawer 1; move soapbar 1 to toilet 1; use desklamp 1; clean knife 1 with sinkbasin 1; "
    "heat potato 1 with microwave 1; cool winebottle 1 with fridge 1; examine book 1; go to bed 1; go to sofa 1; "
    "go to dresser 1; go to armchair 1; go to bathtubbasin 1; go to handtowelholder 1; go to safe 1; "
    "take keychain 1 from sidetable 2; take spatula 1 from drawer 3; take creditcard 1 from desk 1",
]


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of all weights, to check two processes hold the same model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().float().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]
