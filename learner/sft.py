"""SFT warm start: imitate the scripted experts, then hand the RL stage a checkpoint.

    python -m learner.sft --config configs/sft_ezpoints.yaml [key=value ...]

Demonstrations are made on the fly from expert episodes on training seeds (actors/demos.py): the
prompt the policy will see and the JSON answer an expert writes. Every hand (card games) or start
(NumberLine) that occurs in the held-out evaluation set is left out of training, so evaluation
measures generalisation, not recall. The loss is the cross-entropy of the answer tokens and the
closing ``<|im_end|>``, computed by the same scoring function PPO uses (models/scoring.py).
The paper starts RL from an SFT model too (DESIGN.md section 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

import envs
from actors.demos import expert_answer
from actors.engines.hf import HFEngine
from actors.prompts import prompt_text
from actors.rollout import RolloutWorker, eval_seed, train_seed
from actors.trajectory import Observation, summarize
from configs import Config
from configs.loader import parse_cli, to_yaml
from configs.schema import SFTConfig
from configs.settings import eval_sampling, eval_seed_base, lora_settings, rollout_settings
from learner.learner import NonFiniteError
from models import scoring
from models.loading import load_vlm
from models.lora import add_lora


@dataclass(frozen=True)
class Demo:
    observation: Observation
    answer: str


def state_key(env_id: str, info: dict) -> tuple:
    """What makes two episodes "the same" for the train/eval split: the deal (card-formula games)
    or the game file (ALFWorld). NumberLine (30 starts) and Blackjack (a deal is only its first two
    cards) have no such split: the policy must handle every state, so seeds alone separate them."""
    if env_id in (envs.POINTS24, envs.EZPOINTS):
        return tuple(zip(info["hand"], info["suits"], strict=True))
    if env_id == envs.ALFWORLD:
        return (info["gamefile"],)
    return ()


def eval_env_config(cfg: Config):
    """The env section evaluation uses: the same, but ALFWorld plays ``eval.alfworld_split``."""
    if cfg.env.id != envs.ALFWORLD:
        return cfg.env
    return dataclasses.replace(cfg.env, alfworld=dataclasses.replace(cfg.env.alfworld, split=cfg.eval.alfworld_split))


def held_out_keys(cfg: Config) -> set[tuple]:
    """Start states of the evaluation episodes. ALFWorld needs none: it evaluates on another split."""
    if cfg.env.id == envs.ALFWORLD:
        if cfg.eval.alfworld_split == cfg.env.alfworld.split:
            raise ValueError("ALFWorld evaluation must use another split than training (eval.alfworld_split)")
        return set()
    env = envs.make_env(cfg.env)
    base = eval_seed_base(cfg)
    return {state_key(cfg.env.id, env.reset(seed=eval_seed(base, j))[1]) for j in range(cfg.eval.episodes)}


def demonstrations(cfg: Config, exclude: set[tuple]) -> Iterator[Demo]:
    """Expert steps from training episodes, forever; episodes whose start is in ``exclude`` are skipped."""
    env = envs.make_env(cfg.env)
    with_image = cfg.env.obs_mode == "image" and cfg.env.id != envs.ALFWORLD
    episode, skipped = 0, 0
    while True:
        _, info = env.reset(seed=train_seed(cfg.seed, 10_000 + episode, 0))
        episode += 1
        key = state_key(cfg.env.id, info)
        if key and key in exclude:
            skipped += 1
            if skipped > 10_000:
                raise RuntimeError(f"every training episode of {cfg.env.id} starts in the held-out set")
            continue
        skipped = 0
        while True:
            answer = expert_answer(cfg.env.id, env, info)
            if answer is None:
                break
            prompt = prompt_text(cfg.env.id, info, with_image)
            frame = env.unwrapped.render_state() if with_image else None
            yield Demo(Observation(prompt.text, prompt.tail, frame), answer)
            action = json.loads(answer)["action"]
            tokens = getattr(env.unwrapped, "action_tokens", None)
            _, _, terminated, truncated, info = env.step(tokens.index(action) if tokens else action)
            if terminated or truncated:
                break


class SFTTrainer:
    """Full or LoRA fine-tuning on demonstration batches."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        model, self.processor = load_vlm(cfg.policy.path, cfg.policy.dtype, cfg.policy.device)
        if not cfg.sft.full:
            model = add_lora(model, lora_settings(cfg))
        if cfg.sft.freeze_vision:
            for name, param in model.named_parameters():
                if ".visual." in f".{name}":
                    param.requires_grad_(False)
        self.model = model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        s = cfg.sft
        self.optimizer = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(s))
        self.end_id = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def step(self, demos: list[Demo]) -> dict[str, float]:
        prompts = self.processor.encode(
            [(d.observation.text, d.observation.tail) for d in demos], [d.observation.image() for d in demos]
        )
        tokenizer = self.processor.tokenizer
        answers = [tokenizer(d.answer, add_special_tokens=False)["input_ids"] + [self.end_id] for d in demos]
        out = scoring.score(self.model, self.processor, prompts, answers, temperature=1.0)
        loss = -(out.logprobs * out.mask).sum() / out.mask.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.sft.grad_clip)
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

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            engine = HFEngine.from_model(self.model, self.processor, seed=self.cfg.seed)
            settings = rollout_settings(self.cfg, self.cfg.eval.num_envs)
            worker = RolloutWorker(
                self.cfg.env, engine, settings, self.cfg.seed, eval_env_cfg=eval_env_config(self.cfg)
            )
            episodes = worker.evaluate(self.cfg.eval.episodes, eval_sampling(self.cfg), eval_seed_base(self.cfg))
            return summarize(episodes)
        finally:
            self.model.train()

    def save(self, folder: Path) -> None:
        """Write a full checkpoint folder (model + tokenizer + image processor), atomically."""
        model = self.model.merge_and_unload() if not self.cfg.sft.full else self.model
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        model.save_pretrained(tmp)
        self.processor.save_pretrained(tmp)
        if folder.exists():
            folder.rename(folder.with_name(f"{folder.name}.old-{int(time.time())}"))
        os.rename(tmp, folder)


def run(cfg: Config, log=print, evaluate_at_end: bool = True) -> dict:
    """Train for ``sft.steps`` (or ``sft.minutes``), evaluating every ``sft.eval_every`` steps and at the
    end (unless ``evaluate_at_end`` is off: the RL run's first evaluation measures the same)."""
    torch.set_num_threads(cfg.sft.threads or cfg.policy.threads)
    run_dir = Path(cfg.run_dir or f"runs/sft-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    output = Path(cfg.sft.output) if cfg.sft.output else run_dir / "sft"
    trainer = SFTTrainer(cfg)
    stream = demonstrations(cfg, held_out_keys(cfg))
    history, start = [], time.perf_counter()
    log(
        f"SFT on {cfg.env.id} ({cfg.env.obs_mode}) from {cfg.policy.path}: {cfg.sft.steps} steps, "
        f"batch {cfg.sft.batch_size}, cap {cfg.sft.minutes} min -> {output}"
    )
    step = 0
    while step < cfg.sft.steps:
        stats = trainer.step([next(stream) for _ in range(cfg.sft.batch_size)])
        step += 1
        minutes = (time.perf_counter() - start) / 60
        out_of_time = cfg.sft.minutes and minutes >= cfg.sft.minutes
        if step % 25 == 0:
            log(f"step {step:5d}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  {minutes:5.1f} min")
        at_end = (step == cfg.sft.steps or out_of_time) and evaluate_at_end
        if (cfg.sft.eval_every and step % cfg.sft.eval_every == 0) or at_end:
            result = trainer.evaluate() | {"step": step, "minutes": round(minutes, 2), "loss": stats["loss"]}
            history.append(result)
            log("eval  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
        if out_of_time:
            break
    trainer.save(output)
    summary = {"checkpoint": str(output), "env": cfg.env.id, "obs_mode": cfg.env.obs_mode, "history": history}
    (run_dir / "sft_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"checkpoint: {output}")
    return summary


def _warmup_cosine(s: SFTConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def main(argv: list[str] | None = None) -> int:
    _, cfg = parse_cli(argparse.ArgumentParser(description="SFT warm start from scripted experts"), argv)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
