"""What a reconcile knows of a remote base model's download (hf://, s3://): its revision resolved at
version time (revisions.py), and its shared download Job's state, progress and result. The plan then
creates the cache PVC and the Job, waits for it, and serves from the cache (plan.py)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from typing import Any

from chatmodel_operator import observe, revisions
from chatmodel_operator.builders.model_cache import DOWNLOAD_CONTAINER, download_job_name
from chatmodel_operator.download_contract import last_progress, parse_result
from chatmodel_operator.k8s import Client
from chatmodel_operator.remote_source import FetchError, is_remote, parse
from chatmodel_operator.spec import ChatModel, DownloadStatus, ModelSource

log = logging.getLogger("chatmodel.downloads")


def in_progress(status: dict[str, Any] | None) -> bool:
    """Whether a (raw) status shows a download under way: its progress is polled, not evented."""
    return ((status or {}).get("download") or {}).get("state") in ("Pending", "Downloading")


def base_model_of(cm: ChatModel) -> ModelSource:
    """The base model the target version uses: a pinned version's own (its recorded, resolved source)."""
    pin, status = cm.spec.rollout.pin_version, cm.status
    record = next((v for v in status.versions if v.name == pin), None) if pin and status else None
    if record is None:
        return cm.spec.base_model
    return cm.spec.base_model.model_copy(update={"source": record.base_model})


async def _token(client: Client, ns: str, source: ModelSource) -> str | None:
    ref = source.credentials_secret_ref
    if ref is None:
        return None
    secret = await client.get("v1", "Secret", ns, ref.name)
    if secret is None:
        raise revisions.ResolveError(f"spec.baseModel.credentialsSecretRef: Secret {ref.name} not found")
    raw = (secret.get("data") or {}).get("HF_TOKEN")
    if raw is None:
        raise revisions.ResolveError(
            f"spec.baseModel.credentialsSecretRef: Secret {ref.name} has no HF_TOKEN key"
        )
    try:
        return base64.b64decode(raw).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise revisions.ResolveError(f"Secret {ref.name}: HF_TOKEN is not base64 text") from None


async def resolved(
    client: Client, ns: str, source: ModelSource, generation: int | None, prev: DownloadStatus | None
) -> DownloadStatus:
    """The source with its revision: as the last reconcile of this generation resolved it, else asked of
    the hub now (a new spec generation resolves again: that is where a moved branch makes a new version).
    S3 has no revision to ask for; the download's listing digest is recorded when it is done."""
    requested = source.source
    if prev is not None and prev.requested == requested and prev.resolved_generation == generation:
        return prev
    start = DownloadStatus(
        requested=requested, source=requested, resolved_generation=generation, state="Pending"
    )
    if not requested.startswith("hf://"):
        return start
    try:
        token = await _token(client, ns, source)
        sha = revisions.resolve(requested, source.endpoint, token)
    except (revisions.ResolveError, FetchError) as e:
        return start.model_copy(update={"state": "Failed", "message": str(e)})
    pinned = dataclasses.replace(parse(requested), revision=sha)
    return start.model_copy(update={"source": str(pinned), "revision": sha})


async def observe_download(client: Client, cm: ChatModel, generation: int | None) -> DownloadStatus | None:
    """The target's download as it stands, or None when its base model is not remote."""
    source = base_model_of(cm)
    if not is_remote(source.source):
        return None
    ns = cm.metadata.namespace or "default"
    prev = cm.status.download if cm.status else None
    d = await resolved(client, ns, source, generation, prev)
    if d.state in ("Failed", "Succeeded") and d is prev:
        return d  # settled for this generation: no request
    if d.state == "Failed":
        return d
    name = download_job_name(d.source, source.endpoint)
    body = await client.get("batch/v1", "Job", ns, name)
    if body is None:
        return d.model_copy(update={"state": "Pending", "job": name})
    job = observe.job(body)
    if job.state == "Failed" and d is not prev:
        # A new spec generation (a fixed Secret, a store back up) tries again: the failed Job goes.
        await client.delete("batch/v1", "Job", ns, name)
        return d.model_copy(update={"state": "Pending", "job": name})
    pods = await client.list("v1", "Pod", ns, job.pod_selector)
    if job.state == "Running":
        progress = await _progress(client, ns, pods)
        return d.model_copy(update={"state": "Downloading", "job": name, **progress})
    message = job.result or observe.termination_message(pods)
    if job.result is None and message:  # kept on the Job: its pods may not last
        note = {"metadata": {"annotations": {observe.RESULT_ANNOTATION: message}}}
        await client.patch("batch/v1", "Job", ns, name, note)
    result = parse_result(message)
    if job.state == "Failed" or "error" in result or "path" not in result:
        why = result.get("error") or job.reason or "the download Job failed"
        return d.model_copy(update={"state": "Failed", "job": name, "message": why})
    return d.model_copy(
        update={
            "state": "Succeeded",
            "job": name,
            "path": result["path"],
            "revision": d.revision or result.get("revision"),
            "bytes_done": result.get("bytesTotal"),
            "bytes_total": result.get("bytesTotal"),
            "files_done": result.get("files"),
            "files_total": result.get("files"),
            "message": None,
        }
    )


async def _progress(client: Client, ns: str, pods: list[dict[str, Any]]) -> dict[str, Any]:
    """bytes and files done/total from the newest running pod's log (its last progress line)."""
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        return {}
    pod = max(running, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    text = await client.pod_log(ns, pod["metadata"]["name"], DOWNLOAD_CONTAINER)
    record = last_progress(text or "")
    if record is None:
        return {}
    keys = {
        "bytesDone": "bytes_done",
        "bytesTotal": "bytes_total",
        "filesDone": "files_done",
        "filesTotal": "files_total",
    }
    return {ours: record[theirs] for theirs, ours in keys.items() if isinstance(record.get(theirs), int)}
