"""16 concurrent streaming clients all get complete, correct answers, and /metrics moves accordingly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from chatmodel_serving.launch import ServerProcess
from tests.serving.helpers import MODEL, metric

N = 16


def test_sixteen_concurrent_streams(client: openai.OpenAI, server: ServerProcess) -> None:
    prompts = [f"Write one sentence about the number {i}." for i in range(N)]
    # The answer each prompt gets alone (float32 greedy): the reference for the batched run.
    alone = [
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=24, temperature=0
        )
        .choices[0]
        .message.content
        for p in prompts[:4]
    ]
    before = httpx.get(f"{server.base}/metrics").text
    running_seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            text = httpx.get(f"{server.base}/metrics").text
            running_seen.append(metric(text, "chatmodel_num_requests_running", model=MODEL))
            done.wait(0.1)

    def stream(p: str) -> tuple[str, str | None, int]:
        parts, reason, used = [], None, 0
        for c in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": p}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
                reason = c.choices[0].finish_reason or reason
            if c.usage:
                used = c.usage.completion_tokens
        return "".join(parts), reason, used

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(stream, prompts))
    done.set()
    watcher.join()
    after = httpx.get(f"{server.base}/metrics").text

    assert all(text and reason in ("stop", "length") for text, reason, _ in results)
    assert [r[0] for r in results[:4]] == alone
    assert max(running_seen) >= 2, "requests must run batched together"
    generated = sum(r[2] for r in results)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("chatmodel_generation_tokens_total", model=MODEL) == generated
    assert delta("chatmodel_time_to_first_token_seconds_count", model=MODEL) == N
    assert delta("chatmodel_e2e_request_latency_seconds_count", model=MODEL) == N
    finished = sum(
        delta("chatmodel_request_success_total", model=MODEL, finished_reason=r) for r in ("stop", "length")
    )
    assert finished == N
    assert delta("chatmodel_prompt_tokens_total", model=MODEL) > N * 10
    assert metric(after, "chatmodel_num_requests_running", model=MODEL) == 0
