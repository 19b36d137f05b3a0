"""A load generator: N concurrent streaming chat requests through the official openai client."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai

PROMPTS = [f"Write a short story about a robot who finds object number {i} in a garden." for i in range(64)]


@dataclass
class Run:
    streams: int
    tokens: int
    seconds: float
    ttfts: list[float]
    latencies: list[float]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def summary(self) -> dict[str, float]:
        def q(xs: list[float], p: float) -> float:
            return round(statistics.quantiles(xs, n=100)[int(p) - 1] if len(xs) > 1 else xs[0], 3)

        return {
            "streams": self.streams,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "ttft_p50_s": q(self.ttfts, 50),
            "ttft_p95_s": q(self.ttfts, 95),
            "latency_p50_s": q(self.latencies, 50),
            "latency_p95_s": q(self.latencies, 95),
        }


def one_stream(
    client: openai.OpenAI, model: str, prompt: str, max_tokens: int, extra: dict[str, Any] | None = None
) -> tuple[int, float, float]:
    start = time.monotonic()
    first, tokens, chunks = None, 0, 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **(extra or {}),
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            first = first or time.monotonic()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.monotonic()
    # A server that does not report usage in streams: one chunk is one token.
    return tokens or chunks, (first or end) - start, end - start


def run_streams(
    base_url: str,
    model: str,
    streams: int,
    max_tokens: int = 64,
    rounds: int = 1,
    api_key: str = "none",
    extra: dict[str, Any] | None = None,
) -> Run:
    """`streams` requests at once (all arriving together), `rounds` times; tokens from `usage`. `extra`:
    more request fields (e.g. `response_format`), the same in every request."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(streams * rounds)]
    start = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda p: one_stream(client, model, p, max_tokens, extra), prompts))
    seconds = time.monotonic() - start
    return Run(streams, sum(r[0] for r in results), seconds, [r[1] for r in results], [r[2] for r in results])
