"""Hugging Face hubs and hub-compatible mirrors (olah, the hub's own enterprise mirrors): huggingface_hub
resolves the revision and lists the files with their checksums; httpx streams the bytes with Range
requests so a download resumes where it stopped."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from chatmodel_operator.remote_source import FetchError, Remote

from .listing import CHUNK, Interrupted, Listing, RemoteFile, Stalled
from .settings import Settings


def store_message(exc: BaseException) -> str:
    """The store's own words, short: huggingface_hub puts the status on line 1 and the reason on line 2."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) or exc.__class__.__name__


class HubStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _headers(self) -> dict[str, str]:
        token = self.settings.hub_token
        return {"authorization": f"Bearer {token}"} if token else {}

    def listing(self, remote: Remote) -> Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.settings.hub_endpoint, token=self.settings.hub_token or False)
        repo_type = "dataset" if remote.repo_type == "dataset" else None
        prefix = remote.path.strip("/")
        try:
            # The revision always named: mirrors (olah) resolve "no revision" from their own cache only.
            info = api.repo_info(remote.repo, revision=remote.revision or "main", repo_type=repo_type)
            if not info.sha:
                raise FetchError(f"{remote}: the hub gave no commit hash for {remote.revision or 'main'}")
            # The tree listing, not repo_info's siblings: it carries sizes, blob ids and LFS sha256s on the
            # hub and on mirrors alike.
            tree = api.list_repo_tree(remote.repo, revision=info.sha, repo_type=repo_type, recursive=True)
            entries = [e for e in tree if isinstance(e, RepoFile)]
        except HfHubHTTPError as exc:
            raise FetchError(f"{remote}: {store_message(exc)}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise FetchError(
                f"{remote}: hub {self.settings.hub_endpoint} unreachable: {store_message(exc)}"
            ) from None
        files = []
        for e in entries:
            name = e.path
            if prefix and name != prefix and not name.startswith(prefix + "/"):
                continue
            rel = name.rsplit("/", 1)[-1] if name == prefix else name[len(prefix) + 1 :] if prefix else name
            lfs = e.lfs
            files.append(
                RemoteFile(
                    path=rel,
                    size=int(e.size),
                    locator=name,
                    sha256=lfs.sha256 if lfs is not None else None,
                    git_sha1=e.blob_id if lfs is None else None,
                )
            )
        if not files:
            raise FetchError(f"{remote}: no file {prefix!r} in {remote.repo} at {info.sha}")
        single = len(files) == 1 and files[0].locator == prefix
        return Listing(remote, info.sha, tuple(sorted(files, key=lambda f: f.path)), single)

    def read(self, listing: Listing, file: RemoteFile, start: int) -> Iterator[bytes]:
        from huggingface_hub import hf_hub_url

        remote = listing.remote
        repo_type = "dataset" if remote.repo_type == "dataset" else None
        # At the resolved commit: a branch that moves mid-download cannot mix two revisions.
        url = hf_hub_url(
            remote.repo,
            file.locator,
            repo_type=repo_type,
            revision=listing.revision,
            endpoint=self.settings.hub_endpoint,
        )
        headers = self._headers()
        if start:
            headers["range"] = f"bytes={start}-"
        timeout = httpx.Timeout(30.0, read=self.settings.stall_seconds)
        try:
            with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
                if r.status_code >= 400:
                    r.read()
                    raise FetchError(f"{remote}: {file.locator}: HTTP {r.status_code} {r.text[:200]}")
                # A server that ignores Range sends it all: skip what is here already.
                skip = start if r.status_code != 206 else 0
                for block in r.iter_bytes(CHUNK):
                    if skip >= len(block):
                        skip -= len(block)
                        continue
                    yield block[skip:]
                    skip = 0
        except httpx.ReadTimeout:
            raise Stalled() from None
        except httpx.TransportError as exc:
            raise Interrupted(store_message(exc)) from None
