"""The one mapping from a serving runtime to the Prometheus names of its load signals.

Autoscaling (HPA / KEDA queries), the gateway's load-balancing signals, the dashboard and the alert rules all
read load through this table, so a runtime's metric names are written down exactly once. Our PyTorch and
Triton runtimes export `chatmodel_*` (label `model`); vLLM exports `vllm:*` (label `model_name`).
"""

from __future__ import annotations

from dataclasses import dataclass

# spec.serving.autoscaling.metric values that read a runtime metric (cpu reads the resource metrics API).
LOAD_SIGNALS = ("requestsWaiting", "requestsRunning", "kvCacheUsage")


@dataclass(frozen=True)
class RuntimeSignals:
    """Metric names a runtime exports, by signal."""

    requests_waiting: str
    requests_running: str
    kv_cache_usage: str
    model_label: str  # the label that carries the served model name
    # What the canary live gate reads: end-to-end latency histogram, and HTTP answers by route and code.
    e2e_latency_bucket: str
    http_requests: str
    api_routes: str  # label matcher selecting OpenAI API answers (not probes or scrapes)
    server_errors: str  # label matcher selecting 5xx answers

    def for_metric(self, metric: str) -> str:
        """The metric name behind a spec.serving.autoscaling.metric value."""
        return {
            "requestsWaiting": self.requests_waiting,
            "requestsRunning": self.requests_running,
            "kvCacheUsage": self.kv_cache_usage,
        }[metric]


_CHATMODEL = RuntimeSignals(
    requests_waiting="chatmodel_num_requests_waiting",
    requests_running="chatmodel_num_requests_running",
    kv_cache_usage="chatmodel_kv_cache_usage_perc",
    model_label="model",
    e2e_latency_bucket="chatmodel_e2e_request_latency_seconds_bucket",
    http_requests="chatmodel_http_requests_total",
    api_routes='route=~"/v1/.*"',
    server_errors='code=~"5.."',
)
_VLLM = RuntimeSignals(
    requests_waiting="vllm:num_requests_waiting",
    requests_running="vllm:num_requests_running",
    kv_cache_usage="vllm:kv_cache_usage_perc",
    model_label="model_name",
    e2e_latency_bucket="vllm:e2e_request_latency_seconds_bucket",
    # vLLM's HTTP metrics come from prometheus-fastapi-instrumentator: handler, and status grouped as 5xx.
    http_requests="http_requests_total",
    api_routes='handler=~"/v1/.*"',
    server_errors='status="5xx"',
)

SIGNALS: dict[str, RuntimeSignals] = {"pytorch": _CHATMODEL, "triton": _CHATMODEL, "vllm": _VLLM}


def signals(runtime: str) -> RuntimeSignals:
    return SIGNALS[runtime]
