"""What a remote source string names: `hf://[datasets/]org/name[@revision][/path]` or `s3://bucket/key`.

Shared: the runtime's downloader (chatmodel_serving.fetch) and the operator (which resolves hf://
revisions and keys the model cache) read sources the same way. Stdlib only."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

REMOTE_SCHEMES = ("hf://", "s3://")
_REPO_PART = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")


class FetchError(ValueError):
    """A source that cannot be fetched; the message names the source and quotes the store's own error."""


@dataclass(frozen=True)
class Remote:
    scheme: Literal["hf", "s3"]
    repo: str  # hf: org/name; s3: the bucket
    path: str = ""  # hf: a file or folder inside the repo ("" = all of it); s3: the key or key prefix
    revision: str | None = None  # hf only: a branch, tag or commit; None = the default branch
    repo_type: Literal["model", "dataset"] = "model"

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.repo}/{self.path}".rstrip("/")
        kind = "datasets/" if self.repo_type == "dataset" else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{kind}{self.repo}{rev}" + (f"/{self.path}" if self.path else "")


def is_remote(source: str) -> bool:
    return source.startswith(REMOTE_SCHEMES)


def parse(source: str) -> Remote:
    """Parse a remote source; a malformed one raises FetchError saying what the form is."""
    if source.startswith("s3://"):
        bucket, _, key = source[len("s3://") :].partition("/")
        if not bucket or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise FetchError(f"{source}: not an S3 source; the form is s3://bucket/key-or-prefix")
        return Remote("s3", bucket, key.strip("/"))
    if not source.startswith("hf://"):
        raise FetchError(f"{source}: not a remote source (hf:// or s3://)")
    rest = source[len("hf://") :]
    repo_type: Literal["model", "dataset"] = "model"
    if rest.startswith("datasets/"):
        repo_type, rest = "dataset", rest[len("datasets/") :]
    parts = [p for p in rest.split("/") if p]
    # org/name[@rev]/path...; a model may also be a single legacy name (hf://gpt2[@rev]).
    n = 2 if len(parts) >= 2 or repo_type == "dataset" else 1
    repo_parts, path = parts[:n], "/".join(parts[n:])
    revision = None
    if repo_parts and "@" in repo_parts[-1]:
        repo_parts[-1], revision = repo_parts[-1].split("@", 1)
    if len(repo_parts) != n or not all(_REPO_PART.match(p) for p in repo_parts) or revision == "":
        form = (
            "hf://datasets/org/name[@revision]/file" if repo_type == "dataset" else "hf://org/name[@revision]"
        )
        raise FetchError(f"{source}: not a Hugging Face source; the form is {form}")
    return Remote("hf", "/".join(repo_parts), path, revision, repo_type)
