"""The gateway's own Prometheus metrics (the pods behind it keep theirs)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "chatmodel_gateway_"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            PREFIX + "requests", "Requests answered, by model, version and HTTP status.",
            ["model", "version", "code"], registry=r,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            PREFIX + "upstream_headers_seconds", "From forwarding a request to its pod's response headers.",
            ["model"], registry=r, buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )  # fmt: skip
        self.held = Gauge(
            PREFIX + "held_requests", "Requests waiting for a version to start from zero.", registry=r
        )
        self.cold_starts = Counter(
            PREFIX + "cold_starts", "Scale-ups from zero asked for, by outcome (ready / timeout / refused).",
            ["model", "version", "outcome"], registry=r,
        )  # fmt: skip
        self.cold_start_seconds = Histogram(
            PREFIX + "cold_start_seconds", "From a request finding no ready pod to its first ready pod.",
            ["model"], registry=r, buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
        )  # fmt: skip
        self.rate_limited = Counter(
            PREFIX + "rate_limited", "Requests refused by a quota, by limit (requests / tokens).",
            ["kind"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            PREFIX + "upstream_retries", "Requests sent to another pod after one refused the connection.",
            registry=r,
        )  # fmt: skip
