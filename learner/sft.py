"""SFT warm start's trainer: full or LoRA fine-tuning on expert demonstrations.

The loss is the cross-entropy of the answer tokens and the closing ``<|im_end|>``, computed by the
same scoring function PPO uses (models/scoring.py). Demonstrations, evaluation and the command line
are the SFT stage's orchestration (cluster/warm_start.py). The paper starts RL from an SFT model too
(DESIGN.md section 2).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from configs.schema import PolicyConfig, SFTConfig
from core.batch import Observation
from learner.learner import NonFiniteError
from models import scoring
from models.engines.base import prompt_input
from models.loading import load_vlm
from models.lora import LoraSettings, add_lora


@dataclass(frozen=True)
class Demo:
    observation: Observation
    answer: str


class SFTTrainer:
    """Full or LoRA fine-tuning on demonstration batches."""

    def __init__(self, policy: PolicyConfig, settings: SFTConfig, lora: LoraSettings, seed: int):
        self.settings = settings
        torch.manual_seed(seed)
        model, self.processor = load_vlm(policy.path, policy.dtype, policy.device)
        if not settings.full:
            model = add_lora(model, lora)
        if settings.freeze_vision:
            for name, param in model.named_parameters():
                if ".visual." in f".{name}":
                    param.requires_grad_(False)
        self.model = model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        s = settings
        self.optimizer = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)
        self.scheduler = _schedule(self.optimizer, s)
        self.end_id = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def step(self, demos: list[Demo]) -> dict[str, float]:
        prompts = self.processor.encode(
            [(d.observation.text, d.observation.tail) for d in demos],
            [prompt_input(d.observation).image for d in demos],
        )
        tokenizer = self.processor.tokenizer
        answers = [tokenizer(d.answer, add_special_tokens=False)["input_ids"] + [self.end_id] for d in demos]
        out = scoring.score(self.model, self.processor, prompts, answers, temperature=1.0)
        loss = -(out.logprobs * out.mask).sum() / out.mask.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        if not (math.isfinite(loss.item()) and math.isfinite(float(grad_norm))):
            raise NonFiniteError(
                f"SFT step: loss {loss.item():.4g}, gradient norm {float(grad_norm):.4g}; its optimizer step was "
                "not taken. Lower sft.lr or sft.grad_clip"
            )
        self.optimizer.step()
        self.scheduler.step()
        token_acc = ((out.logprobs > math.log(0.5)) & out.mask).sum() / out.mask.sum()
        return {
            "loss": loss.item(),
            "grad_norm": float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "token_p_gt_half": token_acc.item(),
        }

    def save(self, folder: Path) -> None:
        """Write a full checkpoint folder (model + tokenizer + image processor), atomically."""
        model = self.model.merge_and_unload() if not self.settings.full else self.model
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        model.save_pretrained(tmp)
        self.processor.save_pretrained(tmp)
        if folder.exists():
            folder.rename(folder.with_name(f"{folder.name}.old-{int(time.time())}"))
        os.rename(tmp, folder)


def _schedule(optimizer: torch.optim.Optimizer, s: SFTConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup whose first step already learns ((k + 1) / w, where transformers' starts at 0 and
    wastes a step), then transformers' cosine decay to min_lr_ratio, held at its end after ``s.steps``."""
    cosine = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, s.warmup_steps, s.steps, min_lr_rate=s.min_lr_ratio
    ).lr_lambdas[0]

    def factor(step: int) -> float:
        return (step + 1) / s.warmup_steps if step < s.warmup_steps else cosine(min(step, s.steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
