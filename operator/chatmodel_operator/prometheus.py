"""Reads the live-gate figures from Prometheus' HTTP API (aiohttp: kopf already depends on it)."""

from __future__ import annotations

import logging
import math

import aiohttp

from chatmodel_operator import promql
from chatmodel_operator.rollout import LiveFigures

log = logging.getLogger("chatmodel.prometheus")
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def query(base_url: str, expr: str) -> float | None:
    """The value of an instant query that returns one sample; None for no data (or NaN: 0/0)."""
    url = f"{base_url.rstrip('/')}/api/v1/query"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(url, params={"query": expr}) as resp,
    ):
        body = await resp.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


async def live_figures(
    base_url: str, runtime: str, namespace: str, name: str, version: str, window_s: int
) -> LiveFigures:
    """Requests, error rate and p95 latency of one version's pods over the window."""
    at = (runtime, namespace, name, version, window_s)
    return LiveFigures(
        requests=await query(base_url, promql.requests_in_window(*at)) or 0.0,
        error_rate=await query(base_url, promql.error_rate(*at)),
        p95_latency_seconds=await query(base_url, promql.p95_latency(*at)),
    )
