"""Suite-wide: which tests are `slow` (`make test-fast` runs the others: `-m "not slow"`).

Slow = starts something real beyond the test process (a runtime server, tritonserver, vLLM, Prometheus, a
Kubernetes control plane, a browser, podman, the operator as a process), trains a model, or draws hundreds
of examples. A folder listed in SLOW_DIRS decides for the tests under it (the deepest listed folder
wins); a file listed in FILES decides for itself. tests/serving/train is listed as not slow: it marks its
own slow modules and tests (`pytestmark`, `@pytest.mark.slow`), since its data and planning
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
    "serving": True,  # the API tests against real servers, tests/serving/{triton,vllm,ui}
    "serving/api": False,  # request and response models, the tool parser, figures: no server
    "serving/cli": False,  # the command line's checks fail before a model loads
    "serving/engine": False,  # the engine's parts, and the engine in process on the shipped model
    "serving/train": False,  # marks its own slow tests
}
# Files whose speed differs from their folder's (relative to tests/).
FILES = {
    "e2e/test_kind_script.py": False,  # parses the script and runs it without its tools: it skips at once
    "operator/test_operator_chaos.py": True,  # the operator process killed and restarted, 20 rounds
    "operator/test_operator_promql.py": True,  # Prometheus scraping two real `chatmodel serve` processes
    "operator/test_operator_properties.py": True,  # 300 generated specs per test, each rendered and validated
}


def is_slow(path: Path) -> bool:
    if not path.is_relative_to(HERE):
        return False
    rel = path.relative_to(HERE)
    if rel.as_posix() in FILES:
        return FILES[rel.as_posix()]
    folders = [p.as_posix() for p in rel.parents if p.parts]  # a/b/test_x.py: "a/b", then "a"
    return next((SLOW_DIRS[f] for f in folders if f in SLOW_DIRS), False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item.path):
            item.add_marker(pytest.mark.slow)
