"""What the API tests share beside their fixtures (tests/serving/conftest.py): the server's key and model
name, which runtimes run, and small readers of what a server answers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

API_KEY = "test-key-0123456789"
MODEL = "smollm2-135m"
RUNTIMES = os.environ.get("CHATMODEL_TEST_RUNTIMES", "pytorch,triton").split(",")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        n, _, rest = series.partition("{")
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if n == name and got == want:
            return float(value)
    return 0.0


class Ask(Protocol):
    """The `ask` fixture: one user message, greedy and short unless `kw` says otherwise."""

    def __call__(self, content: str, **kw: Any) -> ChatCompletion: ...
