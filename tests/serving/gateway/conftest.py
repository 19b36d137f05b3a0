"""Shared by the gateway tests: one emulated namespace, tiny-model serving pods, and a gateway over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmodel_serving.launch import ServerProcess
from tests.fuzz.tiny_model import write_tiny_model
from tests.serving.gateway.namespace import Emulator, GatewayProcess, Namespace, start_servers

PODS = 4  # three for the stable version, one for a canary
# Each pod serves every model the tests name (a real pod serves its ChatModel's name; the tiny model is
# loaded once per name, which costs little).
MODELS = ("chat", "canary", "zero", "quota")


@pytest.fixture(scope="package")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="package")
def emulator(folder: Path) -> Iterator[Emulator]:
    with Emulator(folder / "kmock.log") as e:
        yield e


@pytest.fixture(scope="package")
def namespace(emulator: Emulator) -> Namespace:
    return Namespace(emulator.url)


@pytest.fixture(scope="package")
def tiny(folder: Path) -> Path:
    return write_tiny_model(folder / "tiny", context=2048)


@pytest.fixture(scope="package")
def pods(folder: Path, tiny: Path) -> Iterator[list[ServerProcess]]:
    args = ["--dtype", "float32"]
    for name in MODELS:
        args += ["--model", str(tiny), "--served-model-name", name]
    servers = start_servers(args, PODS, folder)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="package")
def gateway(folder: Path, emulator: Emulator) -> Iterator[GatewayProcess]:
    with GatewayProcess(emulator.url, ["--cold-start-timeout", "120"], folder / "gateway.log") as g:
        yield g
