"""The model download Job's contract, described once: the command line the operator gives it, the progress
lines it prints (the operator reads them from the pod's log into `status.download`), and the result it
leaves in its termination message. `chatmodel download` (chatmodel_serving) writes both; the operator
(builders.model_cache, observe) reads both. Stdlib only: the runtime imports it too."""

from __future__ import annotations

import json
from typing import Any

PROGRESS_KEY = "chatmodelDownload"  # the progress lines' one key: what a reader of the log looks for
# The progress record's fields (the JSON's own names, also status.download's).
PROGRESS_FIELDS = ("state", "source", "revision", "bytesDone", "bytesTotal", "filesDone", "filesTotal")
# The termination message: {"path", "revision", "fetchedBytes", "bytesTotal", "files"} or {"error"}.
TERMINATION_LOG = "/dev/termination-log"


def download_argv(source: str, cache_dir: str, stall_seconds: float) -> list[str]:
    """`chatmodel download` as the cluster's download Job runs it."""
    return [
        "chatmodel", "download", source, "--cache-dir", cache_dir,
        "--stall-seconds", f"{stall_seconds:g}", "--result-file", TERMINATION_LOG,
    ]  # fmt: skip


def progress_line(record: dict[str, Any]) -> str:
    return json.dumps({PROGRESS_KEY: {k: record[k] for k in PROGRESS_FIELDS if k in record}})


def parse_progress(line: str) -> dict[str, Any] | None:
    """The progress record in one log line, or None."""
    if PROGRESS_KEY not in line:
        return None
    try:
        body = json.loads(line)
    except ValueError:
        return None
    record = body.get(PROGRESS_KEY) if isinstance(body, dict) else None
    return record if isinstance(record, dict) else None


def last_progress(log: str) -> dict[str, Any] | None:
    """The newest progress record in a log's text, or None."""
    for line in reversed(log.splitlines()):
        record = parse_progress(line)
        if record is not None:
            return record
    return None


def parse_result(message: str | None) -> dict[str, Any]:
    """A download's termination message; anything else (a pod killed before it wrote one) as an error."""
    if not message:
        return {}
    try:
        body = json.loads(message)
    except ValueError:
        return {"error": message.strip()}
    return body if isinstance(body, dict) else {"error": message.strip()}
