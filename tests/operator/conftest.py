"""The `cluster` fixture: kmock with the operator's resources declared (`make install` installs the
packages editable; pytest's `pythonpath` puts the repository root on sys.path for `tests.*`)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.operator_kmock import Cluster, declare


@pytest.fixture
def cluster(kmock: Any) -> Cluster:
    """kmock with every resource the operator touches declared, and the tests' helpers over it."""
    declare(kmock)
    return Cluster(kmock)
