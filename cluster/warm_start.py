"""SFT warm start: imitate the scripted experts, then hand the RL stage a checkpoint (the command line is
``python -m cluster.sft``; ``train.warm_start=sft`` runs it before RL).

Demonstrations are made on the fly from expert episodes on training seeds (envs/tasks.py): the
prompt the policy will see and the JSON answer an expert writes. Every hand (card games) or start
(NumberLine) that occurs in the held-out evaluation set is left out of training, so evaluation
measures generalisation, not recall. The trainer is learner/sft.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import envs
from actors.rollout import RolloutWorker, eval_seed, train_seed
from cluster.settings import eval_env_config, eval_sampling, eval_seed_base, lora_settings, rollout_settings
from configs import Config
from configs.loader import to_yaml
from core.batch import Observation, summarize
from envs.tasks import expert_answer, prompt_text, shows_image, state_key, task
from learner.sft import Demo, SFTTrainer
from models.engines.hf import HFEngine


def make_trainer(cfg: Config) -> SFTTrainer:
    return SFTTrainer(cfg.policy, cfg.sft, lora_settings(cfg), cfg.seed)


def held_out_keys(cfg: Config) -> set[tuple]:
    """Start states of the evaluation episodes. ALFWorld needs none: it evaluates on another split."""
    if task(cfg.env.id).split_by_file:
        eval_env_config(cfg)  # refuses the training split now, not after the last SFT step
        return set()
    env = envs.make_env(cfg.env)
    base = eval_seed_base(cfg)
    return {state_key(cfg.env.id, env.reset(seed=eval_seed(base, j))[1]) for j in range(cfg.eval.episodes)}


def demonstrations(cfg: Config, exclude: set[tuple]) -> Iterator[Demo]:
    """Expert steps from training episodes, forever; episodes whose start is in ``exclude`` are skipped."""
    env = envs.make_env(cfg.env)
    with_image = shows_image(cfg.env)
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


@torch.no_grad()
def evaluate(trainer: SFTTrainer, cfg: Config) -> dict[str, float]:
    """Held-out episodes with the model being trained (the RL stage's evaluation: same seeds, same sampling)."""
    trainer.model.eval()
    try:
        engine = HFEngine.from_model(trainer.model, trainer.processor, seed=cfg.seed)
        settings = rollout_settings(cfg, cfg.eval.num_envs)
        worker = RolloutWorker(cfg.env, engine, settings, cfg.seed, eval_env_cfg=eval_env_config(cfg))
        episodes = worker.evaluate(cfg.eval.episodes, eval_sampling(cfg), eval_seed_base(cfg))
        return summarize(episodes)
    finally:
        trainer.model.train()


def run(cfg: Config, log=print, evaluate_at_end: bool = True) -> dict:
    """Train for ``sft.steps`` steps, evaluating every ``sft.eval_every`` steps and at the end (unless
    ``evaluate_at_end`` is off: the RL run's first evaluation measures the same). The length is steps,
    never time: past ``sft.warn_minutes`` it warns once and goes on, so every machine gets the same start."""
    torch.set_num_threads(cfg.sft.threads or cfg.policy.threads)
    run_dir = Path(cfg.run_dir or f"runs/sft-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    output = Path(cfg.sft.output) if cfg.sft.output else run_dir / "sft"
    trainer = make_trainer(cfg)
    stream = demonstrations(cfg, held_out_keys(cfg))
    history, start, warned = [], time.perf_counter(), False
    log(
        f"SFT on {cfg.env.id} ({cfg.env.obs_mode}) from {cfg.policy.path}: {cfg.sft.steps} steps, "
        f"batch {cfg.sft.batch_size} -> {output}"
    )
    for step in range(1, cfg.sft.steps + 1):
        stats = trainer.step([next(stream) for _ in range(cfg.sft.batch_size)])
        minutes = (time.perf_counter() - start) / 60
        if step % 25 == 0:
            log(f"step {step:5d}  loss {stats['loss']:.4f}  lr {stats['lr']:.2e}  {minutes:5.1f} min")
        if cfg.sft.warn_minutes and minutes > cfg.sft.warn_minutes and not warned:
            warned = True
            log(
                f"warning: SFT has run {minutes:.1f} min, past sft.warn_minutes={cfg.sft.warn_minutes:g}, at step "
                f"{step} of {cfg.sft.steps}; it runs every step (about {minutes / step * cfg.sft.steps:.0f} min in all "
                "on this machine). A shorter warm start: a smaller sft.steps"
            )
        if (cfg.sft.eval_every and step % cfg.sft.eval_every == 0) or (step == cfg.sft.steps and evaluate_at_end):
            result = evaluate(trainer, cfg) | {"step": step, "minutes": round(minutes, 2), "loss": stats["loss"]}
            history.append(result)
            log("eval  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    trainer.save(output)
    summary = {"checkpoint": str(output), "env": cfg.env.id, "obs_mode": cfg.env.obs_mode, "history": history}
    (run_dir / "sft_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"checkpoint: {output}")
    return summary
