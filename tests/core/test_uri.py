"""core/uri.py: the local name of a copy of a location, and the streamed copy both ways."""

import pyarrow.fs as pafs

from core.uri import download, is_uri, local_name, upload


def test_a_copys_name_is_safe_short_and_changes_with_the_location_or_its_content():
    name = local_name("s3://bucket/runs/a b?c")
    assert name.startswith("s3_bucket_runs_a_b_c-") and len(name.rsplit("-", 1)[1]) == 12
    assert local_name("s3://bucket/" + "x" * 200).startswith("x" * 60)  # the location's end, where runs differ
    assert local_name("s3://b/r") == local_name("s3://b/r") != local_name("s3://b/s")
    assert local_name("s3://b/m", "w.bin 10 1") != local_name("s3://b/m", "w.bin 11 1")  # new files, new copy
    assert len(local_name("s3://b/m", "x", digits=16).rsplit("-", 1)[1]) == 16
    assert is_uri("gs://b/p") and is_uri("file:///tmp/x") and not is_uri("/tmp/x") and not is_uri("runs/x")


def test_a_file_goes_there_and_back_unchanged(tmp_path):
    fs = pafs.LocalFileSystem()
    data = bytes(range(256)) * 5000
    (tmp_path / "a.bin").write_bytes(data)
    upload(fs, tmp_path / "a.bin", str(tmp_path / "b.bin"))
    download(fs, str(tmp_path / "b.bin"), tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == data
