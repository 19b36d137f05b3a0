"""Suite-wide: which tests are `slow` (`make test-fast` runs the others: `-m "not slow"`).

Slow = starts something real beyond the test process (a runtime server, tritonserver, vLLM, Prometheus, a
Kubernetes control plane, a browser, podman, the operator as a process), trains a model, or draws hundreds
of examples. Every test under a folder of SLOW_DIRS does one of those, so the folder decides (the deepest
folder listed wins); elsewhere the file does (SLOW_FILES). tests/serving/train is listed as not slow: it
marks its own slow modules and tests (`pytestmark`, `@pytest.mark.slow`), since its data and planning
tests are fast. The operator's kmock tests (the real kopf operator in-process on an emulated API) stay in
the fast set: seconds each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Folders (relative to tests/) and whether every test under them is slow; the deepest listed folder decides.
SLOW_DIRS = {
    "cluster": True,
    "e2e": True,
    "fuzz": True,
    "serving": True,  # the API tests against real servers, tests/serving/triton, tests/serving/vllm
    "serving/train": False,  # marks its own slow tests
    "ui": True,
}
SLOW_FILES = frozenset(
    {
        "operator/test_operator_chaos.py",  # the operator process killed and restarted, 20 rounds
        "operator/test_operator_promql.py",  # Prometheus scraping two real `chatmodel serve` processes
        "operator/test_operator_properties.py",  # 300 generated specs per test, each rendered and validated
    }
)


def is_slow(path: Path) -> bool:
    if not path.is_relative_to(HERE):
        return False
    rel = path.relative_to(HERE)
    if rel.as_posix() in SLOW_FILES:
        return True
    folders = [p.as_posix() for p in rel.parents if p.parts]  # a/b/test_x.py: "a/b", then "a"
    return next((SLOW_DIRS[f] for f in folders if f in SLOW_DIRS), False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item.path):
            item.add_marker(pytest.mark.slow)
