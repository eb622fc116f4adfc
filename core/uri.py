"""What the run storage (cluster/storage.py) and the model loader (models/loading.py) share about a
``pyarrow.fs`` location (s3://, gs://, hdfs://, file://): how to tell one, the local folder name a copy of
it takes, and the streamed copy of one file either way."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

CHUNK = 16 << 20  # bytes per read of a streamed copy


def is_uri(location: str) -> bool:
    return "://" in location


def local_name(location: str, content: str = "", digits: int = 12) -> str:
    """A folder name for a local copy of ``location``: the location's last 60 characters made safe for a
    file name, then a digest of the location and ``content`` (what the copy holds, when a new content
    should make a new copy)."""
    digest = hashlib.sha256(f"{location}\n{content}".encode() if content else location.encode()).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', location)[-60:]}-{digest[:digits]}"


def download(fs, path: str, target: Path) -> None:
    """Copy file ``path`` of filesystem ``fs`` to ``target``, streamed."""
    with fs.open_input_stream(path) as source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink, CHUNK)


def upload(fs, source: Path, path: str) -> None:
    """Copy local file ``source`` to ``path`` of filesystem ``fs``, streamed."""
    with open(source, "rb") as data, fs.open_output_stream(path) as sink:
        shutil.copyfileobj(data, sink, CHUNK)
