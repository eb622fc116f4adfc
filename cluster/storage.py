"""Where a run's durable state lives (issue 20): a local folder, or a location ``pyarrow.fs`` opens from a URI
(``s3://bucket/runs/x``, ``gs://...``, ``hdfs://...``, ``file:///shared/runs/x``), the way Ray's own
libraries take a storage path. ``run_dir`` is either.

One place writes it: the driver. It writes into a local folder (the location itself when that is a local
path; otherwise a staging folder on the driver's machine, ``storage_staging``) and ``push`` copies to the
location what changed there: after every record (so after every checkpoint), after the warm start and
when the run ends. ``pull`` brings a run's files back before it resumes, on whichever machine the driver
is then. The roles never see it (cluster/roles.py): their states, the adapters and the teacher's
checkpoints reach the driver through Ray's object store. A model folder at a URI (``policy.path``, and the
warm start's checkpoint when ``run_dir`` is a URI) is fetched by each node into its own cache
(models/loading.py ``fetch_folder``).

pyarrow is imported only for a URI (STYLE.md 13): a local ``run_dir`` works as before without it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from core.uri import download, is_uri, local_name, upload

# Never copied to the location: the run folder's lock (it locks this machine's staging folder only) and
# the temporary names of files and checkpoints being written.
PRIVATE = re.compile(r"(^|/)(\.lock|\.tmp-[^/]*|\.[^/]*\.tmp)(/|$)")


class StorageError(ValueError):
    """The storage location cannot be used; the message says why and what to set."""


def staging_root(configured: str = "") -> Path:
    return Path(configured).expanduser() if configured else Path(tempfile.gettempdir()) / "gtr-turbo-staging"


class Storage:
    """A run's storage location and the local folder the driver writes it through (the same for a path)."""

    def __init__(self, location: str, staging: str = ""):
        self.fs = None
        self.root = ""
        if is_uri(location):
            self.location = location.rstrip("/")
            self.fs, self.root = _open(self.location)
            self.root = self.root.rstrip("/")
            self.local = staging_root(staging) / local_name(self.location)
        else:
            self.local = Path(location).expanduser().resolve()
            self.location = str(self.local)
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) at its last push

    @property
    def name(self) -> str:
        """The run's name: the last part of its location."""
        return self.location.rsplit("/", 1)[-1]

    @property
    def remote(self) -> bool:
        """Whether the location is a URI (then the driver writes through a staging folder)."""
        return self.fs is not None

    def show(self, path: Path | str) -> str:
        """``path`` (in the local folder) as the user finds it: at the storage location."""
        return show(Path(path), self.local, self.location)

    # ------------------------------------------------------------------ a URI location

    def holds_run(self) -> bool:
        """Whether the location already holds a run (its metrics or checkpoints)."""
        if not self.remote:
            return (self.local / "metrics.jsonl").exists() or (self.local / "checkpoints").exists()
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info([f"{self.root}/metrics.jsonl", f"{self.root}/checkpoints"])
        return any(info.type != pafs.FileType.NotFound for info in infos)

    def start_new(self) -> None:
        """A new run at a URI: an empty staging folder (one left by an earlier run there is cleared)."""
        if self.remote and self.local.exists():
            for path in self.local.iterdir():
                if path.name == ".lock":
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        self._pushed = {}

    def pull(self, only: str | None = None) -> None:
        """Make the staging folder hold what the location holds (``only``: that one file)."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        if only is not None:
            info = self.fs.get_file_info(f"{self.root}/{only}")
            if info.type != pafs.FileType.File:
                raise StorageError(f"{self.location}/{only} does not exist: is {self.location} a run's location?")
            self._download(only)
            return
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        found = {
            info.path[len(self.root) :].lstrip("/")
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        }
        if not found:
            raise StorageError(f"{self.location} holds nothing to resume: is it a run's location?")
        for relative in self._local_files():
            if relative not in found:
                (self.local / relative).unlink()
        for relative in sorted(found):
            self._download(relative)
        self._pushed = self._local_files()

    def push(self) -> None:
        """Copy to the location every file that changed here since the last push, and delete there what is
        gone here (checkpoints past ``train.keep_checkpoints``, moved aside). A no-op for a local path."""
        if not self.remote:
            return
        current = self._local_files()
        for relative, signature in current.items():
            if self._pushed.get(relative) != signature:
                self._upload(relative)
        for relative in sorted(set(self._pushed) - set(current)):
            self._delete(relative)
        self._pushed = current

    def _local_files(self) -> dict[str, tuple[int, int]]:
        if not self.local.is_dir():
            return {}
        out = {}
        for path in self.local.rglob("*"):
            relative = path.relative_to(self.local).as_posix()
            if path.is_file() and not PRIVATE.search(relative):
                stat = path.stat()
                out[relative] = (stat.st_size, stat.st_mtime_ns)
        return out

    def _upload(self, relative: str) -> None:
        target = f"{self.root}/{relative}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        upload(self.fs, self.local / relative, target)

    def _download(self, relative: str) -> None:
        target = self.local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.tmp")
        download(self.fs, f"{self.root}/{relative}", partial)
        partial.replace(target)

    def _delete(self, relative: str) -> None:
        """Delete a file there, and the folders above it that are gone here (a pruned checkpoint)."""
        import pyarrow.fs as pafs

        if self.fs.get_file_info(f"{self.root}/{relative}").type == pafs.FileType.File:
            self.fs.delete_file(f"{self.root}/{relative}")
        gone = None
        for parent in Path(relative).parents:
            if parent == Path(".") or (self.local / parent).exists():
                break
            gone = parent
        if gone is not None and self.fs.get_file_info(f"{self.root}/{gone.as_posix()}").type == pafs.FileType.Directory:
            self.fs.delete_dir(f"{self.root}/{gone.as_posix()}")


def show(path: Path, local: Path, location: str) -> str:
    """``path`` under the local folder ``local`` as it is at ``location`` (the same string for a local run)."""
    try:
        relative = path.relative_to(local).as_posix()
    except ValueError:
        return str(path)
    if not location:  # a run made without launch (bench/): its folder is all there is
        return str(path)
    return location if relative == "." else f"{location}/{relative}"


def _open(location: str):
    """The filesystem and path of a URI; one pyarrow cannot open is an error saying what it takes."""
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise StorageError(f"run_dir={location} is a URI, which needs pyarrow (pip install pyarrow)") from None
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError) as error:
        raise StorageError(
            f"run_dir={location}: pyarrow.fs cannot open it ({error}). Give a local path, or a URI pyarrow.fs "
            "takes (s3://bucket/path, gs://bucket/path, hdfs://host/path, file:///absolute/path) with its "
            "credentials in the environment"
        ) from None


class Pushing:
    """A run log's sink (cluster/runlog.py) that copies the run's files to their location after each record."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def write(self, record: dict) -> None:
        self.storage.push()

    def close(self) -> None:
        pass
