"""Turn a model or data source into what a container sees: a path or URI, plus the volumes it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatmodel_operator.spec import RemoteAccess

SOURCES_MOUNT = "/sources"


@dataclass
class Mounts:
    """Volumes and mounts collected while resolving sources; one volume per claim."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    _claims: dict[str, str] = field(default_factory=dict)

    def claim(self, claim: str, read_only: bool = True) -> str:
        """Mount a PVC once; return its mount path."""
        if claim not in self._claims:
            vol = f"source-{len(self._claims)}"
            path = f"{SOURCES_MOUNT}/{claim}"
            self._claims[claim] = path
            pvc = {"claimName": claim, "readOnly": read_only}
            self.volumes.append({"name": vol, "persistentVolumeClaim": pvc})
            self.mounts.append({"name": vol, "mountPath": path, "readOnly": read_only})
        return self._claims[claim]

    def resolve(self, source: str) -> str:
        """pvc://claim/path becomes a path under the mounted claim; other sources pass through as is
        (builtin:// and hf:// are understood by the runtime, file:// and absolute paths are in the image)."""
        if source.startswith("pvc://"):
            claim, _, rest = source[len("pvc://") :].partition("/")
            root = self.claim(claim)
            return f"{root}/{rest}" if rest else root
        return source


def remote_env(access: RemoteAccess, source: str) -> list[dict[str, Any]]:
    """What an hf:// or s3:// source's fields become in a container: the environment variables the stores'
    own tools read, which the runtime's downloader (chatmodel_serving.fetch.settings) reads too."""
    env: list[dict[str, Any]]
    if source.startswith("hf://"):
        env = [{"name": "HF_ENDPOINT", "value": access.endpoint}] if access.endpoint else []
        keys = ["HF_TOKEN"]
    elif source.startswith("s3://"):
        env = [{"name": "AWS_ENDPOINT_URL", "value": access.endpoint}] if access.endpoint else []
        if access.region:
            env.append({"name": "AWS_REGION", "value": access.region})
        if access.path_style is False:
            env.append({"name": "CHATMODEL_S3_ADDRESSING_STYLE", "value": "virtual"})
        keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    else:
        return []
    if access.credentials_secret_ref is not None:
        secret = access.credentials_secret_ref.name
        env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for k in keys]
    return env
