"""A real tritonserver (from the nvidia-pytriton wheel) on a generated repository for the built-in model,
in float32 so greedy answers can be compared with the PyTorch runtime's token for token."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from chatmodel_serving.launch import ServerProcess
from tests.tools import missing

if TYPE_CHECKING:
    from chatmodel_serving.triton.server import TritonProcess

MODEL = "smollm2-135m"
UNARY = f"{MODEL}-unary"

if importlib.util.find_spec("pytriton") is None:  # the test modules import its tritonclient: skip them all
    missing("tritonserver (nvidia-pytriton, the triton extra)", "make install")


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    from chatmodel_serving.triton.repo import write_repo
    from chatmodel_serving.triton.server import TritonProcess

    d = tmp_path_factory.mktemp("triton")
    write_repo("builtin://smollm2-135m", d / "repo", dtype="float32")
    with TritonProcess(d / "repo", log_path=d / "triton.log") as t:
        yield t


@pytest.fixture(scope="session")
def pytorch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("pytorch")
    with ServerProcess(["--dtype", "float32"], log_path=d / "server.log") as srv:
        yield srv
