"""The teacher's checkpoint buffer: every published adapter on disk, so a teacher can be rebuilt.

One safetensors file per version (written to a temporary name and renamed, so a crash never leaves
a half-written checkpoint), plus, for TIES, each module's trim threshold computed once when the
checkpoint arrives (a property of the whole update, reused by every later merge). With
``max_size`` the oldest checkpoints are dropped beyond that many. Adapters are read back module by
module (``safe_open``), so a merge over many large checkpoints never loads them all at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_NAME = re.compile(r"adapter-(\d{8})\.safetensors$")
_FICLONE = 0x40049409  # ioctl: share a file's blocks copy-on-write (btrfs, XFS)


class CheckpointBuffer:
    def __init__(self, folder: str | Path, max_size: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_size = max_size

    def add(self, version: int, adapter: dict[str, torch.Tensor], thresholds: dict[str, float] | None = None) -> None:
        path = self._path(version)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.items()}, str(tmp))
        if thresholds is not None:
            side = self._thresholds_path(version)
            side.with_suffix(".tmp").write_text(json.dumps(thresholds))
            os.replace(side.with_suffix(".tmp"), side)
        os.replace(tmp, path)
        if self.max_size:
            for old in self.versions()[: -self.max_size]:
                self._path(old).unlink(missing_ok=True)
                self._thresholds_path(old).unlink(missing_ok=True)

    def versions(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def thresholds(self, version: int) -> dict[str, float] | None:
        side = self._thresholds_path(version)
        return json.loads(side.read_text()) if side.is_file() else None

    def load(self, version: int) -> dict[str, torch.Tensor]:
        with _open(self._path(version)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    def open_all(self, versions: list[int], stack: ExitStack) -> list:
        """Open handles on several checkpoints, closed with ``stack``."""
        return [stack.enter_context(_open(self._path(v))) for v in versions]

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.name.startswith("adapter-") and not p.name.endswith(".tmp"))

    def copy_into(self, folder: Path) -> None:
        """Copy every checkpoint into ``folder`` (a run checkpoint's snapshot of the buffer): copies of
        their own, so that damage to one reaches neither the buffer nor another snapshot."""
        folder.mkdir(parents=True, exist_ok=True)
        for path in self.files():
            copy_file(path, folder / path.name)

    def replace_from(self, folder: Path) -> None:
        """Make the buffer hold exactly the checkpoints in ``folder`` (a resumed run)."""
        self.clear()
        CheckpointBuffer(folder).copy_into(self.folder)

    def clear(self) -> None:
        for path in self.files():
            path.unlink()

    def _path(self, version: int) -> Path:
        return self.folder / f"adapter-{version:08d}.safetensors"

    def _thresholds_path(self, version: int) -> Path:
        return self.folder / f"adapter-{version:08d}.thresholds.json"


def _open(path: Path):
    """``safe_open`` on a checkpoint; a file that cannot be read is an error naming it."""
    try:
        return safe_open(str(path), framework="pt")
    except Exception as error:  # noqa: BLE001 - safetensors' own error type is not importable by name
        raise OSError(f"cannot read teacher checkpoint {path}: {error}") from error


def copy_file(source: Path, target: Path) -> None:
    """``target`` as an independent copy of ``source``: blocks shared copy-on-write where the filesystem
    can (a later write to either is private to it), a full copy elsewhere; never a hard link."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                raise
        shutil.copyfileobj(src, dst, 16 << 20)
