"""A run's storage location as a URI (issue 20): the driver writes through a staging folder and copies what
changed; a run resumes from the location alone, on a machine whose staging folder is empty."""

import json

import pytest
import torch

from cluster import launch
from cluster.roles import LearnerRole
from cluster.storage import Storage, StorageError
from tests.cluster.test_resume import _config as resume_config
from tests.cluster.test_resume import crash_saving_version

QUIET = lambda *_: None  # noqa: E731


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_push_copies_what_changed_and_deletes_what_is_gone(tmp_path):
    storage = Storage(f"file://{tmp_path}/store/run", str(tmp_path / "staging"))
    assert storage.remote and storage.name == "run" and storage.local.parent == tmp_path / "staging"
    local, remote = storage.local, tmp_path / "store" / "run"
    (local / "checkpoints" / "iter-00000002").mkdir(parents=True)
    (local / "checkpoints" / "iter-00000002" / "learner.pt").write_bytes(b"v2")
    (local / "metrics.jsonl").write_text("{}\n")
    (local / ".lock").write_text("pid")  # this machine's lock, and files being written, stay here
    (local / "checkpoints" / ".tmp-iter-00000004").mkdir()
    (local / "checkpoints" / ".tmp-iter-00000004" / "learner.pt").write_bytes(b"half")
    storage.push()
    assert _files(remote) == ["checkpoints/iter-00000002/learner.pt", "metrics.jsonl"]
    assert storage.holds_run()

    (local / "metrics.jsonl").write_text("{}\n{}\n")
    (local / "checkpoints" / "iter-00000002" / "learner.pt").unlink()
    (local / "checkpoints" / "iter-00000002").rmdir()  # a checkpoint past train.keep_checkpoints
    storage.push()
    assert _files(remote) == ["metrics.jsonl"] and (remote / "metrics.jsonl").read_text() == "{}\n{}\n"
    assert not (remote / "checkpoints" / "iter-00000002").exists()  # no empty folder left to look like one
    assert storage.show(local / "metrics.jsonl") == f"file://{tmp_path}/store/run/metrics.jsonl"


def test_pull_makes_a_fresh_staging_folder_hold_the_run(tmp_path):
    first = Storage(f"file://{tmp_path}/store/run", str(tmp_path / "a"))
    (first.local / "tb").mkdir(parents=True)
    (first.local / "tb" / "events").write_bytes(b"e")
    (first.local / "config.yaml").write_text("seed: 3\n")
    first.push()
    second = Storage(f"file://{tmp_path}/store/run", str(tmp_path / "b"))  # another machine
    second.local.mkdir(parents=True)
    (second.local / "stale.txt").write_text("from an earlier run")
    second.pull()
    assert _files(second.local) == ["config.yaml", "tb/events"]
    second.push()  # nothing changed: nothing copied, nothing deleted
    assert _files(tmp_path / "store" / "run") == ["config.yaml", "tb/events"]


def test_a_location_pyarrow_cannot_open_or_that_holds_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match=r"pyarrow.fs cannot open it \(Unrecognized filesystem.*\(s3://bucket/path"):
        Storage("nosuchscheme://bucket/run")
    with pytest.raises(StorageError, match="holds nothing to resume"):
        Storage(f"file://{tmp_path}/empty", str(tmp_path / "s")).pull()


def _config(location, staging, *extra):
    """test_resume's run with KL guidance, its storage at ``location`` written through ``staging``."""
    return resume_config(location, "kl", *([f"storage_staging={staging}"] if staging else []), *extra)


def test_a_run_at_a_uri_resumes_from_the_location_alone(tmp_path, monkeypatch, capsys):
    whole = launch.run(_config(tmp_path / "whole", ""), log=QUIET)

    location = f"file://{tmp_path}/store/cut"
    save = crash_saving_version(monkeypatch, 4, OSError("power cut"))
    with pytest.raises(launch.RunStopped, match=f"Resume with: python -m cluster.launch --resume {location}$") as stop:
        launch.run(_config(location, tmp_path / "machine1"), log=QUIET)
    assert f"Last good checkpoint: {location}/checkpoints/iter-00000002." in str(stop.value)
    monkeypatch.setattr(LearnerRole, "save", save)
    stored = tmp_path / "store" / "cut"
    assert (stored / "checkpoints" / "latest").read_text() == "iter-00000002"
    assert len(json.loads((stored / "checkpoints" / "iter-00000002" / "manifest.json").read_text())["files"]) >= 5
    assert [r["iteration"] for r in _records(stored)] == [0, 1, 2, 3]
    assert sorted(p.name for p in (stored / "teacher").glob("*.safetensors"))[-1] == "adapter-00000004.safetensors"

    # Another machine: nothing staged; the command line reads the run's config from the location.
    assert launch.main(["--resume", location, f"storage_staging={tmp_path / 'machine2'}"]) == 0
    with pytest.raises(launch.SetupError, match=f"{location} already holds a run: continue it with --resume"):
        launch.run(_config(location, tmp_path / "machine3"), log=QUIET)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "iter-00000004" / "learner.pt", weights_only=False)
    b = torch.load(stored / "checkpoints" / "iter-00000004" / "learner.pt", weights_only=False)
    for key in a["adapter"]:
        assert torch.equal(a["adapter"][key], b["adapter"][key]), key
    records = _records(stored)
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    assert records[-1]["teacher/kl"] == whole["teacher/kl"] and records[-1]["eval/success"] == whole["eval/success"]
    assert (stored / "summary.md").is_file() and (stored / "curves.png").is_file()
    assert not (stored / ".lock").exists()


def test_a_warm_start_reaches_the_roles_through_the_location(tmp_path, monkeypatch):
    monkeypatch.setenv("GTR_TURBO_CACHE", str(tmp_path / "cache"))  # this node's copies of models at a URI
    seen = {}

    def hook(phase, index, trainer):
        if phase == "sample" and index == 1:
            seen["rollout"] = trainer.system.rollouts[0].obj.engine.model.config._name_or_path

    location = f"file://{tmp_path}/store/run"
    warm = ["train.warm_start=sft", "sft.steps=3", "sft.batch_size=2", "train.iterations=1", "teacher.guidance=none"]
    cfg = _config(location, tmp_path / "staging", *warm)
    launch.run(cfg, log=QUIET, hook=hook)
    assert (tmp_path / "store" / "run" / "warm_start" / "checkpoint" / "config.json").is_file()
    summary = json.loads((tmp_path / "store" / "run" / "warm_start" / "sft_summary.json").read_text())
    assert summary["checkpoint"] == f"{location}/warm_start/checkpoint"
    assert seen["rollout"].startswith(str(tmp_path / "cache" / "models"))  # fetched from the location
    # A node that does not see the driver's disk (no token there) gets the files back instead.
    files = launch._sft_warm_start(cfg, str(tmp_path / "elsewhere"), ".driver-absent")
    assert {"checkpoint/config.json", "checkpoint/model.safetensors", "sft_summary.json"} <= set(files)
    assert not (tmp_path / "elsewhere").exists()
