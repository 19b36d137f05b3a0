"""A full queue answers 429 with Retry-After and the server stays ready; logs are JSON with request ids
and never contain prompts; `chatmodel chat` talks to the server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from chatmodel_serving.launch import ServerProcess
from tests.serving.helpers import API_KEY, MODEL


def test_overload_gives_only_200_or_429_with_retry_after_and_stays_ready(tmp_path: Path) -> None:
    """40 requests at once against a queue of 4: every request gets an answer or a 429 with Retry-After,
    never a 5xx or a dropped connection, and /ready stays 200 throughout."""
    args = ["--max-waiting-requests", "4", "--max-batch-size", "2"]
    with ServerProcess(args, log_path=tmp_path / "server.log") as srv:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count to twenty."}],
            "max_tokens": 8,
            "temperature": 0,
        }

        def post(_: int) -> httpx.Response:
            return httpx.post(f"{srv.url}/chat/completions", json=body, timeout=600)

        with ThreadPoolExecutor(41) as pool:
            pending = [pool.submit(post, i) for i in range(40)]
            readiness = []
            while not all(f.done() for f in pending):  # probe readiness while the queue is full
                readiness.append(httpx.get(f"{srv.base}/ready", timeout=30).status_code)
                time.sleep(0.2)
            responses = [f.result() for f in pending]
        codes = sorted(r.status_code for r in responses)
        print(f"overload: 40 requests, queue 4: {codes.count(200)} x 200, {codes.count(429)} x 429")
        assert set(codes) == {200, 429}, codes
        assert codes.count(200) >= 4  # at least what fits the queue
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full"
            else:
                assert r.json()["choices"][0]["message"]["content"]
        assert readiness and set(readiness) == {200}, readiness
        assert httpx.get(f"{srv.base}/ready").status_code == 200


def test_logs_are_json_with_request_ids_and_no_prompts(server: ServerProcess, client: openai.OpenAI) -> None:
    secret = "my-private-question-7781"
    r = httpx.post(
        f"{server.url}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "req-abc-123"},
        json={"model": MODEL, "messages": [{"role": "user", "content": secret}], "max_tokens": 4},
    )
    assert r.headers["x-request-id"] == "req-abc-123"
    assert server.log_path is not None
    # The access line is written once the response has gone out, so the client can see the answer first.
    deadline, found = time.monotonic() + 30, False
    while not found and time.monotonic() < deadline:
        lines = [json.loads(ln) for ln in server.log_path.read_text().splitlines() if ln.startswith("{")]
        found = any(ln.get("request_id") == "req-abc-123" and ln.get("status") == 200 for ln in lines)
        time.sleep(0 if found else 0.1)
    assert found, "no log line with the request id and status 200"
    assert secret not in server.log_path.read_text()


def test_chat_command(server: ServerProcess) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatmodel_serving.cli",
            "chat",
            "--url",
            server.url,
            "--api-key",
            API_KEY,
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "What is the capital of France?",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
