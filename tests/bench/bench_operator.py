"""Operator at scale on kmock: N ChatModels, our operator vs a trivial kopf operator (DESIGN.md §5, §6).

Three processes per run: the emulator (kmock, history trimmed so it stays linear), the operator under test,
and this driver, which creates the ChatModels and polls until every one has its Deployment and Service.
The operator's own CPU time and peak RSS are read from /proc, so the emulator's cost is not counted.

    python tests/bench/bench_operator.py [--count 1000] [--skip-baseline]

Figures go to bench-results.json under "operator" (merged with what is there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests" / "operator"), str(ROOT / "tests" / "bench")]
from results import record  # noqa: E402

NS = "bench"
IDLE_SECONDS = 10.0


# ---- the three roles -----------------------------------------------------------------------------


async def emulator(port: int) -> None:
    import kmock
    from operator_kmock import declare

    async with kmock.KubernetesEmulator() as k, kmock.Server(k, port=port):
        declare(k)
        while True:
            # kmock keeps every request and scans them all on each new one (quadratic). A benchmark harness
            # may trim that private history; the product never touches kmock.
            del k._requests[:-20]
            await asyncio.sleep(0.2)


def run_operator(url: str, trivial: bool, metrics_port: int) -> None:
    import logging

    import kopf

    from chatmodel_operator import metrics
    from chatmodel_operator.config import Config
    from chatmodel_operator.main import build_registry

    logging.basicConfig(level=logging.WARNING)
    registry = trivial_registry() if trivial else build_registry(Config())
    metrics.serve(metrics_port)  # the reconcile-duration histogram, read by the driver as Prometheus would

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url)

    @kopf.on.startup(registry=registry)
    def quiet(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING

    coro = kopf.operator(registry=registry, clusterwide=True, standalone=True)
    if os.environ.get("BENCH_PROFILE"):  # where does the operator's CPU go?
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    asyncio.run(coro)
    if os.environ.get("BENCH_PROFILE"):
        profiler.dump_stats(os.environ["BENCH_PROFILE"])


def trivial_registry() -> Any:
    """The baseline of DESIGN.md §5: one Deployment and one Service per ChatModel, then a status patch."""
    import kopf
    from kopf._cogs.clients import api, errors

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def keep_settings(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        memo.settings = settings

    @kopf.on.create("chatmodel.dev", "v1alpha1", "chatmodels", registry=registry)
    async def create(name: str, namespace: str, memo: Any, logger: Any, patch: Any, **_: Any) -> None:
        labels = {"app": name}
        dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "c", "image": "x"}]}}}}  # fmt: skip
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": labels, "ports": [{"port": 80}]}}  # fmt: skip
        for path, obj in ((f"/apis/apps/v1/namespaces/{namespace}/deployments", dep),
                          (f"/api/v1/namespaces/{namespace}/services", svc)):  # fmt: skip
            with contextlib.suppress(errors.APIConflictError):
                await api.post(path, payload=obj, settings=memo.settings, logger=logger)
        patch.status["phase"] = "Deploying"

    return registry


# ---- the driver ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    return cpu, int(status["VmHWM"].split()[0]) / 1024


def spawn(*args: str) -> subprocess.Popen[bytes]:
    log = open(f"/tmp/bench_operator_{args[0].strip('-')}.log", "ab")  # noqa: SIM115 - lives with the child
    return subprocess.Popen([sys.executable, __file__, *args], stdout=log, stderr=subprocess.STDOUT)


def chatmodel(i: int) -> dict[str, Any]:
    return {"apiVersion": "chatmodel.dev/v1alpha1", "kind": "ChatModel",
            "metadata": {"name": f"m{i:04d}", "namespace": NS, "uid": f"uid-{i}", "generation": 1},
            "spec": {"baseModel": {"source": "builtin://smollm2-135m"}}}  # fmt: skip


def histogram_quantile(q: float, text: str, name: str) -> tuple[float, int]:
    """(q-quantile, count) of a Prometheus histogram in exposition text, interpolated within the bucket
    as PromQL's histogram_quantile() does."""
    from prometheus_client.parser import text_string_to_metric_families

    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket"))
    total = buckets[-1][1]
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower, int(total)
            return lower + (upper - lower) * (rank - below) / max(cumulative - below, 1e-9), int(total)
        lower, below = upper, cumulative
    return lower, int(total)


async def drive(
    url: str, count: int, operator_pid: int, timeout: float, metrics_url: str
) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession(url) as http:
        for _ in range(100):  # the emulator is up once it answers
            try:
                async with http.get("/version"):
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # the operator has listed and is watching
        cpu_before, _ = proc_stats(operator_pid)
        start = time.monotonic()
        sem = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with (
                sem,
                http.post(f"/apis/chatmodel.dev/v1alpha1/namespaces/{NS}/chatmodels", json=chatmodel(i)),
            ):
                pass

        await asyncio.gather(*(create(i) for i in range(count)))
        created = time.monotonic() - start

        async def count_of(path: str) -> int:
            async with http.get(path) as resp:
                return len((await resp.json()).get("items", []))

        while time.monotonic() - start < timeout:
            deps = await count_of(f"/apis/apps/v1/namespaces/{NS}/deployments")
            svcs = await count_of(f"/api/v1/namespaces/{NS}/services")
            if deps >= count and svcs >= count:
                break
            await asyncio.sleep(1.0)
        else:
            raise SystemExit(f"timed out: {deps} Deployments, {svcs} Services of {count}")
        seconds = time.monotonic() - start
        await asyncio.sleep(2)  # let the last status patches land
        cpu_after, peak = proc_stats(operator_pid)
        await asyncio.sleep(IDLE_SECONDS)  # converged: what does watching cost?
        cpu_idle, _ = proc_stats(operator_pid)
        async with http.get(metrics_url) as resp:
            exposition = await resp.text()
    reconcile = "chatmodel_operator_reconcile_duration_seconds"
    has_histogram = f"{reconcile}_bucket" in exposition
    p50, reconciles = histogram_quantile(0.5, exposition, reconcile) if has_histogram else (0.0, 0)
    p95, _ = histogram_quantile(0.95, exposition, reconcile) if has_histogram else (0.0, 0)
    return {
        "reconciles": reconciles,
        "reconcile_p50_seconds": p50,
        "reconcile_p95_seconds": p95,
        "seconds": seconds,
        "create_seconds": created,
        "cpu_seconds": cpu_after - cpu_before,
        "peak_rss_mb": peak,
        "idle_cpu_percent": 100 * (cpu_idle - cpu_after) / IDLE_SECONDS,
    }


def measure(count: int, trivial: bool, timeout: float) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emu = spawn("--emulator", str(port))
    time.sleep(1.5)
    metrics_port = free_port()
    op = spawn("--operator", url, "--metrics-port", str(metrics_port), *(["--trivial"] if trivial else []))
    try:
        return asyncio.run(drive(url, count, op.pid, timeout, f"http://127.0.0.1:{metrics_port}/metrics"))
    finally:
        for p in (op, emu):
            p.terminate()
            p.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--emulator", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--operator", help=argparse.SUPPRESS)
    parser.add_argument("--trivial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulator:
        asyncio.run(emulator(args.emulator))
        return 0
    if args.operator:
        run_operator(args.operator, args.trivial, args.metrics_port)
        return 0

    n = args.count
    ours = measure(n, trivial=False, timeout=args.timeout)
    print(f"ours:     {n} ChatModels, all children in {ours['seconds']:.1f} s; operator CPU "
          f"{ours['cpu_seconds']:.1f} s ({1000 * ours['cpu_seconds'] / n:.1f} ms each), peak RSS "
          f"{ours['peak_rss_mb']:.0f} MB; reconcile p50 {ours['reconcile_p50_seconds'] * 1000:.0f} ms, p95 "
          f"{ours['reconcile_p95_seconds'] * 1000:.0f} ms over {ours['reconciles']} reconciles")  # fmt: skip
    figures: dict[str, Any] = {
        "count": n,
        f"seconds_{n}": round(ours["seconds"], 1),
        "cpu_seconds": round(ours["cpu_seconds"], 2),
        "cpu_ms_per_chatmodel": round(1000 * ours["cpu_seconds"] / n, 2),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "idle_cpu_percent": round(ours["idle_cpu_percent"], 2),
        "reconciles": ours["reconciles"],
        "reconcile_p50_ms": round(1000 * ours["reconcile_p50_seconds"], 1),
        "reconcile_p95_ms": round(1000 * ours["reconcile_p95_seconds"], 1),
    }
    if not args.skip_baseline:
        base = measure(n, trivial=True, timeout=args.timeout)
        print(f"baseline: {n} ChatModels, all children in {base['seconds']:.1f} s; operator CPU "
              f"{base['cpu_seconds']:.1f} s ({1000 * base['cpu_seconds'] / n:.1f} ms each), peak RSS "
              f"{base['peak_rss_mb']:.0f} MB")  # fmt: skip
        figures.update(
            {
                f"baseline_seconds_{n}": round(base["seconds"], 1),
                "baseline_cpu_ms_per_chatmodel": round(1000 * base["cpu_seconds"] / n, 2),
                "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
                "cpu_ratio_vs_kopf_baseline": round(ours["cpu_seconds"] / max(base["cpu_seconds"], 1e-9), 2),
            }
        )
        print(
            f"CPU ratio vs the trivial kopf operator: {figures['cpu_ratio_vs_kopf_baseline']} (target <= 2.0)"
        )
    record("operator", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
