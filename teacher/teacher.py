"""The free teacher: base + a TIES merge of the run's own LoRA checkpoints, kept warm.

A plain class (no Ray). ``add_checkpoint`` stores each published adapter on disk and, every
``merge_interval`` checkpoints, rebuilds the merged weights ``W0 + merge(dW_1..dW_k)`` from pristine
base copies, streaming module by module (teacher/merge.py). The teacher then answers
``score`` (log-probs of the student's sampled tokens, gathered, never full-vocabulary logits) and
``generate`` (reference answers for SFT guidance) with the same engine code the student rolls out
with, at the same temperature. A new Teacher rebuilds itself from the checkpoints handed to it and those
already in its buffer folder. ``reference="initial"`` keeps the starting weights: the paper's static-teacher
ablation. The published code's teacher froze after its first merge (peft's add_weighted_adapter
silently returns when the name exists); tests check the weights change at every merge.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from configs.schema import TeacherConfig
from core import metric_names as names
from core.answer import PromptSpec
from core.ties import WEIGHTINGS
from models.engines.base import Generation, PromptInput, SamplingParams
from models.engines.hf import HFEngine
from models.lora import LoraSettings, adapter_modules
from teacher.buffer import CheckpointBuffer
from teacher.merge import merge_stream, trim_thresholds


class Teacher:
    def __init__(
        self,
        cfg: TeacherConfig,
        model_path: str,
        lora: LoraSettings,
        buffer_dir: str | Path,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        checkpoints: Sequence[tuple[int, dict[str, torch.Tensor]]] = (),
    ):
        """``checkpoints`` ([(version, adapter)], oldest first) join the buffer at once and are merged: a
        restarted teacher, or a resumed run, picks up where the run is (so does one over a buffer folder
        that already holds checkpoints)."""
        self.cfg, self.lora = cfg, lora
        self.engine = HFEngine(model_path, lora, dtype=dtype, device=device, seed=seed)
        self.buffer = CheckpointBuffer(buffer_dir, cfg.max_checkpoints)
        self.merged_version = 0
        self.stats: dict[str, float] = {}
        self._pending = 0
        if cfg.reference == "merged":
            for version, adapter in checkpoints:
                self._store(adapter, version)
            if self.buffer.versions():
                self.remerge()

    def add_checkpoint(self, adapter: dict[str, torch.Tensor], version: int) -> None:
        if self.cfg.reference == "initial":
            return  # the static teacher never changes
        self._store(adapter, version)
        self._pending += 1
        if self._pending >= self.cfg.merge_interval:
            self.remerge()

    def _store(self, adapter: dict[str, torch.Tensor], version: int) -> None:
        """Into the buffer, with what TIES needs of it computed once."""
        thresholds = None
        if self.cfg.merge == "ties":
            thresholds = trim_thresholds(adapter, self.lora.scaling, self.cfg.density, self.engine.device)
        self.buffer.add(version, adapter, thresholds)

    def remerge(self) -> None:
        """Rebuild the merged weights from every checkpoint in the buffer."""
        start = time.perf_counter()
        versions = self.buffer.versions()
        weights = WEIGHTINGS[self.cfg.weights](len(versions), self.cfg.ema_alpha)
        thresholds = [self.buffer.thresholds(v) for v in versions] if self.cfg.merge == "ties" else None
        if thresholds is not None and any(t is None for t in thresholds):
            # Checkpoints written by a linear-merge run: compute what TIES needs once.
            thresholds = [
                t or trim_thresholds(self.buffer.load(v), self.lora.scaling, self.cfg.density, self.engine.device)
                for t, v in zip(thresholds, versions, strict=True)
            ]
        with ExitStack() as stack:
            handles = self.buffer.open_all(versions, stack)
            modules = adapter_modules(handles[0].keys())
            stream = merge_stream(
                handles, modules, weights, self.lora.scaling, self.cfg.merge, thresholds, self.engine.device
            )
            self.engine.set_module_deltas(stream, version=versions[-1])
        self.merged_version = versions[-1]
        self._pending = 0
        self.stats = {
            names.MERGE_SECONDS: time.perf_counter() - start,
            names.TEACHER_CHECKPOINTS: float(len(versions)),
            names.MERGED_VERSION: float(self.merged_version),
        }

    def score(
        self, prompts: Sequence[PromptInput], responses: Sequence[Sequence[int]], temperature: float
    ) -> list[list[float]]:
        return self.engine.score(prompts, responses, temperature)

    def generate(
        self, prompts: Sequence[PromptInput], sampling: SamplingParams, spec: PromptSpec | None = None
    ) -> list[Generation]:
        return self.engine.generate(prompts, sampling, spec)
