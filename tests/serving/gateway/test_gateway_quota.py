"""Global per-key quotas across two `chatmodel gateway` replicas sharing a real Redis (Debian's
redis-server): a key limited to 30 requests a minute gets exactly 30 through, whichever replica each
request reaches; with Redis killed, the replica set to fail open keeps answering (its own window) and the
one set to fail closed answers 429 + Retry-After; neither answers a 5xx."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chatmodel_serving.launch import ServerProcess, free_port
from tests.serving.gateway.namespace import Emulator, GatewayProcess, Namespace, wait_for
from tests.tools import need_binary

LIMITED, FREE = "key-limited-0123", "key-free-0123"


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def redis() -> Iterator[Redis]:
    binary = need_binary("redis-server")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    wait_for(lambda: _answers(port), what="redis-server answering")
    yield Redis(proc, port)
    proc.kill()
    proc.wait()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _ask(gateway: GatewayProcess, key: str) -> httpx.Response:
    body = {"model": "quota", "prompt": "hi", "max_tokens": 1}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(gateway.url + "/completions", json=body, headers=headers, timeout=60)


def test_a_key_gets_exactly_its_limit_across_replicas_and_redis_loss_gives_no_5xx(
    redis: Redis, emulator: Emulator, namespace: Namespace, pods: list[ServerProcess], folder: Path
) -> None:
    namespace.pods("quota", "v1", [p.port for p in pods[:2]])
    namespace.chatmodel("quota", "v1")
    keys = folder / "gateway-keys"
    keys.write_text(f"{LIMITED} rpm=30\n{FREE}\n")
    common = ["--api-keys-file", str(keys), "--quota-store", redis.uri]
    open_gw = GatewayProcess(emulator.url, [*common, "--quota-store-down", "open"], folder / "gw-open.log")
    closed_gw = GatewayProcess(
        emulator.url, [*common, "--quota-store-down", "closed"], folder / "gw-closed.log"
    )
    with open_gw, closed_gw:
        replicas = [open_gw, closed_gw]
        for g in replicas:
            wait_for(lambda g=g: _ask(g, FREE).status_code == 200, what="the gateway serving quota")
        assert _ask(open_gw, "wrong-key").status_code == 401
        answers = [_ask(replicas[i % 2], LIMITED) for i in range(40)]
        codes = [r.status_code for r in answers]
        assert codes.count(200) == 30 and codes.count(429) == 10, codes
        refused = next(r for r in answers if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.headers["x-ratelimit-limit-requests"] == "30"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"

        redis.proc.kill()
        redis.proc.wait()
        after_open = [_ask(open_gw, LIMITED).status_code for _ in range(5)]
        after_closed = [_ask(closed_gw, LIMITED) for _ in range(5)]
        assert after_open == [200] * 5  # fail open: this replica's own window (empty) decides
        assert {r.status_code for r in after_closed} == {429}
        assert all(int(r.headers["Retry-After"]) > 0 for r in after_closed)
        assert after_closed[0].json()["error"]["code"] == "rate_limit_store_unavailable"
        assert _ask(open_gw, FREE).status_code == 200  # an unlimited key never touches the store
