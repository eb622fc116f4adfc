"""The one config schema. Each component receives only its own section.

Loaded with ``OmegaConf.structured(Config)``, merged with a YAML file and ``key=value`` overrides
(configs/loader.py); unknown keys and wrong types fail at start-up naming the key, and each
section's ``__post_init__`` checks values that a type cannot (choices, ranges).
Later issues add their sections (learner, teacher, cluster) here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envs import ENV_IDS
from envs.alfworld import TASK_TYPES as ALFWORLD_TASK_TYPES
from envs.alfworld_data import SPLITS
from envs.views import OBS_MODES


def _positive(section: str, obj, keys) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ValueError(f"{section}.{key} must be > 0, got {getattr(obj, key)}")


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


@dataclass
class AlfworldConfig:
    split: str = "train"  # train | valid_seen | valid_unseen | valid_train
    task_types: list[str] = field(default_factory=lambda: list(ALFWORLD_TASK_TYPES))
    data_dir: str = ""  # folder holding json_2.1.1/<split>/; "" = the archive vendored in data/alfworld
    num_games: int = 0  # first N games of the split (0 = all)
    max_steps: int = 50  # hard episode cap, no penalty
    max_actions: int = 40  # GTR-Turbo truncation, with truncation_penalty (0 = off)
    max_repeats: int = 5  # identical commands in a row before truncation, with penalty (0 = off)
    truncation_penalty: float = -3.0

    def __post_init__(self):
        _choice("env.alfworld.split", self.split, SPLITS)
        for task_type in self.task_types:
            _choice("env.alfworld.task_types", task_type, ALFWORLD_TASK_TYPES)
        if not self.task_types:
            raise ValueError("env.alfworld.task_types is empty; name at least one task type")
        for key in ("num_games", "max_steps", "max_actions", "max_repeats"):
            if getattr(self, key) < 0:
                raise ValueError(f"env.alfworld.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class EnvConfig:
    id: str = "gym_cards/Points24-v0"
    obs_mode: str = "image"  # image | text (card games; ALFWorld is text)
    max_steps: int = 0  # Points24/EZPoints step cap against rejected-number loops (0 = env default)
    alfworld: AlfworldConfig = field(default_factory=AlfworldConfig)

    def __post_init__(self):
        _choice("env.id", self.id, ENV_IDS)
        _choice("env.obs_mode", self.obs_mode, OBS_MODES)
        if self.max_steps < 0:
            raise ValueError(f"env.max_steps must be >= 0, got {self.max_steps}")


@dataclass
class PolicyConfig:
    path: str = "embedded:s"  # a local Qwen2.5-VL folder, or embedded:xs / embedded:s (built in code)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "cpu"  # cpu, cuda, cuda:1 ... (never hard-coded elsewhere)
    threads: int = 1  # torch intra-op threads per process (1 when processes share the cores)
    lora_rank: int = 128  # DESIGN.md section 2: r=128, alpha=256, dropout 0.05
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    temperature: float = 0.2  # sampling; log-probs everywhere use the same temperature
    top_k: int = 5
    max_new_tokens: int = 64

    def __post_init__(self):
        _choice("policy.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _positive("policy", self, ("threads", "lora_rank", "lora_alpha", "max_new_tokens"))
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"policy.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.temperature < 0 or self.top_k < 0:
            raise ValueError("policy.temperature and policy.top_k must be >= 0 (temperature 0 = greedy)")


@dataclass
class RolloutConfig:
    num_envs: int = 8  # envs per rollout worker, stepped with one batched generate
    thought_weight: float = 0.5  # lambda in log pi = lambda * thought + action (0.2 for ALFWorld)
    format_valid: float = 3.0  # format reward: +3 / -2 card games, +5 / -5 ALFWorld
    format_invalid: float = -2.0
    invalid_action: str = "random"  # action for an unparsable answer: random (paper) | noop (ALFWorld: look)

    def __post_init__(self):
        _choice("rollout.invalid_action", self.invalid_action, ("random", "noop"))
        _positive("rollout", self, ("num_envs",))


@dataclass
class EvalConfig:
    episodes: int = 200  # held-out episodes (seeds disjoint from every training seed)
    num_envs: int = 50  # episodes played side by side
    temperature: float = 0.0  # 0 = greedy
    alfworld_split: str = "valid_unseen"  # ALFWorld evaluates on another split than it trains on

    def __post_init__(self):
        _positive("eval", self, ("episodes", "num_envs"))
        _choice("eval.alfworld_split", self.alfworld_split, SPLITS)


@dataclass
class SFTConfig:
    full: bool = True  # full fine-tuning (fine for the tiny model) or LoRA (policy.lora_*)
    # Keep the vision tower (patch embedding, blocks, merger) fixed. On the random embedded model this
    # is what makes images learnable: its random features already encode the cards (a linear probe
    # reads them perfectly), and training the tower at SFT learning rates washes that out (docs/BENCHMARKS.md).
    freeze_vision: bool = True
    steps: int = 600  # optimizer steps (the cosine schedule's length)
    minutes: float = 10.0  # wall-clock cap; 0 = none
    batch_size: int = 16  # env steps per optimizer step
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 150  # steps between held-out evaluations (0 = only at the end)
    output: str = ""  # checkpoint folder; "" = <run_dir>/sft

    def __post_init__(self):
        _positive("sft", self, ("steps", "batch_size"))
        if self.lr <= 0 or self.minutes < 0:
            raise ValueError("sft.lr must be > 0 and sft.minutes >= 0")


@dataclass
class Config:
    seed: int = 0  # the one base seed; workers and evaluation derive theirs from it
    run_dir: str = ""  # where outputs go; "" = runs/<command>-<time>
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
