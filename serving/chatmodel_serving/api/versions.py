"""GET /v1/versions: what the playground's Versions view draws, read-only, under the API key (RequestGate
checks every /v1/ path). One entry per served version, however many names it answers to (`chatmodel run`
serves a version as NAME and NAME-VERSION): its training record (eval loss per evaluation, the final one,
the gate's verdict) as the trainer and `chatmodel run` left it in the model folder, and the live figures of
this process's own Prometheus series (api/metrics.py) summed over its names."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import FastAPI
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from .protocol import ResponseModel
from .records import TrainingRecord
from .state import ServedModel, ServerState

ROUTE = "/v1/versions"
P95 = 0.95


class LiveFigures(BaseModel):
    """Since this process started, from its Prometheus series."""

    requests: int  # finished requests (chatmodel_request_success_total), every finish reason
    generation_tokens: int
    tokens_per_second: float | None  # generated tokens over the time spent after the first token
    ttft_p95_seconds: float | None  # as PromQL's histogram_quantile(0.95, ...) over the buckets


class VersionEntry(BaseModel):
    names: list[str]  # the served model names that answer with this version
    source: str
    training: TrainingRecord | None  # None: a plain model, no training record
    live: LiveFigures


class VersionList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[VersionEntry]


def series_samples(
    metric: MetricWrapperBase, names: set[str], suffix: str
) -> Iterable[tuple[dict[str, str], float]]:
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix) and s.labels.get("model") in names:
                yield s.labels, s.value


def series_total(metric: MetricWrapperBase, names: set[str], suffix: str) -> float:
    return sum(value for _, value in series_samples(metric, names, suffix))


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket counts (upper bound -> count); None when empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):  # in the +Inf bucket: the highest finite bound, as Prometheus says
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below) if count > below else upper
        lower, below = upper, count
    return lower


def live_figures(state: ServerState, names: set[str]) -> LiveFigures:
    m = state.metrics
    buckets: dict[float, float] = {}
    for labels, value in series_samples(m.ttft, names, "_bucket"):
        le = float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    tokens = series_total(m.generation_tokens, names, "_total")
    busy = series_total(m.e2e, names, "_sum") - series_total(m.ttft, names, "_sum")
    return LiveFigures(
        requests=int(series_total(m.requests, names, "_total")),
        generation_tokens=int(tokens),
        tokens_per_second=tokens / busy if tokens and busy > 0 else None,
        ttft_p95_seconds=histogram_quantile(P95, buckets),
    )


def versions(state: ServerState) -> VersionList:
    """Served names grouped by the engine behind them: one entry per version, in the order first served."""
    groups: dict[tuple[int, str | None], list[ServedModel]] = {}
    for served in state.models.values():  # an adapter shares its base's engine but is its own version
        groups.setdefault((id(served.engine), served.adapter), []).append(served)
    data = []
    for group in groups.values():
        first = group[0]
        names = [s.name for s in group]
        data.append(
            VersionEntry(
                names=names,
                source=first.root,
                training=first.training,
                live=live_figures(state, set(names)),
            )
        )
    return VersionList(data=data)


def add_versions(app: FastAPI, state: ServerState) -> None:
    @app.get(ROUTE, response_model=VersionList, summary="Served versions: training record and live figures")
    async def list_versions() -> dict[str, Any]:
        return versions(state).body()
