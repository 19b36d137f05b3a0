"""The operator image has no torch: importing and registering the operator must not pull it in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "transformers", "chatmodel_serving")

CODE = """
import sys
from chatmodel_operator.config import Config
from chatmodel_operator.main import build_registry
import chatmodel_operator.render, chatmodel_operator.crd  # noqa
build_registry(Config())
bad = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
print(",".join(bad))
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_operator_never_imports_torch_or_the_runtime() -> None:
    proc = run(CODE.format(forbidden=set(FORBIDDEN)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported: {proc.stdout}"


def test_the_check_itself_sees_torch() -> None:
    # Guard against a check that can never fail: with torch imported, it is reported.
    proc = run("import torch\n" + CODE.format(forbidden=set(FORBIDDEN)))
    assert "torch" in proc.stdout, proc.stderr
