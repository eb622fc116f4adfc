"""Checkpoints of a run: ``<run_dir>/checkpoints/iter-<N>/``, written so that a crash never leaves a
corrupt latest checkpoint.

Each role writes its own file into a hidden temporary folder (``learner.pt``, ``rollout-<i>.pt``);
the driver adds ``driver.json`` last; the folder is renamed into place; then the ``latest`` file is
replaced (write to a temporary name, rename). A crash at any point leaves ``latest`` naming the
previous complete checkpoint. The teacher needs no file here: its checkpoint buffer is on disk
already, and ``driver.json`` records which of its versions belong to this checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FOLDER = "checkpoints"
LATEST = "latest"


def folder(run_dir: Path) -> Path:
    return run_dir / FOLDER


def begin(run_dir: Path, iteration: int) -> Path:
    """A fresh temporary folder for the roles to write into (stale ones from a crash are removed)."""
    root = folder(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-iter-{iteration:08d}"
    tmp.mkdir()
    return tmp


def commit(run_dir: Path, tmp: Path, iteration: int, driver_state: dict, keep: int) -> Path:
    """Seal ``tmp`` as the checkpoint of ``iteration`` and make it the latest; keep the newest ``keep``."""
    _write_atomic(tmp / "driver.json", json.dumps(driver_state, indent=1))
    final = folder(run_dir) / f"iter-{iteration:08d}"
    if final.exists():  # left by a run that crashed after it and was resumed from an earlier one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(folder(run_dir) / LATEST, final.name)
    for old in sorted(folder(run_dir).glob("iter-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = folder(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = folder(run_dir) / pointer.read_text().strip()
    return path if (path / "driver.json").is_file() else None


def driver_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "driver.json").read_text())


def discard_after(run_dir: Path, iteration: int) -> None:
    """Drop checkpoints newer than ``iteration`` (a resumed run continues from there, they are stale)."""
    for path in folder(run_dir).glob("iter-*"):
        if int(path.name.split("-")[1]) > iteration:
            shutil.rmtree(path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
