"""Load a Qwen2.5-VL model and its processor from a local folder, or the embedded default.

``model_path`` is either ``embedded:xs`` / ``embedded:s`` (built in code and cached on first use,
models/embedded.py), a local directory holding a Qwen2.5-VL checkpoint in the Hugging Face layout
(config.json, safetensors, tokenizer and preprocessor files), or such a folder at a URI that pyarrow.fs
opens (s3://, gs://, hdfs://, file://), fetched once into this node's cache. All go through the same
``from_pretrained`` calls; nothing is fetched from a hub (``local_files_only``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.utils import logging as hf_logging

from core.uri import download, is_uri, local_name
from models import embedded
from models.fast import speed_up
from models.processing import VLProcessor

hf_logging.disable_progress_bar()  # no per-load progress bars in logs

MARKER = ".fetched"  # written last into a model folder fetched from a URI
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(model_path: str) -> Path:
    """The local folder for ``model_path``, with a clear error when it cannot be one. A URI is fetched into
    this node's cache first (``fetch_folder``)."""
    if embedded.is_embedded(model_path):
        return embedded.materialize(embedded.size_of(model_path))
    folder = fetch_folder(model_path) if is_uri(model_path) else Path(model_path).expanduser()
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


def cache_root() -> Path:
    """Where this node keeps model folders fetched from a URI: ``$GTR_TURBO_CACHE``, else ~/.cache/gtr-turbo."""
    return Path(os.environ.get("GTR_TURBO_CACHE") or Path.home() / ".cache" / "gtr-turbo") / "models"


def fetch_folder(location: str) -> Path:
    """The folder at URI ``location`` (a location pyarrow.fs opens: s3://, gs://, hdfs://, file://), fetched
    once into this node's cache and reused after; a marker written last says a copy is whole, so a fetch cut
    off is done again. A node needs no shared disk to load a model (issue 20)."""
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise FileNotFoundError(f"model path {location} is a URI, which needs pyarrow (pip install pyarrow)") from None
    try:
        fs, root = pafs.FileSystem.from_uri(location)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"model path {location}: pyarrow.fs cannot open it ({error})") from None
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    infos = sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)
    files = [info.path[len(root) :].lstrip("/") for info in infos]
    if not files:
        raise FileNotFoundError(f"model path {location} holds no files")
    # The copy is named by the location and what is there now (names, sizes, times): new files there, a new copy.
    listing = "\n".join(f"{name} {info.size} {info.mtime_ns}" for name, info in zip(files, infos, strict=True))
    cache = cache_root()
    target = cache / local_name(location, listing, digits=16)
    if (target / MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    for relative in files:
        (partial / relative).parent.mkdir(parents=True, exist_ok=True)
        download(fs, f"{root}/{relative}", partial / relative)
    (partial / MARKER).write_text(location)
    if not (target / MARKER).is_file():
        shutil.rmtree(target, ignore_errors=True)  # a copy cut off before its marker
    try:
        partial.rename(target)
    except OSError:  # another process on this node fetched it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / MARKER).is_file():
            raise
    return target
