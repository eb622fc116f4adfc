import json

import pytest
import torch

import envs
from actors.rollout import EVAL_SEED_BASE
from cluster import warm_start
from configs import load_config
from models import scoring
from models.loading import load_vlm


def _cfg(tmp_path, *overrides):
    return load_config(
        None,
        [
            "policy.path=embedded:xs",
            "env.id=gym_cards/NumberLine-v0",
            "env.obs_mode=text",
            "sft.batch_size=8",
            "sft.warmup_steps=2",
            "sft.eval_every=0",
            "eval.episodes=6",
            "eval.num_envs=6",
            f"run_dir={tmp_path}",
            *overrides,
        ],
    )


def test_demonstrations_skip_every_held_out_hand(tmp_path):
    cfg = _cfg(tmp_path, "env.id=gym_cards/EZPoints-v0", "eval.episodes=100")
    held_out = warm_start.held_out_keys(cfg)
    assert 30 < len(held_out) <= 100
    stream = warm_start.demonstrations(cfg, held_out)
    env = envs.make_env(cfg.env)
    seen = 0
    for demo in (next(stream) for _ in range(200)):
        answer = json.loads(demo.answer)
        assert answer["action"] in env.action_tokens and demo.observation.frame is None  # text mode
        seen += 1
    assert seen == 200
    assert all(seed < EVAL_SEED_BASE for seed in [warm_start.train_seed(cfg.seed, 10_000 + e, 0) for e in range(1000)])


def test_sft_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "sft.steps=40", "sft.lr=3e-3")
    trainer = warm_start.make_trainer(cfg)
    stream = warm_start.demonstrations(cfg, set())
    fixed = [next(stream) for _ in range(8)]
    before = trainer.step(fixed)["loss"]
    for _ in range(30):
        trainer.step([next(stream) for _ in range(8)])
    after = trainer.step(fixed)["loss"]
    assert after < 0.5 * before
    trainer.save(tmp_path / "ckpt")
    model, processor = load_vlm(str(tmp_path / "ckpt"))
    prompts = processor.encode([("a", "b")], [None])
    with torch.no_grad():
        trainer.model.eval()
        ours = scoring.score(trainer.model, trainer.processor, prompts, [[40, 41, 2]], 1.0).logprobs
        loaded = scoring.score(model, processor, prompts, [[40, 41, 2]], 1.0).logprobs
    assert torch.allclose(ours, loaded, atol=1e-6)


def test_run_writes_summary_and_checkpoint(tmp_path):
    summary = warm_start.run(_cfg(tmp_path, "sft.steps=3"), log=lambda *_: None)
    assert (tmp_path / "sft" / "config.json").is_file() and (tmp_path / "sft_summary.json").is_file()
    assert summary["history"][-1]["episodes"] == 6.0 and summary["history"][-1]["step"] == 3


def test_a_slow_machine_gets_a_warning_and_every_step(tmp_path, monkeypatch):
    """Issue 18: the warm start's length is steps. Past sft.warn_minutes it warns once and goes on."""
    clock = iter(range(0, 10_000, 60))  # every reading of the clock is a minute later
    monkeypatch.setattr(warm_start.time, "perf_counter", lambda: float(next(clock)))
    lines = []
    summary = warm_start.run(_cfg(tmp_path, "sft.steps=4", "sft.warn_minutes=1.5"), log=lines.append)
    assert summary["history"][-1]["step"] == 4
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "past sft.warn_minutes=1.5, at step 2 of 4" in warnings[0], lines


def test_the_retired_time_cap_is_refused_with_what_to_use_instead():
    with pytest.raises(ValueError, match="'sft.minutes' in command-line overrides is retired: .* sft.steps"):
        load_config(None, ["sft.minutes=5"])


@pytest.mark.alfworld
def test_alfworld_sft_trains_on_walkthroughs_and_evaluates_on_another_split(tmp_path):
    cfg = _cfg(
        tmp_path,
        "env.id=alfworld/ALFWorld-v0",
        "env.alfworld.split=valid_unseen",
        "env.alfworld.num_games=3",
        "env.alfworld.max_actions=4",
        "eval.alfworld_split=valid_seen",
        "eval.episodes=2",
        "eval.num_envs=2",
        "rollout.invalid_action=noop",
        "policy.max_new_tokens=16",
        "sft.steps=2",
        "sft.batch_size=4",
    )
    demo = next(warm_start.demonstrations(cfg, warm_start.held_out_keys(cfg)))
    assert "Admissible actions:" in demo.observation.tail and json.loads(demo.answer)["action"]
    summary = warm_start.run(cfg, log=lambda *_: None)
    assert summary["history"][-1]["episodes"] == 2.0
    same_split = _cfg(tmp_path, "env.id=alfworld/ALFWorld-v0", "eval.alfworld_split=train")
    with pytest.raises(ValueError, match="another split"):
        warm_start.held_out_keys(same_split)


def test_vision_tower_is_frozen_by_default(tmp_path):
    for freeze in (True, False):
        cfg = _cfg(tmp_path, "env.obs_mode=image", f"sft.freeze_vision={freeze}")
        trainer = warm_start.make_trainer(cfg)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "visual" in n}
        stream = warm_start.demonstrations(cfg, set())
        trainer.step([next(stream) for _ in range(4)])
        changed = [n for n, p in trainer.model.named_parameters() if "visual" in n and not torch.equal(p, before[n])]
        assert (not changed) if freeze else changed


def test_a_non_finite_step_stops_sft_before_its_optimizer_step(tmp_path):
    from learner.learner import NonFiniteError

    cfg = _cfg(tmp_path, "sft.steps=4")
    trainer = warm_start.make_trainer(cfg)
    demos = [next(warm_start.demonstrations(cfg, set())) for _ in range(2)]
    trainer.model.model.language_model.norm.weight.data[0] = float("nan")  # every log-prob becomes NaN
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(NonFiniteError, match="SFT step: loss nan.*not taken. Lower sft.lr"):
        trainer.step(demos)
    assert all(torch.equal(p.nan_to_num(), before[n].nan_to_num()) for n, p in trainer.model.named_parameters())
