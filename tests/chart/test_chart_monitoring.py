"""The chart's alert rules and Grafana dashboard: promtool accepts the rules and proves the alerts fire on
synthetic series, and every metric name they query is one our operator, our runtime (or vLLM, through
signals.py) exports; the only exceptions are kube-state-metrics names, listed in EXTERNAL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from chatmodel_operator import metrics as operator_metrics  # noqa: F401 (registers the operator's metrics)
from chatmodel_operator.signals import SIGNALS
from tests.chart.chart_render import render_objects
from tests.tools import need_binary

HERE = Path(__file__).resolve().parent
MONITORING = {"prometheusRule": {"enabled": True}}
# kube-state-metrics: replicas per ChatModel version on the dashboard (never in alerts).
EXTERNAL = {"kube_deployment_status_replicas_ready", "kube_deployment_labels"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def rule_groups() -> list[dict[str, Any]]:
    (rule,) = [o for o in render_objects(MONITORING) if o["kind"] == "PrometheusRule"]
    return cast(list[dict[str, Any]], rule["spec"]["groups"])


def dashboard() -> dict[str, Any]:
    (cm,) = [o for o in render_objects() if o["kind"] == "ConfigMap"]
    return cast(dict[str, Any], json.loads(cm["data"]["chatmodel.json"]))


def names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, grouping clauses, ranges and
    Grafana variables removed; what is left that is not a function or keyword is a metric name)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\$\w+", "", e)
    found = re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e)
    return {name for name, call in found if not call and name not in PROMQL_WORDS}


def family_names(registry: CollectorRegistry, prefix: str) -> set[str]:
    """Sample names of a registry's families (a Counter adds _total, a Histogram _bucket/_sum/_count)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix
        for family in registry.collect()
        if family.name.startswith(prefix)
        for suffix in suffixes.get(family.type, [""])
    }


def exported() -> set[str]:
    from chatmodel_serving.api.metrics import ServingMetrics

    serving = ServingMetrics(lambda: {}).registry
    vllm = {
        getattr(s, f)
        for s in SIGNALS.values()
        for f in ("requests_waiting", "requests_running", "kv_cache_usage")
    }
    return family_names(REGISTRY, "chatmodel_operator_") | family_names(serving, "chatmodel_") | vllm


def test_names_in_reads_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, model) (rate(chatmodel_time_to_first_token_seconds_bucket"
        '{namespace=~"$namespace"}[$__rate_interval])))'
        " / on (namespace) group_left (x) vllm:num_requests_waiting"
    )
    assert names_in(expr) == {"chatmodel_time_to_first_token_seconds_bucket", "vllm:num_requests_waiting"}


def test_every_queried_name_is_exported() -> None:
    ours = exported()
    assert {
        "chatmodel_operator_reconcile_duration_seconds_bucket",
        "chatmodel_generation_tokens_total",
    } <= ours
    alert_names = {n for g in rule_groups() for r in g["rules"] for n in names_in(r["expr"])}
    panel_names = {n for p in dashboard()["panels"] for t in p["targets"] for n in names_in(t["expr"])}
    assert alert_names and alert_names - ours == set()
    assert panel_names - ours - EXTERNAL == set()
    assert panel_names >= EXTERNAL  # listed only while used


def test_dashboard_covers_the_asked_for_panels() -> None:
    panels = {
        p["title"]: {n for t in p["targets"] for n in names_in(t["expr"])} for p in dashboard()["panels"]
    }
    wanted = {
        "Requests per second": "chatmodel_request_success_total",
        "Tokens per second": "chatmodel_generation_tokens_total",
        "Time to first token": "chatmodel_time_to_first_token_seconds_bucket",
        "Request latency (arrival to last token)": "chatmodel_e2e_request_latency_seconds_bucket",
        "Queue depth": "chatmodel_num_requests_waiting",
        "Ready replicas per version": "kube_deployment_status_replicas_ready",
        "Operator reconcile latency": "chatmodel_operator_reconcile_duration_seconds_bucket",
    }
    for title, name in wanted.items():
        assert name in panels.get(title, set()), title
    quantiles = [
        t["expr"] for p in dashboard()["panels"] if p["title"] == "Time to first token" for t in p["targets"]
    ]
    assert [q.split(",")[0] for q in quantiles] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]


def test_alerts_cover_the_issue() -> None:
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"]}
    assert alerts == {
        "ChatModelFailed",
        "ChatModelFineTuneJobFailing",
        "ChatModelServing5xxRate",
        "ChatModelQueueSaturated",
        "ChatModelOperatorErrors",
    }


def test_promtool_checks_the_rules_and_proves_alerts_fire(tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run(
        [promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    test = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout
    # The tests prove six alerts fire (five kinds, two saturated queues), not just that the file parses.
    spec = yaml.safe_load((HERE / "alerts_test.yaml").read_text())
    firing = [a for t in spec["tests"] for c in t["alert_rule_test"] for a in c["exp_alerts"]]
    assert len(firing) == 6


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, Grafana variables filled in, as a recording rule: promtool parses it."""
    promtool = need_binary("promtool")
    grafana = {"$__rate_interval": "5m", "$namespace": ".*"}
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    for variable, value in grafana.items():
        exprs = [e.replace(variable, value) for e in exprs]
    assert not any("$" in e for e in exprs)
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    check = subprocess.run(
        [promtool, "check", "rules", "dashboard.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout
