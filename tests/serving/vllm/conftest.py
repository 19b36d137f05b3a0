"""Say at the top of the run when the real vLLM tests are skipped, so a quick local run cannot hide it."""

from __future__ import annotations

import os

import pytest


def pytest_report_header(config: pytest.Config) -> str | None:
    if os.environ.get("CHATMODEL_SKIP_VLLM") == "1":
        if os.environ.get("CHATMODEL_STRICT") == "1":
            return "CHATMODEL_SKIP_VLLM=1 ignored under CHATMODEL_STRICT=1: the real vLLM tests run"
        return "CHATMODEL_SKIP_VLLM=1: the real vLLM server tests (tests/serving/vllm) are SKIPPED"
    return None
