"""Checkpoints of a run: ``<run_dir>/checkpoints/iter-<N>/``, each one whole on its own.

Writing: each role writes its own file into a hidden temporary folder (``learner.pt``,
``rollout-<i>.pt``, ``teacher.pt``), the teacher's buffer is copied in (``teacher/``: copies, never
links, so damage to one checkpoint's file reaches no other checkpoint and not the live buffer), the
driver adds ``driver.json``, then ``manifest.json`` (size and SHA-256 of every file), the folder is
renamed into place and the ``latest`` file is replaced (write to a temporary name, rename). A crash at
any point leaves the previous checkpoints as they were.

Reading: ``choose`` verifies checkpoints newest first against their manifests and takes the newest
intact one, saying why each newer one was passed over. ``latest`` is a convenience for people; it is
never needed (the folders are found by name).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

FOLDER = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
SET_ASIDE = "set-aside"


class CheckpointError(ValueError):
    """No checkpoint can be resumed from, or the one asked for cannot be; the message says why."""


@dataclass
class Choice:
    path: Path
    passed_over: list[str] = field(default_factory=list)  # "iter-N: why", newest first


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
    files = {str(p.relative_to(tmp)): _describe(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_atomic(tmp / MANIFEST, json.dumps({"files": files}, indent=1))
    final = folder(run_dir) / name(iteration)
    if final.exists():  # left by a run that crashed after it and was resumed from an earlier one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(folder(run_dir) / LATEST, final.name)
    for old in checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def name(iteration: int) -> str:
    return f"iter-{iteration:08d}"


def iteration_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def checkpoints(run_dir: Path) -> list[Path]:
    """Every sealed checkpoint folder, newest first."""
    root = folder(run_dir)
    found = [p for p in root.glob("iter-*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=iteration_of, reverse=True)


def verify(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be used, or None when every file is as it was written."""
    if not (path / MANIFEST).exists():  # written before checkpoints had manifests: what can be checked
        try:
            driver_state(path)
        except CheckpointError as error:
            return str(error)
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{path / MANIFEST} is unreadable ({error})"
    for relative, expected in manifest.items():
        file = path / relative
        if not file.is_file():
            return f"{file} is missing"
        try:
            actual = _describe(file)
        except OSError as error:
            return f"{file} cannot be read ({error.strerror})"
        if actual["bytes"] != expected["bytes"]:
            return f"{file} has {actual['bytes']} bytes, {expected['bytes']} when written"
        if actual["sha256"] != expected["sha256"]:
            return f"{file} differs from what was written (SHA-256 mismatch)"
    try:
        driver_state(path)
    except CheckpointError as error:
        return str(error)
    return None


def choose(run_dir: Path, wanted: str | None = None) -> Choice:
    """The checkpoint to resume from: ``wanted`` (a folder name such as iter-00000004, or a path) if
    intact, else the newest intact one, with why each newer one was passed over."""
    found = checkpoints(run_dir)
    if wanted is not None:
        path = Path(wanted) if os.sep in wanted else folder(run_dir) / wanted
        if not path.is_dir():
            names = ", ".join(p.name for p in found) or "none"
            raise CheckpointError(f"checkpoint {path} does not exist (checkpoints of this run: {names})")
        problem = verify(path)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
        return Choice(path)
    passed_over = []
    for path in found:
        problem = verify(path)
        if problem is None:
            return Choice(path, passed_over)
        passed_over.append(f"{path.name}: {problem}")
    why = "".join(f"\n  {line}" for line in passed_over)
    raise CheckpointError(f"{run_dir} holds no intact checkpoint to resume from (looked in {folder(run_dir)}){why}")


def driver_state(checkpoint: Path) -> dict:
    path = checkpoint / "driver.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from None


def set_aside_after(run_dir: Path, iteration: int) -> Path | None:
    """Move checkpoints newer than ``iteration`` (a run resumed from an earlier one supersedes them, and
    would write over their names) into ``checkpoints/set-aside/<time>/``; returns that folder, if any."""
    newer = [p for p in checkpoints(run_dir) if iteration_of(p) > iteration]
    if not newer:
        return None
    target = folder(run_dir) / SET_ASIDE / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for path in newer:
        os.replace(path, target / path.name)
    return target


def _describe(path: Path) -> dict:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
