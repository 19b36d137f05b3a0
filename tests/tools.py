"""Tests drive real external tools (promtool, prometheus, chromium, the vLLM venv). Locally a missing
tool skips the test with the command that installs it; under `.ci/run` (CHATMODEL_STRICT=1) it fails
instead, so a skip can never pass for a green run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout


def missing(what: str, install: str) -> None:
    """Skip (locally) or fail (CI) because `what` is not available; `install` says how to get it."""
    message = f"{what} is not available: run `{install}`"
    if os.environ.get("CHATMODEL_STRICT") == "1":
        pytest.fail(message)
    pytest.skip(message)


def need_binary(name: str, install: str = "make install-system") -> str:
    """The path of an executable the test needs."""
    path = shutil.which(name)
    if path is None:
        missing(name, install)
    assert path is not None
    return path
