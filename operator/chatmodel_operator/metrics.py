"""Operator metrics (prometheus-client), served on Config.metrics_port at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from chatmodel_operator.spec import PHASES

RECONCILE_SECONDS = Histogram(
    "chatmodel_operator_reconcile_duration_seconds",
    "Time spent in one reconcile of a ChatModel.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TIME_TO_READY = Histogram(
    "chatmodel_operator_time_to_ready_seconds",
    "From a ChatModel's creation (or first sight) to its first Ready phase.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
RECONCILE_ERRORS = Counter(
    "chatmodel_operator_reconcile_errors_total", "Reconciles that raised, by exception type.", ["error"]
)
# Counted once per Job, when the operator records its result (the Job keeps the record across restarts).
TRAINING_JOBS = Counter(
    "chatmodel_operator_training_jobs_finished", "Fine-tune Jobs finished, by outcome.", ["outcome"]
)
CHATMODELS = Gauge("chatmodel_operator_chatmodels", "ChatModels by phase.", ["phase"])

for _phase in PHASES:
    CHATMODELS.labels(_phase).set(0)
# Exported at 0 from the start: increase() over a series born at 1 would miss the first failed Job.
for _outcome in ("Succeeded", "Failed"):
    TRAINING_JOBS.labels(_outcome)


class PhaseTracker:
    """Keeps the by-phase gauge equal to the phases last written, one entry per ChatModel."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, key: tuple[str, str], phase: str) -> None:
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            CHATMODELS.labels(old).dec()
        CHATMODELS.labels(phase).inc()
        self._phases[key] = phase

    def drop(self, key: tuple[str, str]) -> None:
        old = self._phases.pop(key, None)
        if old is not None:
            CHATMODELS.labels(old).dec()


def serve(port: int) -> None:
    start_http_server(port)
