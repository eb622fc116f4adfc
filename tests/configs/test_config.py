from pathlib import Path

import pytest

from cluster import experiment
from configs import Config, ConfigError, load_config
from configs.loader import to_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_and_overrides():
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.seed == 0 and cfg.env.id == "gym_cards/Points24-v0"
    cfg = load_config(
        None, ["seed=3", "env.id=gym_cards/EZPoints-v0", "env.alfworld.task_types=[look_at_obj_in_light]"]
    )
    assert cfg.seed == 3 and cfg.env.id == "gym_cards/EZPoints-v0"
    assert cfg.env.alfworld.task_types == ["look_at_obj_in_light"]


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("seed: 5\nenv:\n  obs_mode: text\n")
    cfg = load_config(path, ["seed=6"])
    assert (cfg.seed, cfg.env.obs_mode) == (6, "text")
    assert "obs_mode: text" in to_yaml(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["env.idd=x"], "unknown config key 'env.idd' in command-line overrides; did you mean 'env.id'?"),
        (["sed=1"], "did you mean 'seed'?"),
        (["env.alfworld.splitt=train"], "Valid keys in 'env.alfworld': data_dir, max_actions"),
        (["seed=abc"], "bad value for config key 'seed'"),
        (["env.alfworld.max_repeats=lots"], "bad value for config key 'env.alfworld.max_repeats'"),
        (["env.obs_mode=pixels"], "env.obs_mode='pixels' is not allowed; choose one of: image, text"),
        (["env.id=gym_cards/Points25-v0"], "env.id='gym_cards/Points25-v0' is not allowed"),
        (["env.alfworld.split=test"], "choose one of: train, valid_seen, valid_unseen, valid_train"),
        (["env.alfworld.task_types=[juggle]"], "env.alfworld.task_types='juggle' is not allowed"),
        (["env.alfworld.task_types=[]"], "env.alfworld.task_types is empty"),
        (["env.max_steps=-1"], "env.max_steps must be >= 0"),
        (["seed"], "override 'seed' must look like key=value"),
        (["policy.dtype=int8"], "policy.dtype='int8' is not allowed; choose one of: float32, bfloat16, float16"),
        (["rollout.invalid_action=skip"], "rollout.invalid_action='skip' is not allowed"),
        (["sft.steps=0"], "sft.steps must be > 0"),
        (["policy.lora_dropout=1.5"], "policy.lora_dropout must be in [0, 1)"),
        (["policy.temprature=0.3"], "did you mean 'policy.temperature'?"),
        (["learner.lr=inf"], "learner.lr=inf is not a finite number"),
        (["learner.lr=nan"], "learner.lr=nan is not a finite number"),
        (["cluster.rollout.num_cpus=-inf"], "cluster.rollout.num_cpus=-inf is not a finite number"),
        (["eval.temperature=-1"], "eval.temperature must be >= 0, got -1"),
        (["learner.min_lr_ratio=2"], "learner.min_lr_ratio must lie in [0, 1], got 2"),
        (["learner.clip=0"], "learner.clip must be > 0"),
        (["teacher.kl_coef=-0.5"], "teacher.kl_coef must be >= 0"),
        (["rollout.thought_weight=1.5"], "rollout.thought_weight must lie in [0, 1]"),
        (["sft.grad_clip=0"], "sft.grad_clip must be > 0"),
        (["cluster.num_cpus=2.5"], "cluster.num_cpus=2.5 must be a whole number"),
        (["cluster.dashboard_port=70000"], "cluster.dashboard_port must lie in [1, 65535]"),
        (["cluster.metrics_export_port=-1"], "cluster.metrics_export_port must lie in [0, 65535]"),
        (["cluster.teacher.resources.teacher_node=0"], "cluster.teacher.resources.teacher_node=0.0: a custom resource"),
        (["cluster.rollout.resources.GPU=1"], "CPUs and GPUs are cluster.rollout.num_cpus / num_gpus"),
        (["seed=-3"], "seed must be >= 0"),
    ],
)
def test_bad_input_names_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("env:\n  obs: image\n")
    with pytest.raises(ConfigError, match=f"unknown config key 'env.obs' in config file {unknown}"):
        load_config(unknown)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_configs_load_and_say_how_to_run_them(path):
    if "runs:" in path.read_text():  # an experiment grid: every run's config is checked
        experiment.plan(experiment.load_spec(path), Path("/nonexistent"))
    else:
        load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "python -m " in first, (
        f"{path.name} must start with a comment showing its command"
    )
    if path.parent != CONFIG_DIR:  # configs in sub-folders name their own path in that command
        assert f"configs/{path.relative_to(CONFIG_DIR)}" in first


def test_the_schemas_env_names_are_the_envs_own():
    """configs imports nothing of the project, so it spells the envs' names out; they must stay the same."""
    import envs
    from configs import schema
    from envs.alfworld import TASK_TYPES
    from envs.alfworld_data import SPLITS
    from envs.views import OBS_MODES

    assert schema.ENV_IDS == envs.ENV_IDS == tuple(envs.TASKS)
    assert schema.ALFWORLD_TASK_TYPES == TASK_TYPES
    assert schema.SPLITS == SPLITS
    assert set(schema.OBS_MODES) == set(OBS_MODES)
