"""The entry points load nothing heavy until they run: `chatmodel` and `chatmodel serve` import torch only
inside the functions that load a model. That is a fact of run time; which modules may import what at
all (the engine's plain types, the API's protocol and metrics: no torch) is the import contracts'
business (.importlinter, `make lint`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.tools import ROOT


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(','.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {"PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'serving'}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.strip().split(","))


@pytest.mark.parametrize(
    "module",
    ["chatmodel_serving.cli", "chatmodel_serving.cli.serve"],
)
def test_no_torch(module: str) -> None:
    assert not imported_after(module) & {"torch", "transformers"}


def test_the_check_itself_sees_torch() -> None:
    assert "torch" in imported_after("chatmodel_serving.engine.core")
