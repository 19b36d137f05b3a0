"""The PromQL the operator emits (KEDA's load signal, the canary live gate) against a real Prometheus
scraping two real `chatmodel serve` processes, one per version, under load. Prometheus attaches the labels
Kubernetes service discovery would (namespace, chatmodel, version), as docs/autoscaling.md configures it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from chatmodel_operator import prometheus as operator_prometheus
from chatmodel_operator import promql
from chatmodel_operator.rollout import live_gate_failure
from chatmodel_operator.spec import LiveGate
from chatmodel_serving.api.metrics import LATENCY_BUCKETS
from chatmodel_serving.launch import ServerProcess
from tests.operator.operator_prom import SCRAPE_SECONDS, prometheus, query

NS, NAME, MODEL, RUNTIME = "team", "bot", "smollm2-135m", "pytorch"
BATCH = 2  # --max-batch-size: with more concurrent requests than this, the rest wait
WINDOW = 60


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    d = tmp_path_factory.mktemp("promql")
    args = ["--dtype", "float32", "--max-batch-size", str(BATCH), "--default-max-tokens", "16"]
    # One compute thread each: two servers share the machine's cores instead of fighting over them.
    env = {"OMP_NUM_THREADS": "1"}
    procs = {v: ServerProcess(args, log_path=d / f"{v}.log", env=env) for v in ("v1", "v2")}
    with ThreadPoolExecutor(2) as pool:  # both load the model at once
        list(pool.map(lambda p: p.start(), procs.values()))
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def client(srv: ServerProcess) -> openai.OpenAI:
    # A generous timeout: on a shared 2-core machine under load a short answer has taken minutes.
    return openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=600)


def ask(srv: ServerProcess, max_tokens: int = 4) -> float:
    """One chat request that generates exactly max_tokens; its latency in seconds."""
    start = time.monotonic()
    client(srv).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count slowly."}],
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return time.monotonic() - start


def _quietly(fn: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


def wait_scrapes(n: int = 3) -> None:
    time.sleep(n * SCRAPE_SECONDS + 0.5)


def bucket_bounds(low: float, high: float) -> tuple[float, float]:
    """The histogram's resolution around [low, high]: from the bucket bound below `low` to the one above
    `high` (client and server clocks differ by the HTTP hop, which can cross a bound)."""
    bounds = (0.0, *LATENCY_BUCKETS, float("inf"))
    return max(b for b in bounds if b <= low), min(b for b in bounds if b >= high)


def test_operator_promql_on_two_real_servers(servers: dict[str, ServerProcess], tmp_path: Path) -> None:
    v1, v2 = servers["v1"], servers["v2"]
    targets = [
        (f"127.0.0.1:{srv.port}", {"namespace": NS, "chatmodel": NAME, "version": version})
        for version, srv in servers.items()
    ]
    with prometheus(tmp_path, targets) as url:
        # A first request creates each server's API series; counters seen from 1 on count every later one.
        ask(v1), ask(v2)
        wait_scrapes()

        # Load on v1: 3x its batch size in flight, so requests run and wait; v2 stays idle.
        seen = {"running": 0.0, "waiting": 0.0, "v2_running": 0.0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.3):
                run = query(url, promql.load(RUNTIME, "requestsRunning", NS, NAME, "v1")) or 0.0
                wait = query(url, promql.load(RUNTIME, "requestsWaiting", NS, NAME, "v1")) or 0.0
                idle = query(url, promql.load(RUNTIME, "requestsRunning", NS, NAME, "v2")) or 0.0
                seen["running"], seen["waiting"] = max(seen["running"], run), max(seen["waiting"], wait)
                seen["v2_running"] = max(seen["v2_running"], idle)

        watcher = threading.Thread(target=watch)
        watcher.start()
        n_load = 3 * BATCH
        try:
            with ThreadPoolExecutor(n_load) as pool:
                # Long enough that the queue outlasts a few scrapes on a fast machine (with 8 tokens it
                # drained between two scrapes, and no waiting request was ever seen).
                latencies = list(pool.map(lambda _: ask(v1, 96), range(n_load)))
            wait_scrapes()
        finally:
            stop.set()
            watcher.join()

        # The KEDA signal: the batch was full and the rest waited, on v1 only.
        assert seen["running"] == BATCH
        assert 1 <= seen["waiting"] <= n_load  # all may queue for a moment before a step admits them
        assert seen["v2_running"] == 0

        # The live gate's figures for v1: every request counted, none failed, p95 in the right bucket.
        # increase() extrapolates to the window's edges (seen here: 8.05 for 6 requests, and 4.4 while a
        # loaded Prometheus had not yet scraped the last increments): wait a few scrapes for it to settle;
        # a lost or doubled count would stay outside this band.
        counted = None
        for _ in range(10):
            counted = query(url, promql.requests_in_window(RUNTIME, NS, NAME, "v1", WINDOW))
            if counted is not None and counted >= n_load * 0.8:
                break
            wait_scrapes(1)
        assert counted is not None and n_load * 0.8 <= counted <= n_load * 1.5
        assert query(url, promql.error_rate(RUNTIME, NS, NAME, "v1", WINDOW)) == 0.0
        p95 = query(url, promql.p95_latency(RUNTIME, NS, NAME, "v1", WINDOW))
        lo, hi = bucket_bounds(min(latencies) * 0.8, max(latencies))
        assert p95 is not None and lo <= p95 <= hi, (p95, latencies)

        # v2 drains (SIGTERM) while a long request is in flight: new requests get 503, in two bursts
        # a few scrapes apart (a counter series is only counted from its first scrape on).
        # The long request outlasts the test (the fixture's second SIGTERM ends it): a daemon thread.
        threading.Thread(target=lambda: _quietly(ask, v2, 2000), daemon=True).start()
        time.sleep(1.0)
        assert v2.proc is not None
        v2.proc.send_signal(signal.SIGTERM)
        for _burst in range(2):
            for _ in range(4):
                with pytest.raises(openai.APIStatusError) as e:
                    ask(v2)
                assert e.value.status_code == 503
            wait_scrapes(2)
        errors = query(url, promql.error_rate(RUNTIME, NS, NAME, "v2", WINDOW))
        figures = asyncio.run(operator_prometheus.live_figures(url, RUNTIME, NS, NAME, "v2", WINDOW))
        assert errors is not None and 0.2 <= errors <= 1.0, errors
        assert figures.error_rate == errors
        gate = LiveGate(max_error_rate=0.05)
        why = live_gate_failure(gate, figures)
        assert why is not None and "maxErrorRate 0.05" in why
        healthy = asyncio.run(operator_prometheus.live_figures(url, RUNTIME, NS, NAME, "v1", WINDOW))
        assert healthy.requests > 0 and live_gate_failure(gate, healthy) is None


def test_vllm_queries_use_its_own_names_and_labels() -> None:
    q = promql.error_rate("vllm", NS, NAME, "v9", 300)
    assert q == (
        '(sum(rate(http_requests_total{namespace="team",chatmodel="bot",version="v9",handler=~"/v1/.*",'
        'status="5xx"}[300s])) or vector(0)) / sum(rate(http_requests_total{namespace="team",chatmodel="bot",'
        'version="v9",handler=~"/v1/.*"}[300s]))'
    )
    assert "vllm:e2e_request_latency_seconds_bucket" in promql.p95_latency("vllm", NS, NAME, "v9", 300)
    assert promql.load("vllm", "kvCacheUsage", NS, NAME, "v9") == (
        'sum(vllm:kv_cache_usage_perc{namespace="team",chatmodel="bot",version="v9"}) * 100'
    )
