"""The serving package's layers: the engine's plain types and the API's metrics import no torch (the
Triton front and the chart's tests read them), and the entry points load nothing heavy until they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(','.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {"PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'serving'}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.strip().split(","))


@pytest.mark.parametrize(
    "module",
    [
        "chatmodel_serving.engine.types",
        "chatmodel_serving.engine.scheduler",
        "chatmodel_serving.engine.sequence",
        "chatmodel_serving.api.metrics",
        "chatmodel_serving.api.protocol",
        "chatmodel_serving.cli",
        "chatmodel_serving.cli.serve",
        "chatmodel_operator.runtime_args",
    ],
)
def test_no_torch(module: str) -> None:
    assert not imported_after(module) & {"torch", "transformers"}


def test_the_check_itself_sees_torch() -> None:
    assert "torch" in imported_after("chatmodel_serving.engine.core")
