"""Play a few episodes with the scripted expert and write every frame as PNG (or a transcript).

    python -m cluster.demo --config configs/points24.yaml [--episodes 3] [--out runs/demo] [key=value ...]

It exercises the
config loader, the env, its renderer and the solver, and prints one line per episode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from configs.loader import parse_cli
from envs import make_env
from envs.experts import expert_action


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--out", default="runs/demo")
    args, cfg = parse_cli(parser, argv, default_config="configs/points24.yaml")
    env = make_env(cfg.env)
    out = Path(args.out) / cfg.env.id.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cfg.env.id}: {args.episodes} expert episodes -> {out}")
    print(f"{'episode':>7} {'seed':>6} {'steps':>5} {'return':>7}  end")
    for episode in range(args.episodes):
        seed = cfg.seed + episode
        steps, total, end = play(env, seed, out / f"episode{episode:02d}")
        print(f"{episode:>7} {seed:>6} {steps:>5} {total:>7.2f}  {end}")
    return 0


def play(env, seed: int, folder: Path) -> tuple[int, float, str]:
    """One episode; frames as step000.png... and the text views in transcript.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    obs, info = env.reset(seed=seed)
    transcript = [info["text"]]
    _save(obs, env, folder / "step000.png")
    steps, total = 0, 0.0
    while True:
        action = expert_action(env)
        if action is None:  # no plan (an unsolvable hand): answer at once, as a player giving up would
            action = _give_up(env)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        total += reward
        transcript.append(f"--- action {action!r} reward {reward:+.2f}\n{info['text']}")
        _save(obs, env, folder / f"step{steps:03d}.png")
        if terminated or truncated:
            end = "terminated" if terminated else "truncated"
            if info.get("solvable") is False:
                end += ", hand unsolvable"
            (folder / "transcript.txt").write_text("\n".join(transcript) + "\n")
            return steps, total, f"{end} ({info.get('outcome', 'done')})"


def _give_up(env):
    tokens = getattr(env.unwrapped, "action_tokens", None)
    return tokens.index("=") if tokens and "=" in tokens else env.action_space.sample()


def _save(obs, env, path: Path) -> None:
    frame = obs if isinstance(obs, np.ndarray) else getattr(env.unwrapped, "render_frame", lambda: None)()
    if frame is not None:
        Image.fromarray(frame).save(path)


if __name__ == "__main__":
    sys.exit(main())
