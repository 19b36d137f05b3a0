"""Prometheus metrics of the serving runtime. Names mirror vLLM's (with our prefix) so gateway routers,
KEDA and prometheus-adapter rules written for vLLM read them with only the prefix changed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..engine.types import EngineStats

PREFIX = "chatmodel_"
TTFT_BUCKETS = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
LORA_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)


class _LoadCollector(Collector):
    """Reads the engines' queue and cache figures at scrape time, so they are never stale."""

    def __init__(self, stats: Callable[[], dict[str, EngineStats]]):
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            f"{PREFIX}num_requests_waiting", "Requests queued, not yet running.", labels=["model"]
        )
        running = GaugeMetricFamily(
            f"{PREFIX}num_requests_running", "Requests in the running batch.", labels=["model"]
        )
        kv = GaugeMetricFamily(
            f"{PREFIX}kv_cache_usage_perc", "KV-cache tokens in use over capacity (0-1).", labels=["model"]
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}lora_adapters_loaded", "LoRA adapters servable on this base model.", labels=["model"]
        )
        resident = GaugeMetricFamily(
            f"{PREFIX}lora_adapters_resident",
            "LoRA adapters in a device slot now (at most lora_slots).",
            labels=["model"],
        )
        slots = GaugeMetricFamily(
            f"{PREFIX}lora_slots", "LoRA slots on the device (--max-loras).", labels=["model"]
        )
        for name, s in self.stats().items():
            waiting.add_metric([name], s.waiting)
            running.add_metric([name], s.running)
            kv.add_metric([name], s.kv_usage)
            loaded.add_metric([name], s.lora_loaded)
            resident.add_metric([name], s.lora_resident)
            slots.add_metric([name], s.lora_slots)
        yield from (waiting, running, kv, loaded, resident, slots)


class ServingMetrics:
    def __init__(self, stats: Callable[[], dict[str, EngineStats]]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            f"{PREFIX}time_to_first_token_seconds",
            "Time to first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            f"{PREFIX}e2e_request_latency_seconds",
            "Request latency, arrival to last token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            f"{PREFIX}generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.requests = Counter(
            f"{PREFIX}request_success",
            "Finished requests by finish reason.",
            ["model", "finished_reason"],
            registry=r,
        )
        self.http = Counter(
            f"{PREFIX}http_requests",
            "HTTP responses by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.rate_limited = Counter(
            f"{PREFIX}rate_limited_requests",
            "Requests refused by a per-API-key quota, by the limit reached (requests or tokens).",
            ["model", "limit"],
            registry=r,
        )
        self.lora_loads = Counter(
            f"{PREFIX}lora_loads",
            "LoRA adapter loads on a base model, by result (loaded or refused).",
            ["model", "result"],
            registry=r,
        )
        self.lora_load_seconds = Histogram(
            f"{PREFIX}lora_load_seconds",
            "Time to read, check and register a LoRA adapter.",
            ["model"],
            buckets=LORA_LOAD_BUCKETS,
            registry=r,
        )
        r.register(_LoadCollector(stats))
