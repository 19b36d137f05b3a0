"""An hf:// source's revision resolved to its commit at version time, by the hub's own API (the call
huggingface_hub's `repo_info` makes), so that the commit is part of the version and a moved branch makes a
new version. Stdlib only (the operator image has no huggingface_hub). The hub's refusal (an unknown repo,
a revision that does not exist, a wrong token) is kept word for word: it becomes the version's message."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

from chatmodel_operator.remote_source import parse

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
TIMEOUT_SECONDS = 15.0


class ResolveError(ValueError):
    """The hub refused or could not be reached (or the source is malformed): the message says which."""


def resolve(source: str, endpoint: str | None = None, token: str | None = None) -> str:
    """The commit hash an hf:// source's revision (default main) points at now."""
    remote = parse(source)
    kind, repo, revision = remote.repo_type, remote.repo, remote.revision
    base = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
    quoted = urllib.parse.quote(revision or "main", safe="")
    url = f"{base}/api/{kind}s/{repo}/revision/{quoted}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise ResolveError(f"the hub at {base} answered {e.code}: {_said(e)}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ResolveError(f"the hub at {base} could not be reached: {reason}") from None
    sha = body.get("sha") if isinstance(body, dict) else None
    if not isinstance(sha, str) or not COMMIT.match(sha):
        raise ResolveError(f"the hub at {base} gave no commit for revision {revision or 'main'}")
    return sha


def _said(e: urllib.error.HTTPError) -> str:
    """The hub's own error text: its JSON `error`, its X-Error-Message header, or the status line."""
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        body = {}
    text = body.get("error") if isinstance(body, dict) else None
    return str(text or e.headers.get("X-Error-Message") or e.reason)
