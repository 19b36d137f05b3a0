"""GET /v1/versions' figures without a model: the p95 from real Prometheus histogram buckets agrees with
PromQL's histogram_quantile, tokens/s and requests come from the same series the API records, and a training
record is read from metrics.json's history as the trainer writes it."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from chatmodel_serving.api.metrics import TTFT_BUCKETS, ServingMetrics
from chatmodel_serving.api.records import TrainingRecord
from chatmodel_serving.api.versions import histogram_quantile, series_samples, series_total

METRICS = {
    "eval_loss_before": 2.61,
    "eval_loss": 1.92,
    "eval_history": [
        {"step": 4, "epoch": 1.0, "eval_loss": 2.1},
        {"step": 8, "epoch": 2.0, "eval_loss": 1.92},
    ],
    "best_step": 8,
    "steps": 8,
    "stopped_early": False,
    "method": "full",
    "base_model": "builtin://smollm2-135m",
}


def test_quantile_interpolates_inside_a_bucket_as_promql_does() -> None:
    # 10 observations: 5 at or below 0.1, 10 at or below 0.5: p95 is 95% of the way from 0.1 to 0.5 within
    # the second bucket's share (rank 9.5 of 10: (9.5 - 5) / 5 of the bucket).
    assert histogram_quantile(0.95, {0.1: 5, 0.5: 10, math.inf: 10}) == pytest.approx(0.1 + 0.4 * 0.9)
    assert histogram_quantile(0.5, {0.1: 4, 0.5: 4, 1.0: 8, math.inf: 8}) == pytest.approx(0.1)
    assert histogram_quantile(0.95, {0.1: 0, math.inf: 3}) == 0.1  # in +Inf: the highest finite bound
    assert histogram_quantile(0.95, {0.1: 0, math.inf: 0}) is None


def test_live_figures_read_the_apis_own_series() -> None:
    m = ServingMetrics(dict)
    for seconds in (0.03, 0.04, 0.2, 0.3):
        m.ttft.labels("a").observe(seconds)
    m.e2e.labels("a").observe(1.57)  # 1.57 s in all, 0.57 s of it before the first tokens
    m.generation_tokens.labels("a").inc(40)
    m.requests.labels("a", "stop").inc(3)
    m.requests.labels("a", "length").inc()
    m.requests.labels("b", "stop").inc(7)
    assert "chatmodel_request_success_total" in generate_latest(m.registry).decode()
    assert (
        series_total(m.requests, {"a"}, "_total") == 4
        and series_total(m.requests, {"a", "b"}, "_total") == 11
    )
    tokens = series_total(m.generation_tokens, {"a"}, "_total")
    busy = series_total(m.e2e, {"a"}, "_sum") - series_total(m.ttft, {"a"}, "_sum")
    assert tokens / busy == pytest.approx(40.0)
    buckets = {float(labels["le"]): value for labels, value in series_samples(m.ttft, {"a"}, "_bucket")}
    assert set(buckets) == {*TTFT_BUCKETS, math.inf}
    p95 = histogram_quantile(0.95, buckets)
    assert p95 is not None and 0.25 < p95 <= 0.5  # the slowest of 4 is in the (0.25, 0.5] bucket


def test_a_training_record_is_the_curve_metrics_json_holds() -> None:
    gate = {
        "passed": False,
        "reason": "eval loss 1.92 does not improve",
        "gate": {"requireImprovement": True},
    }
    record = TrainingRecord.from_files("5be56a11c4", METRICS, gate)
    assert [(p.step, p.eval_loss) for p in record.eval_curve] == [(0, 2.61), (4, 2.1), (8, 1.92)]
    assert record.eval_loss == 1.92 and record.gate is not None and not record.gate.passed
    assert TrainingRecord.from_files("v", METRICS, None).gate is None  # no verdict recorded
