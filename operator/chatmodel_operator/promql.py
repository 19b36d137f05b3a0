"""PromQL the operator emits, as pure functions: the canary live gate and the autoscaling load signal.

Series are told apart by the labels Prometheus attaches at scrape time (docs/autoscaling.md gives the
scrape config): `namespace`, `chatmodel` (pod label chatmodel.dev/name) and `version` (chatmodel.dev/version).
Metric names and the runtime's own label matchers come from signals.py only.
"""

from __future__ import annotations

from chatmodel_operator.signals import signals


def selector(namespace: str, name: str, version: str | None = None, *matchers: str) -> str:
    """A label matcher list: the ChatModel's scrape labels, then any runtime matchers (e.g. code=~"5..")."""
    parts = [f'namespace="{namespace}"', f'chatmodel="{name}"']
    if version is not None:
        parts.append(f'version="{version}"')
    return "{" + ",".join([*parts, *matchers]) + "}"


def request_rate(runtime: str, namespace: str, name: str, version: str, window_s: int) -> str:
    s = signals(runtime)
    return f"sum(rate({s.http_requests}{selector(namespace, name, version, s.api_routes)}[{window_s}s]))"


def requests_in_window(runtime: str, namespace: str, name: str, version: str, window_s: int) -> str:
    s = signals(runtime)
    return f"sum(increase({s.http_requests}{selector(namespace, name, version, s.api_routes)}[{window_s}s]))"


def error_rate(runtime: str, namespace: str, name: str, version: str, window_s: int) -> str:
    """Share of API answers with a 5xx code (no data when there was no traffic)."""
    s = signals(runtime)
    errors = selector(namespace, name, version, s.api_routes, s.server_errors)
    # `or vector(0)`: no 5xx series at all means zero errors, not "unknown".
    return (
        f"(sum(rate({s.http_requests}{errors}[{window_s}s])) or vector(0)) / "
        f"{request_rate(runtime, namespace, name, version, window_s)}"
    )


def p95_latency(runtime: str, namespace: str, name: str, version: str, window_s: int) -> str:
    bucket = signals(runtime).e2e_latency_bucket
    sel = selector(namespace, name, version)
    return f"histogram_quantile(0.95, sum by (le) (rate({bucket}{sel}[{window_s}s])))"


def load(runtime: str, metric: str, namespace: str, name: str, version: str, agg: str = "sum") -> str:
    """The autoscaling signal over a version's pods: `sum` for KEDA (AverageValue divides it by the replica
    count), `avg` per pod. kvCacheUsage is exported as 0-1 and targeted in percent, hence the factor."""
    series = signals(runtime).for_metric(metric)
    scale = " * 100" if metric == "kvCacheUsage" else ""
    return f"{agg}({series}{selector(namespace, name, version)}){scale}"
