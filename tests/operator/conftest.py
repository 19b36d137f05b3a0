"""Make the operator package importable from a plain checkout (`make install` installs it editable)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "operator") not in sys.path:
    sys.path.insert(0, str(ROOT / "operator"))

from operator_kmock import Cluster, declare  # noqa: E402  (needs the path above)


@pytest.fixture
def cluster(kmock: Any) -> Cluster:
    """kmock with every resource the operator touches declared, and the tests' helpers over it."""
    declare(kmock)
    return Cluster(kmock)
