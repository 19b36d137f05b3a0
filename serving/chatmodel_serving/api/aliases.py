"""Model-name aliases (an --adapters-file's "aliases"): a name that stands for several served models, one of
them chosen per request by weight, as OpenAI's alias names a snapshot. Shared by our server (state.py) and
the vLLM sidecar (vllm_sidecar.py)."""

from __future__ import annotations

import random
from collections.abc import Container

from .protocol import ApiError


def pick_target(targets: dict[str, int], loaded: Container[str]) -> str | None:
    """One of an alias's loaded targets at random by weight; None when none is loaded."""
    live = [(t, w) for t, w in targets.items() if w > 0 and t in loaded]
    if not live:
        return None
    return random.choices([t for t, _ in live], weights=[w for _, w in live])[0]


def no_target(alias: str) -> ApiError:
    return ApiError(
        404, f"model {alias!r}: none of its versions is loaded on this server yet", param="model",
        code="model_not_found",
    )  # fmt: skip
