"""The calls of tests/serving/same_calls.py on our runtimes (PyTorch and Triton); the vLLM runtime runs the
same ones in tests/serving/vllm/test_vllm_server.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.serving.helpers import MODEL
from tests.serving.same_calls import CALLS


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.__name__)
def test_same_calls(client: openai.OpenAI, call: Callable[[openai.OpenAI, str], Any]) -> None:
    call(client, MODEL)
