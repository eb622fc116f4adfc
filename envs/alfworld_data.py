"""Where the ALFWorld games are: a configured folder, or the archive vendored in ``data/alfworld``.

Never calls ``alfworld-download`` (it needs GitHub). A split is extracted from the vendored archive
on first use, into a temporary folder renamed into place, so an interrupted extraction never
leaves a half-written split behind.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train")
ARCHIVE = Path(__file__).resolve().parents[1] / "data" / "alfworld" / "alfworld_json_2.1.1_tw-pddl_all.tar.xz"
ARCHIVE_SHA256 = "00ed633192a26ceaa328585e1b953abef94aec145aeeeb6ed19aa66cd0868530"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gtr-turbo" / "alfworld"


def split_dir(split: str, data_dir: str | None = None) -> Path:
    """The folder holding ``<task>/<trial>/game.tw-pddl`` for a split.

    ``data_dir`` names a folder with ``json_2.1.1/<split>``; without it, the split is extracted
    from the vendored archive into the cache once. The ``ALFWORLD_DATA`` variable is deliberately
    not read: importing ``alfworld`` sets it to ``~/.cache/alfworld`` (and creates that folder), so it
    cannot tell a user's choice from alfworld's default. Put ``${oc.env:ALFWORLD_DATA}`` in the YAML
    to use it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; choose one of {', '.join(SPLITS)}")
    if data_dir:
        folder = Path(os.path.expandvars(data_dir)).expanduser() / "json_2.1.1" / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ALFWorld split {split!r} not found at {folder}. Point env.alfworld.data_dir "
                f"at a folder holding json_2.1.1/{split}/, e.g. extract {ARCHIVE.name} there with "
                f"`tar -xJf {ARCHIVE} -C <folder>`, or leave it empty to use the archive vendored in the repo."
            )
        return folder
    folder = cache_root() / "json_2.1.1" / split
    if not folder.is_dir():
        extract_split(split, cache_root())
    return folder


def extract_split(split: str, root: Path) -> None:
    if not ARCHIVE.is_file():
        raise FileNotFoundError(
            f"the vendored ALFWorld archive {ARCHIVE} is missing (is this a complete clone?). "
            f"Copy it from the team's shared/data/alfworld/ or set env.alfworld.data_dir."
        )
    digest = hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise ValueError(f"{ARCHIVE} has sha256 {digest}, expected {ARCHIVE_SHA256}: the file is damaged")
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"json_2.1.1/{split}/"
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(ARCHIVE, "r:xz") as archive:
            members = [m for m in archive if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            archive.extractall(tmp, members=members, filter="data")
        target = root / "json_2.1.1" / split
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(Path(tmp) / prefix, target)
        except OSError:
            if not target.is_dir():  # another process won the race: fine; anything else is an error
                raise
