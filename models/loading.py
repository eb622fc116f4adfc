"""Load a Qwen2.5-VL model and its processor from a local folder, or the embedded default.

``model_path`` is either ``embedded:xs`` / ``embedded:s`` (built in code and cached on first use,
models/embedded.py) or a local directory holding a Qwen2.5-VL checkpoint in the Hugging Face layout
(config.json, safetensors, tokenizer and preprocessor files). Both go through the same
``from_pretrained`` calls; nothing is fetched from a hub (``local_files_only``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.utils import logging as hf_logging

from models import embedded
from models.fast import speed_up
from models.processing import VLProcessor

hf_logging.disable_progress_bar()  # no per-load progress bars in logs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(model_path: str) -> Path:
    """The local folder for ``model_path``, with a clear error when it cannot be one."""
    if embedded.is_embedded(model_path):
        return embedded.materialize(embedded.size_of(model_path))
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model path {model_path!r} is not a folder. Set policy.path to a local Qwen2.5-VL checkpoint "
            f"(a folder with config.json and *.safetensors) or to one of "
            f"{', '.join(embedded.PREFIX + s for s in embedded.SIZES)} for the embedded model."
        )
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model path {folder} has no config.json: it is not a Hugging Face checkpoint folder")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "qwen2_5_vl":
        raise ValueError(f"model path {folder} holds a {model_type!r} model; this project runs Qwen2.5-VL (qwen2_5_vl)")
    return folder


def load_processor(model_path: str) -> VLProcessor:
    return VLProcessor.from_pretrained(resolve(model_path))


def load_vlm(
    model_path: str, dtype: str = "float32", device: str = "cpu"
) -> tuple[Qwen2_5_VLForConditionalGeneration, VLProcessor]:
    """The model in eval mode on ``device`` and its processor."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    folder = resolve(model_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
    return speed_up(model.to(device).eval()), VLProcessor.from_pretrained(folder)
