"""A load generator: N concurrent streaming chat requests through the official openai client.

Each stream is one request (greedy, `stream_options.include_usage`); tokens come from `usage`. Per run:
tokens/s (completion tokens ÷ wall time of the whole run), time to first content chunk, inter-token latency
(time between content chunks of one stream), time per output token (a stream's first to last content chunk
÷ its tokens - 1), and whole-request latency.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import openai

from tests.bench.workloads import PROMPTS

__all__ = ["PROMPTS", "Run", "StreamResult", "one_stream", "quantile", "run_streams"]


def quantile(xs: Sequence[float], p: int) -> float:
    """The p-th percentile (1-99) of xs, a single value as itself."""
    return round(statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else xs[0], 4)


@dataclass
class StreamResult:
    tokens: int  # completion tokens, from usage (content chunks when a server reports none)
    ttft: float
    latency: float
    prompt_tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # between consecutive content chunks
    tpot: float | None = None  # (last chunk - first chunk) / (tokens - 1)


@dataclass
class Run:
    streams: int
    tokens: int
    seconds: float
    ttfts: list[float]
    latencies: list[float]
    itls: list[float] = field(default_factory=list)
    tpots: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    requests: int = 0
    expected_tokens: int | None = None  # requests × max_tokens, when every answer should be that long
    peak_rss_mb: float | None = None  # set by the caller that samples the server

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "streams": self.streams,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "ttft_p50_s": quantile(self.ttfts, 50),
            "ttft_p95_s": quantile(self.ttfts, 95),
            "latency_p50_s": quantile(self.latencies, 50),
            "latency_p95_s": quantile(self.latencies, 95),
        }
        if self.itls:
            out["itl_p50_s"] = quantile(self.itls, 50)
            out["itl_p95_s"] = quantile(self.itls, 95)
        if self.tpots:
            out["tpot_p50_s"] = quantile(self.tpots, 50)
        if self.requests:
            out |= {"requests": self.requests, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens}
        if self.expected_tokens is not None:
            out["expected_tokens"] = self.expected_tokens
        if self.peak_rss_mb is not None:
            out["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        return out


def one_stream(
    client: openai.OpenAI, model: str, prompt: str, max_tokens: int, extra: dict[str, Any] | None = None
) -> StreamResult:
    start = time.monotonic()
    chunk_times: list[float] = []
    tokens, prompt_tokens = 0, 0
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
            chunk_times.append(time.monotonic())
        if chunk.usage:
            tokens, prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    end = time.monotonic()
    tokens = tokens or len(chunk_times)  # a server that does not report usage in streams: a chunk a token
    first = chunk_times[0] if chunk_times else end
    gaps = [b - a for a, b in itertools.pairwise(chunk_times)]
    tpot = (chunk_times[-1] - first) / (tokens - 1) if len(chunk_times) > 1 and tokens > 1 else None
    return StreamResult(tokens, first - start, end - start, prompt_tokens, gaps, tpot)


def run_streams(
    base_url: str,
    model: str | Sequence[str],
    streams: int,
    max_tokens: int = 64,
    rounds: int = 1,
    api_key: str = "none",
    extra: dict[str, Any] | None = None,
    prompts: Sequence[str] | None = None,
    same_length: bool = False,
) -> Run:
    """`streams` requests at once (all arriving together), `rounds` times; tokens from `usage`. `extra`:
    more request fields (e.g. `response_format`), the same in every request. `prompts`: the i-th request
    sends prompts[i % len] (default PROMPTS). `model`: one name, or several (the i-th request names
    model[i % len]: streams spread over LoRA adapters). `same_length`: every answer is meant to be
    max_tokens long (EOS ignored), so the run records the tokens expected beside those counted."""
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=1800)
    pool_of = prompts or PROMPTS
    models = [model] if isinstance(model, str) else list(model)
    todo = [(models[i % len(models)], pool_of[i % len(pool_of)]) for i in range(streams * rounds)]
    start = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda mp: one_stream(client, mp[0], mp[1], max_tokens, extra), todo))
    seconds = time.monotonic() - start
    return Run(
        streams,
        sum(r.tokens for r in results),
        seconds,
        [r.ttft for r in results],
        [r.latency for r in results],
        itls=[g for r in results for g in r.gaps],
        tpots=[r.tpot for r in results if r.tpot is not None],
        prompt_tokens=sum(r.prompt_tokens for r in results),
        requests=len(results),
        expected_tokens=len(results) * max_tokens if same_length else None,
    )
