"""SIGTERM during in-flight requests: readiness drops, new requests are refused, the 4 in flight finish,
and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import openai

from chatmodel_serving.launch import ServerProcess
from tests.serving.streams import stream_story

MODEL = "smollm2-135m"


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    srv = ServerProcess(["--dtype", "float32"], log_path=tmp_path / "server.log").start()
    try:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=120)
        first_chunk = threading.Barrier(5)
        results: list[tuple[str, str | None]] = []

        threads = [
            threading.Thread(target=stream_story, args=(client, i, first_chunk, results)) for i in range(4)
        ]
        for t in threads:
            t.start()
        first_chunk.wait(timeout=120)  # all 4 are streaming
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{srv.base}/ready").status_code == 503
        refused = httpx.post(
            f"{srv.url}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 4
        assert all(reason == "length" and text for text, reason in results)
        assert srv.proc.wait(timeout=60) == 0
    finally:
        srv.stop()
