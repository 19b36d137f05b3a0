"""PromQL the operator emits, as pure functions: the canary live gate and the autoscaling load signal.

Series are told apart by the labels Prometheus attaches at scrape time (docs/autoscaling.md gives the
scrape config): `namespace`, `chatmodel` (pod label chatmodel.dev/name) and `version` (chatmodel.dev/version).
Metric names come from signals.py only.
"""

from __future__ import annotations

from chatmodel_operator.signals import signals

# The OpenAI routes: probes and /metrics scrapes would dilute the error rate.
API_ROUTES = "/v1/.*"
HTTP_REQUESTS = "chatmodel_http_requests_total"
E2E_LATENCY_BUCKET = "chatmodel_e2e_request_latency_seconds_bucket"


def selector(namespace: str, name: str, version: str | None = None, **extra: str) -> str:
    """A label matcher list; values of `extra` are written as given (so `code='=~"5.."'` works)."""
    parts = [f'namespace="{namespace}"', f'chatmodel="{name}"']
    if version is not None:
        parts.append(f'version="{version}"')
    parts += [f"{k}{v}" for k, v in extra.items()]
    return "{" + ",".join(parts) + "}"


def request_rate(namespace: str, name: str, version: str, window_s: int) -> str:
    sel = selector(namespace, name, version, route=f'=~"{API_ROUTES}"')
    return f"sum(rate({HTTP_REQUESTS}{sel}[{window_s}s]))"


def requests_in_window(namespace: str, name: str, version: str, window_s: int) -> str:
    sel = selector(namespace, name, version, route=f'=~"{API_ROUTES}"')
    return f"sum(increase({HTTP_REQUESTS}{sel}[{window_s}s]))"


def error_rate(namespace: str, name: str, version: str, window_s: int) -> str:
    """Share of API answers with a 5xx code (no data when there was no traffic)."""
    errors = selector(namespace, name, version, route=f'=~"{API_ROUTES}"', code='=~"5.."')
    # `or vector(0)`: no 5xx series at all means zero errors, not "unknown".
    return (
        f"(sum(rate({HTTP_REQUESTS}{errors}[{window_s}s])) or vector(0)) / "
        f"{request_rate(namespace, name, version, window_s)}"
    )


def p95_latency(namespace: str, name: str, version: str, window_s: int) -> str:
    sel = selector(namespace, name, version)
    return f"histogram_quantile(0.95, sum by (le) (rate({E2E_LATENCY_BUCKET}{sel}[{window_s}s])))"


def load(runtime: str, metric: str, namespace: str, name: str, version: str, agg: str = "sum") -> str:
    """The autoscaling signal over a version's pods: `sum` for KEDA (AverageValue divides it by the replica
    count), `avg` per pod. kvCacheUsage is exported as 0-1 and targeted in percent, hence the factor."""
    series = signals(runtime).for_metric(metric)
    scale = " * 100" if metric == "kvCacheUsage" else ""
    return f"{agg}({series}{selector(namespace, name, version)}){scale}"
