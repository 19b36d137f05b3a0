"""Where the stores are and how to sign in: the same environment variables the stores' own tools read
(HF_ENDPOINT, HF_TOKEN, AWS_*), so a local shell and the cluster's download Job configure it alike."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HUB = "https://huggingface.co"
DEFAULT_STALL_SECONDS = 300.0


def cache_dir() -> Path:
    """The chatmodel cache: CHATMODEL_CACHE, default ~/.cache/chatmodel (converted built-in models,
    downloads)."""
    return Path(os.environ.get("CHATMODEL_CACHE", Path.home() / ".cache" / "chatmodel"))


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    hub_endpoint: str = DEFAULT_HUB
    hub_token: str | None = None
    s3_endpoint: str | None = None  # None: AWS S3 itself
    s3_region: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_path_style: bool = True  # what MinIO, SeaweedFS, Ceph and most private stores expect
    stall_seconds: float = DEFAULT_STALL_SECONDS  # no byte for this long fails the download
    offline: bool = False  # use only what the cache holds

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        given = {k: v for k, v in overrides.items() if v is not None}
        stall = _env("CHATMODEL_DOWNLOAD_STALL_SECONDS")
        found = cls(
            hub_endpoint=(_env("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/"),
            hub_token=_env("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
            s3_endpoint=_env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            s3_region=_env("AWS_REGION", "AWS_DEFAULT_REGION"),
            s3_access_key=_env("AWS_ACCESS_KEY_ID"),
            s3_secret_key=_env("AWS_SECRET_ACCESS_KEY"),
            s3_path_style=os.environ.get("CHATMODEL_S3_ADDRESSING_STYLE", "path") != "virtual",
            stall_seconds=float(stall) if stall else DEFAULT_STALL_SECONDS,
            offline=_flag("HF_HUB_OFFLINE") or _flag("CHATMODEL_OFFLINE"),
        )
        return dataclasses.replace(found, **given)

    @classmethod
    def for_source(
        cls,
        source: str,
        endpoint: str | None = None,
        region: str | None = None,
        path_style: bool | None = None,
        **overrides: Any,
    ) -> Settings:
        """The environment's settings, with a source's own endpoint (a hub's or an S3 store's, by its
        scheme), region and addressing (spec.baseModel's fields, or the command line's) over them."""
        key = "s3_endpoint" if source.startswith("s3://") else "hub_endpoint"
        given = {
            key: endpoint.rstrip("/") if endpoint else None,
            "s3_region": region,
            "s3_path_style": path_style,
        }
        return cls.from_env(**given, **overrides)
