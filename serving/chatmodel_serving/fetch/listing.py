"""A resolved source: its revision and its files with the sizes and checksums the store gives."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from chatmodel_operator.remote_source import Remote

from .settings import Settings

CHUNK = 1 << 20
MIB = 1 << 20
MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-([0-9]+)$")
# Part sizes upload tools use (aws-cli/boto3 8 MiB, MinIO's client and SDKs 16 MiB / 5 MiB, ...).
COMMON_PART_MIB = (5, 8, 10, 16, 32, 64, 100, 128, 256, 512, 1024)


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the cache entry
    size: int
    locator: str  # the store's name for it: a URL path or an object key
    sha256: str | None = None  # Hugging Face LFS files
    git_sha1: str | None = None  # Hugging Face files kept in git: the blob id
    md5: str | None = None  # S3 objects uploaded in one part: the ETag
    etag: str | None = None  # S3: recorded, and part of the revision

    def checksum_kind(self) -> str:
        if self.sha256:
            return "sha256"
        if self.git_sha1:
            return "git-sha1"
        if self.md5:
            return "md5"
        return "s3-multipart" if self.etag and MULTIPART_ETAG.match(self.etag) else "size"

    def matches(self, file: Path, sizes_only: bool = False) -> bool:
        """Whether a local copy has this file's size and checksum (what the store gives to check)."""
        try:
            if file.stat().st_size != self.size:
                return False
        except FileNotFoundError:
            return False
        kind = self.checksum_kind()
        if kind == "size" or sizes_only:
            return True
        if kind == "s3-multipart":
            return multipart_etag_matches(file, self.size, str(self.etag))
        digest = hashlib.sha256() if kind == "sha256" else hashlib.md5() if kind == "md5" else hashlib.sha1()
        if kind == "git-sha1":  # git's blob id hashes a header, then the content
            digest.update(b"blob %d\0" % self.size)
        with file.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        want = self.sha256 or self.git_sha1 or self.md5
        return digest.hexdigest() == want


@dataclass(frozen=True)
class Listing:
    remote: Remote
    revision: str  # hf: the commit hash; s3: a digest of the keys and ETags
    files: tuple[RemoteFile, ...]
    single_file: bool = False  # the source names one file (a dataset), not a folder

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "source": str(self.remote),
            "revision": self.revision,
            "singleFile": self.single_file,
            "files": [asdict(f) for f in self.files],
        }
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, remote: Remote, text: str) -> Listing:
        body = json.loads(text)
        files = tuple(RemoteFile(**f) for f in body["files"])
        return cls(remote, body["revision"], files, bool(body.get("singleFile")))


class Store(Protocol):
    settings: Settings

    def listing(self, remote: Remote) -> Listing: ...

    def read(self, listing: Listing, file: RemoteFile, start: int) -> Iterator[bytes]:
        """The file's bytes from `start` on; raises FetchError (the store's message) or Stalled."""
        ...


class Stalled(Exception):
    """No byte arrived for the configured time."""


class Interrupted(Exception):
    """The connection broke mid-file: worth resuming from where it stopped."""


def multipart_etag_matches(file: Path, size: int, etag: str) -> bool:
    """An S3 multipart ETag is the MD5 of the parts' MD5s, then "-N": the part size is not recorded, so
    every part size that gives N parts for this size and that tools use is tried, in one read."""
    m = MULTIPART_ETAG.match(etag)
    if m is None:
        return False
    parts = int(m.group(1))
    even = -(-size // parts)
    sizes = {-(-even // MIB) * MIB, *(k * MIB for k in COMMON_PART_MIB)}
    candidates = sorted(p for p in sizes if p > 0 and -(-size // p) == parts)
    if not candidates:
        return False
    digests: dict[int, list[bytes]] = {p: [] for p in candidates}
    running = {p: hashlib.md5() for p in candidates}
    filled = dict.fromkeys(candidates, 0)
    with file.open("rb") as f:
        while block := f.read(CHUNK):
            for p in candidates:
                view = memoryview(block)
                while view:
                    take = min(len(view), p - filled[p])
                    running[p].update(view[:take])
                    filled[p] += take
                    view = view[take:]
                    if filled[p] == p:
                        digests[p].append(running[p].digest())
                        running[p], filled[p] = hashlib.md5(), 0
    for p in candidates:
        if filled[p]:
            digests[p].append(running[p].digest())
        if f"{hashlib.md5(b''.join(digests[p])).hexdigest()}-{parts}" == etag:
            return True
    return False
