"""The bearer API-key check (RequestGate runs it before any of the body is read)."""

from __future__ import annotations

import hmac

from .protocol import ApiError
from .quota import ANONYMOUS

CALLER_KEY = "chatmodel.api_key"  # where RequestGate leaves the checked key in the ASGI scope


def check_api_key(api_keys: list[str], header: str) -> str:
    """The caller's API key (the quota bucket) from an Authorization header, or ANONYMOUS when the server
    has no keys."""
    if not api_keys:
        return ANONYMOUS
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every key, always, so timing says nothing about which prefix matched.
    matched = None
    for key in api_keys:
        if hmac.compare_digest(given, key.encode()):
            matched = key
    if matched is None:
        raise ApiError(
            401,
            "missing or invalid API key; send Authorization: Bearer <key>",
            "authentication_error",
            code="invalid_api_key",
        )
    return matched
