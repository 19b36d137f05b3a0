"""The download cache: one folder per (source, resolved revision), filled in `<revision>.partial` and
renamed into place only once every file matches its checksum, so a partial download is never served and
is resumed, not restarted. `refs/` records which revision a branch (or an S3 prefix) resolved to last, for
offline use. A lock file per entry makes concurrent pulls (replicas, Jobs) download once."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from chatmodel_operator.remote_source import FetchError, Remote, parse

from .hub import HubStore
from .listing import Interrupted, Listing, RemoteFile, Stalled, Store
from .progress import Progress
from .s3 import S3Store
from .settings import Settings, cache_dir

log = logging.getLogger("chatmodel.fetch")
SOURCE_FILE = ".chatmodel-source.json"  # the listing an entry was checked against
RESUMES = 5  # broken connections resumed per file before giving up
Verify = Literal["checksums", "sizes"]


@dataclass(frozen=True)
class Pulled:
    path: Path  # the folder, or the file when the source names one file
    revision: str
    source: str
    fetched_bytes: int  # transferred by this pull (0: all from the cache)
    total_bytes: int = 0  # of every file in the entry
    files: int = 0


def default_root() -> Path:
    """CHATMODEL_DOWNLOAD_CACHE, else the downloads folder of the chatmodel cache (~/.cache/chatmodel)."""
    return Path(os.environ.get("CHATMODEL_DOWNLOAD_CACHE") or cache_dir() / "downloads")


def entry_base(root: Path, remote: Remote) -> Path:
    """The folder holding a source's revisions; a path inside a repo or bucket gets its own."""
    if remote.scheme == "hf":
        base = root / "hf" / f"{remote.repo_type}s" / remote.repo
    else:
        base = root / "s3" / remote.repo
    if remote.path:
        base = base / f"path-{hashlib.sha256(remote.path.encode()).hexdigest()[:12]}"
    return base


def store_for(remote: Remote, settings: Settings) -> Store:
    return HubStore(settings) if remote.scheme == "hf" else S3Store(settings)


def ref_name(remote: Remote) -> str:
    return remote.revision or ("main" if remote.scheme == "hf" else "latest")


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f"{entry.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download of %s", entry)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def pull(
    source: str,
    settings: Settings | None = None,
    cache_root: Path | None = None,
    verify: Verify = "checksums",
    progress_stream: TextIO | None = None,
) -> Pulled:
    """Make a remote source present in the cache and return where it is."""
    settings = settings or Settings.from_env()
    remote = parse(source)
    base = entry_base(Path(cache_root) if cache_root else default_root(), remote)
    if settings.offline:
        return cached(base, remote)
    store = store_for(remote, settings)
    listing = store.listing(remote)
    entry = base / listing.revision
    with locked(entry):
        partial = entry.with_name(entry.name + ".partial")
        if entry.is_dir():
            bad = [f for f in listing.files if not f.matches(entry / f.path, sizes_only=verify == "sizes")]
            if not bad:
                return finish(base, remote, listing, entry, 0)
            log.warning(
                "%s: %d cached file(s) fail their check, fetching them again: %s",
                remote,
                len(bad),
                ", ".join(f.path for f in bad),
            )
            for f in bad:
                (entry / f.path).unlink(missing_ok=True)
            entry.rename(partial)
        fetched = download(store, listing, partial, progress_stream)
        (partial / SOURCE_FILE).write_text(listing.to_json())
        partial.rename(entry)
    return finish(base, remote, listing, entry, fetched)


def finish(base: Path, remote: Remote, listing: Listing, entry: Path, fetched: int) -> Pulled:
    refs = base / "refs"
    refs.mkdir(exist_ok=True)
    ref = refs / ref_name(remote).replace("/", "%2F")
    if not ref.is_file() or ref.read_text() != listing.revision:
        tmp = ref.with_name(ref.name + f".{os.getpid()}")
        tmp.write_text(listing.revision)
        tmp.replace(ref)
    path = entry / listing.files[0].path if listing.single_file else entry
    return Pulled(path, listing.revision, str(remote), fetched, listing.total_bytes, len(listing.files))


def cached(base: Path, remote: Remote) -> Pulled:
    """Offline: the revision asked for (a commit hash, or the one a branch last resolved to)."""
    revision = remote.revision or ""
    ref = base / "refs" / ref_name(remote).replace("/", "%2F")
    if not (base / revision).is_dir() or not revision:
        revision = ref.read_text().strip() if ref.is_file() else ""
    entry = base / revision
    if not revision or not (entry / SOURCE_FILE).is_file():
        raise FetchError(
            f"{remote}: not in the download cache {base.parent}, and downloads are off (offline)"
        )
    listing = Listing.from_json(remote, (entry / SOURCE_FILE).read_text())
    return finish(base, remote, listing, entry, 0)


def download(store: Store, listing: Listing, partial: Path, progress_stream: TextIO | None) -> int:
    """Fetch every file not yet complete in `partial`; returns the bytes transferred."""
    progress = Progress(
        str(listing.remote), listing.revision, listing.total_bytes, len(listing.files), progress_stream
    )
    fetched = 0
    try:
        for f in listing.files:
            dest = partial / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(2):  # a file that fails its checksum is fetched again once
                fetched += fetch_file(store, listing, f, dest, progress)
                if f.matches(dest):
                    break
                log.warning(
                    "%s: %s fails its %s check (attempt %d)",
                    listing.remote,
                    f.path,
                    f.checksum_kind(),
                    attempt + 1,
                )
                progress.advance(-dest.stat().st_size)
                dest.unlink()
            else:
                raise FetchError(
                    f"{listing.remote}: {f.path}: {f.checksum_kind()} mismatch after fetching it twice"
                )
            progress.file_done()
    except BaseException:
        progress.close("failed")
        raise
    progress.close("done")
    return fetched


def fetch_file(store: Store, listing: Listing, f: RemoteFile, dest: Path, progress: Progress) -> int:
    have = dest.stat().st_size if dest.exists() else 0
    if have > f.size:
        dest.unlink()
        have = 0
    progress.advance(have)
    fetched = 0
    resumes = 0
    with dest.open("ab") as out:
        while have < f.size:
            try:
                for block in store.read(listing, f, have):
                    out.write(block)
                    have += len(block)
                    fetched += len(block)
                    progress.advance(len(block))
                if have < f.size:
                    raise Interrupted(f"connection closed at {have} of {f.size} bytes")
            except Stalled:
                raise FetchError(
                    f"{listing.remote}: {f.path}: download stalled, no data for "
                    f"{store.settings.stall_seconds:.0f} s at {have} of {f.size} bytes"
                ) from None
            except Interrupted as exc:
                resumes += 1
                if resumes > RESUMES:
                    raise FetchError(f"{listing.remote}: {f.path}: {exc} ({RESUMES} resumes)") from None
                out.flush()
                log.info("%s: %s: %s; resuming at byte %d", listing.remote, f.path, exc, have)
    return fetched
