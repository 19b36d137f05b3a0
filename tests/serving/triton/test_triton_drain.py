"""SIGTERM to the whole Triton runtime (tritonserver and the OpenAI front together, as the kubelet does when
a pod is deleted) while 4 streams are in flight: readiness drops at once on both, new requests are refused,
the 4 streams finish whole, and both processes exit 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import openai

from chatmodel_serving.triton.server import triton_front
from tests.serving.streams import stream_story

MODEL = "smollm2-135m"
STREAMS = 4


def test_sigterm_to_the_triton_runtime_finishes_streams_and_drops_readiness_first(tmp_path: Path) -> None:
    with triton_front(tmp_path, ["--dtype", "float32"], dtype="float32") as (triton, front):
        client = openai.OpenAI(base_url=front.url, api_key="none", max_retries=0, timeout=120)
        started = threading.Barrier(STREAMS + 1)
        results: list[tuple[str, str | None]] = []
        threads = [
            threading.Thread(target=stream_story, args=(client, i, started, results)) for i in range(STREAMS)
        ]
        for t in threads:
            t.start()
        started.wait(timeout=120)  # every stream has its first token
        assert triton.proc is not None and front.proc is not None
        triton.proc.send_signal(signal.SIGTERM)
        front.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{front.base}/ready").status_code == 503
        refused = httpx.post(
            f"{front.url}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        for t in threads:
            t.join(timeout=120)
        assert len(results) == STREAMS
        assert all(reason == "length" and text for text, reason in results), results
        assert front.proc.wait(timeout=60) == 0
        assert triton.proc.wait(timeout=60) == 0
