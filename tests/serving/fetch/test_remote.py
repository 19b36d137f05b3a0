"""Source strings and checksums of the download cache (fetch/): pure, no server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chatmodel_serving.fetch import FetchError, Remote, parse
from chatmodel_serving.fetch.listing import RemoteFile


@pytest.mark.parametrize(
    ("source", "remote"),
    [
        ("hf://org/name", Remote("hf", "org/name")),
        ("hf://org/name@v1.0", Remote("hf", "org/name", revision="v1.0")),
        ("hf://gpt2", Remote("hf", "gpt2")),
        ("hf://org/name@abc123/sub/folder", Remote("hf", "org/name", "sub/folder", "abc123")),
        (
            "hf://datasets/org/faq/data/train.jsonl",
            Remote("hf", "org/faq", "data/train.jsonl", None, "dataset"),
        ),
        ("hf://datasets/org/faq@main/train.jsonl", Remote("hf", "org/faq", "train.jsonl", "main", "dataset")),
        ("s3://models/smollm2/", Remote("s3", "models", "smollm2")),
        ("s3://data-bucket/faq/train.jsonl", Remote("s3", "data-bucket", "faq/train.jsonl")),
    ],
)
def test_sources_parse_and_print_back(source: str, remote: Remote) -> None:
    assert parse(source) == remote
    assert parse(str(remote)) == remote


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("hf://", "hf://org/name[@revision]"),
        ("hf://org/name@", "hf://org/name[@revision]"),
        ("hf://datasets/org", "hf://datasets/org/name[@revision]/file"),
        ("hf://org/na me", "hf://org/name[@revision]"),
        ("s3://", "s3://bucket/key-or-prefix"),
        ("s3://UPPER/x", "s3://bucket/key-or-prefix"),
        ("gs://b/x", "hf:// or s3://"),
    ],
)
def test_malformed_sources_say_the_form(source: str, says: str) -> None:
    with pytest.raises(FetchError, match=source.replace("?", r"\?")) as err:
        parse(source)
    assert says in str(err.value)


def test_each_checksum_kind_detects_one_changed_byte(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    file = tmp_path / "f.bin"
    file.write_bytes(data)
    git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    kinds = [
        RemoteFile("f.bin", len(data), "f.bin", sha256=hashlib.sha256(data).hexdigest()),
        RemoteFile("f.bin", len(data), "f.bin", git_sha1=git),
        RemoteFile("f.bin", len(data), "f.bin", md5=hashlib.md5(data).hexdigest()),
    ]
    assert all(k.matches(file) for k in kinds)
    file.write_bytes(data[:100] + b"\xff" + data[101:])
    assert not any(k.matches(file) for k in kinds)
    size_only = RemoteFile("f.bin", len(data), "f.bin")
    assert size_only.checksum_kind() == "size" and size_only.matches(file)
    assert not RemoteFile("f.bin", len(data) + 1, "f.bin").matches(file)


def test_s3_multipart_etag_is_checked_for_the_part_size_tools_use(tmp_path: Path) -> None:
    part = 5 * 1024 * 1024  # boto3/aws-cli would use 8 MiB; MinIO's SDK 5 MiB and up
    data = bytes(range(251)) * (2 * part // 251 + 1000)
    file = tmp_path / "model.bin"
    file.write_bytes(data)
    chunks = [data[i : i + part] for i in range(0, len(data), part)]
    etag = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest() + f"-{len(chunks)}"
    f = RemoteFile("model.bin", len(data), "model.bin", etag=etag)
    assert f.checksum_kind() == "s3-multipart" and f.matches(file)
    file.write_bytes(data[:-1] + b"\x00" if data[-1] else data[:-1] + b"\x01")
    assert not f.matches(file)
