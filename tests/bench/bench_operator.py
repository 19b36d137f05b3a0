"""Operator at scale: N ChatModels, our operator vs a trivial kopf operator (docs/benchmarks.md).

On kmock (the default), three processes per run: the emulator (kmock, history trimmed so it stays linear),
the operator under test, and this driver, which creates the ChatModels and polls until every one has its
Deployment and Service. The operator's own CPU time and peak RSS are read from /proc, so the emulator's cost
is not counted.

With `--cluster local`, the same comparison on the real control plane of tests/cluster/devcluster.py
(etcd, kube-apiserver, controller-manager, scheduler, kwok nodes; `make install-cluster`): each operator
gets a fresh cluster of its own, so neither sees the other's objects or controller backlog. Ours runs as
shipped (`python -m chatmodel_operator`) and is done when every ChatModel says Ready, which it only does
once the real Deployment reports its kwok pod Ready; the baseline is done at its status patch.

    python -m tests.bench.bench_operator [--count 1000] [--skip-baseline] [--cluster kmock|local]

Figures go to bench-results.json under "operator" (kmock) or as "operator.local.*" (merged with what is
there). BENCH_PROFILE=path writes cProfile stats of the operator processes (locally: path.ours and
path.baseline, and then nothing is recorded: the profiler's own cost would colour the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from chatmodel_serving.launch import free_port
from tests.bench.results import record

ROOT = Path(__file__).resolve().parents[2]

NS = "bench"
IDLE_SECONDS = 10.0


# ---- the three roles -----------------------------------------------------------------------------


async def emulator(port: int) -> None:
    import kmock

    from tests.operator.operator_kmock import declare

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
    """The baseline (docs/benchmarks.md): a Deployment and a Service per ChatModel, then a status patch."""
    import kopf
    from kopf._cogs.clients import api, errors

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def keep_settings(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        memo.settings = settings

    @kopf.on.create("chatmodel.dev", "v1alpha1", "chatmodels", registry=registry)
    async def create(name: str, namespace: str | None, memo: Any, logger: Any, patch: Any, **_: Any) -> None:
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


LOCAL_BASELINE = "local-baseline"


def run_local_baseline(namespace: str, metrics_port: int, health_port: int) -> None:
    """The baseline on the local cluster, run the way chatmodel_operator.main runs ours (kopf's logging at
    its default level, a liveness endpoint, the metrics thread, one namespace), logged in with KUBECONFIG."""
    import logging

    import kopf

    from chatmodel_operator import metrics

    registry = trivial_registry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    def quiet(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # as ours: only warnings become Events

    metrics.serve(metrics_port)
    kopf.configure(verbose=False)
    kopf.run(
        registry=registry,
        namespaces=[namespace],
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
    )


# ---- the driver ----------------------------------------------------------------------------------


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
    cmd = [sys.executable, "-m", "tests.bench.bench_operator", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


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


def reconcile_figures(exposition: str) -> dict[str, float]:
    """Reconcile count and p50/p95 from the operator's own histogram (zeros when it has none)."""
    reconcile = "chatmodel_operator_reconcile_duration_seconds"
    if f"{reconcile}_bucket" not in exposition:
        return {"reconciles": 0, "reconcile_p50_seconds": 0.0, "reconcile_p95_seconds": 0.0}
    p50, reconciles = histogram_quantile(0.5, exposition, reconcile)
    p95, _ = histogram_quantile(0.95, exposition, reconcile)
    return {"reconciles": reconciles, "reconcile_p50_seconds": p50, "reconcile_p95_seconds": p95}


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
    return {
        **reconcile_figures(exposition),
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


# ---- --cluster local: the same comparison on the real control plane -------------------------------

# Bench nodes hold kwok's 110 pods each: room (CPU, memory) for 110 pods of our default request (1 CPU, 2Gi).
PODS_PER_NODE = 110
BENCH_NODE_CAPACITY = {"cpu": "128", "memory": "256Gi"}
CHATMODELS = "/apis/chatmodel.dev/v1alpha1/namespaces/{ns}/chatmodels"
# After convergence the operator is quiet once it spends under this many CPU seconds a second, twice.
QUIET_CPU_PER_SECOND = 0.03
SETTLE_SECONDS = 60.0
BASELINE_PODS_GRACE_SECONDS = 60.0
# The dev cluster's service range (a /24) holds 253 ClusterIPs; a second range for 1,000 Services (the
# ServiceCIDR API, GA since 1.33), so that neither operator meets "range is full".
SERVICE_CIDR: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "ServiceCIDR",
    "metadata": {"name": "bench"},
    "spec": {"cidrs": ["10.1.0.0/16"]},
}


def bench_nodes(count: int) -> list[dict[str, Any]]:
    """Enough kwok nodes for `count` serving pods besides the dev cluster's own (devcluster.node())."""
    from tests.cluster.devcluster import node

    nodes = []
    for i in range(math.ceil(count / PODS_PER_NODE)):
        n = node(f"kwok-bench-{i}")
        n["status"]["capacity"] = n["status"]["allocatable"] = {
            **n["status"]["capacity"],
            **BENCH_NODE_CAPACITY,
        }
        nodes.append(n)
    return nodes


def read_crds() -> list[dict[str, Any]]:
    """Our CRDs as they are now: read once per run, so both clusters get the same ones."""
    import yaml

    return [yaml.safe_load(f.read_text()) for f in sorted((ROOT / "manifests" / "crds").glob("*.yaml"))]


def start_cluster(root: Path, count: int, crds: list[dict[str, Any]]) -> Any:
    """A fresh dev cluster with our CRD Established and served, the bench nodes and service range Ready
    and namespace NS with its default ServiceAccount (the ReplicaSet controller needs it for pods)."""
    from tests.cluster.devcluster import LocalCluster

    cluster = LocalCluster(root)
    try:
        cluster.start()
        cluster.apply(crds)
        until(cluster, "wait", "--for=condition=Established", *(f"crd/{c['metadata']['name']}" for c in crds))
        cluster.apply([*bench_nodes(count), SERVICE_CIDR])
        until(cluster, "wait", "--for=condition=Ready", "node", "--all")
        until(cluster, "wait", "--for=condition=Ready", f"servicecidr/{SERVICE_CIDR['metadata']['name']}")
        cluster.kubectl("create", "namespace", NS)
        # The ServiceAccount, and the CRD's storage past "(re)initializing" (429), before an operator starts.
        until(cluster, "get", "sa", "default", "-n", NS)
        until(cluster, "get", "chatmodels", "-n", NS)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def until(cluster: Any, *args: str, timeout: float = 120) -> None:
    """Run kubectl until it succeeds: `kubectl wait` on an object without status.conditions yet fails at
    once ("accessor error: <nil>") rather than waiting."""
    deadline = time.monotonic() + timeout
    while (out := cluster.kubectl(*args, "--request-timeout=30s", check=False)).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"dev cluster: kubectl {' '.join(args)}: {out.stderr.strip()}")
        time.sleep(0.5)


def start_local_operator(cluster: Any, trivial: bool, log: Path) -> Any:
    """Ours as shipped (`python -m chatmodel_operator`) or the baseline, both restricted to NS, logged in
    as the cluster's admin; returns once /healthz answers (tests/cluster/operator_process.py)."""
    from tests.cluster.operator_process import OperatorProcess, operator_env

    metrics_port, health_port = free_port(), free_port()
    env = operator_env(cluster.kubeconfig, {"CHATMODEL_NAMESPACES": NS}, metrics_port, health_port)
    profile = os.environ.get("BENCH_PROFILE")
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", f"{profile}.{'baseline' if trivial else 'ours'}"]
    if trivial:
        cmd += ["-m", "tests.bench.bench_operator", "--operator", LOCAL_BASELINE, "--namespace", NS,
                "--metrics-port", str(metrics_port), "--health-port", str(health_port)]  # fmt: skip
    else:
        cmd += ["-m", "chatmodel_operator"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    op = OperatorProcess(proc, log, metrics_port, health_port)
    try:
        op.wait_healthy(timeout=120)
    except BaseException:
        op.stop()
        raise
    return op


def local_chatmodel(i: int) -> dict[str, Any]:
    return {"apiVersion": "chatmodel.dev/v1alpha1", "kind": "ChatModel",
            "metadata": {"name": f"m{i:04d}", "namespace": NS},
            "spec": {"baseModel": {"source": "builtin://smollm2-135m"}}}  # fmt: skip


def open_sockets(pid: int) -> int:
    """The process's open sockets (each HTTPS connection to the API server is one)."""
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


async def watch_until(
    http: Any, path: str, count: int, marks: dict[str, Any], start: float, deadline: float, what: str
) -> dict[str, float]:
    """Watch the objects under `path` until `count` of them pass each predicate in `marks`; the seconds
    from `start` at which each mark was reached. A watch, not polling: a list of 1,000 ChatModels is 2.4 MB
    and the API server is the shared bottleneck here."""
    passing: dict[str, set[str]] = {mark: set() for mark in marks}
    reached: dict[str, float] = {}
    rv, reported = "", time.monotonic()

    def seen(obj: dict[str, Any], gone: bool = False) -> None:
        name = obj["metadata"]["name"]
        for mark, ok in marks.items():
            if not gone and ok(obj):
                passing[mark].add(name)
            else:
                passing[mark].discard(name)
            if mark not in reached and len(passing[mark]) >= count:
                reached[mark] = time.monotonic() - start

    while len(reached) < len(marks):
        if not rv:  # (re)list: the first time and after a 410 Gone
            async with http.get(path, params={"resourceVersion": "0"}) as resp:
                listed = await resp.json()
            rv = listed["metadata"]["resourceVersion"]
            passing = {mark: set() for mark in marks}
            for obj in listed.get("items") or []:
                seen(obj)
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "5"}
        async with http.get(path, params=params) as resp:
            async for line in resp.content:
                event = json.loads(line)
                if event["type"] == "ERROR":
                    rv = ""  # expired: list again
                    break
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    seen(event["object"], gone=event["type"] == "DELETED")
                if len(reached) == len(marks):
                    break
        now = time.monotonic()
        if len(reached) < len(marks) and now > deadline:
            raise SystemExit(f"timed out: {what}: {sorted(reached)} of {sorted(marks)} reached")
        if now - reported >= 30:
            done = {mark: len(names) for mark, names in passing.items()}
            print(f"  {now - start:.0f} s: {what} {done} of {count}", flush=True)
            reported = now
    return reached


def phase_is(*phases: str | None) -> Any:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def has_status(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") is not None


def deployment_ready(obj: dict[str, Any]) -> bool:
    return bool(((obj.get("status") or {}).get("readyReplicas") or 0) >= 1)


async def drive_local(cluster: Any, count: int, op: Any, trivial: bool, timeout: float) -> dict[str, Any]:
    """Create `count` ChatModels (server-side apply, 16 at a time) and watch until each has converged:
    ours at phase Ready, the baseline at its status patch. The operator's CPU counts from just before the
    first create until it is quiet again after convergence."""
    import aiohttp

    from tests.cluster.devcluster import ADMIN_TOKEN

    tls = ssl.create_default_context(cafile=str(cluster.root / "ca.crt"))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    pid, apiserver = op.proc.pid, cluster.procs["kube-apiserver"].pid
    path = CHATMODELS.format(ns=NS)
    sockets = [0]

    async def monitor() -> None:
        while True:
            if op.proc.poll() is not None:
                raise SystemExit(f"the operator exited ({op.proc.returncode}):\n{op.tail()}")
            sockets[0] = max(sockets[0], open_sockets(pid))
            await asyncio.sleep(0.5)

    async with aiohttp.ClientSession(
        cluster.server,
        headers=headers,
        connector=aiohttp.TCPConnector(ssl=tls, limit=32),
        read_bufsize=2**20,
        timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
    ) as http:
        await asyncio.sleep(3)  # the operator has listed and is watching
        watchdog = asyncio.ensure_future(monitor())
        cpu_before, _ = proc_stats(pid)
        api_before, _ = proc_stats(apiserver)
        start = time.monotonic()
        sem = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            obj = local_chatmodel(i)
            async with (
                sem,
                http.patch(
                    f"{path}/{obj['metadata']['name']}",
                    params={"fieldManager": "bench", "force": "true"},
                    data=json.dumps(obj),
                    headers={"Content-Type": "application/apply-patch+yaml"},
                ) as resp,
            ):
                if resp.status >= 300:
                    raise SystemExit(f"creating {obj['metadata']['name']}: {resp.status} {await resp.text()}")

        done_phase = "Deploying" if trivial else "Ready"
        deadline = start + timeout
        converged = asyncio.ensure_future(watch_until(
            http, path, count, {"status": has_status, "done": phase_is(done_phase)},
            start, deadline, f"ChatModels (status, {done_phase})",
        ))  # fmt: skip
        # The children's pods Ready: ours waits for them already, the baseline's status does not.
        deps = f"/apis/apps/v1/namespaces/{NS}/deployments"
        pods = asyncio.ensure_future(
            watch_until(http, deps, count, {"ready": deployment_ready}, start, deadline, "Deployments ready")
        )
        try:
            await asyncio.gather(*(create(i) for i in range(count)))
            created = time.monotonic() - start
            reached = await converged
            cpu_converged, _ = proc_stats(pid)
            # Converged: let the last events and writes through until the operator is quiet.
            last, quiet, settle_start = cpu_converged, 0, time.monotonic()
            while quiet < 2 and time.monotonic() - settle_start < SETTLE_SECONDS:
                await asyncio.sleep(1.0)
                cpu, _ = proc_stats(pid)
                quiet = quiet + 1 if cpu - last < QUIET_CPU_PER_SECOND else 0
                last = cpu
            cpu_after, peak = proc_stats(pid)
            api_after, _ = proc_stats(apiserver)
            settled = time.monotonic() - settle_start
            if trivial:
                # The baseline's work ends at its status patch; its pods are the cluster's business (at
                # 1,000, a ReplicaSet backlog can take many minutes), so they are timed only if soon.
                await asyncio.wait({pods}, timeout=BASELINE_PODS_GRACE_SECONDS)
                pods_ready = pods.result() if pods.done() else {"ready": None}
            else:
                pods_ready = await pods
            await asyncio.sleep(IDLE_SECONDS)  # converged: what does watching cost?
            cpu_idle, _ = proc_stats(pid)
        finally:
            for task in (watchdog, converged, pods):
                task.cancel()
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=10) as resp:
        exposition = resp.read().decode()
    return {
        **reconcile_figures(exposition),
        "seconds": reached["done"],
        "status_seconds": reached["status"],
        "pods_ready_seconds": pods_ready["ready"],
        "create_seconds": created,
        "cpu_seconds": cpu_after - cpu_before,
        "cpu_at_converged_seconds": cpu_converged - cpu_before,
        "settle_seconds": settled,
        "peak_rss_mb": peak,
        "peak_sockets": sockets[0],
        "idle_cpu_percent": 100 * (cpu_idle - cpu_after) / IDLE_SECONDS,
        "apiserver_cpu_seconds": api_after - api_before,
    }


def measure_local(count: int, trivial: bool, timeout: float, crds: list[dict[str, Any]]) -> dict[str, Any]:
    """One operator against a fresh cluster of its own. The cluster's folder (etcd's data: 60+ MB) goes
    once measured, the operator's log stays in /tmp; a failed run keeps the folder, logs and all."""
    label = "baseline" if trivial else "ours"
    root = Path(tempfile.mkdtemp(prefix=f"bench-operator-{label}-"))
    t0 = time.monotonic()
    cluster = start_cluster(root, count, crds)
    print(f"{label}: cluster up in {time.monotonic() - t0:.0f} s ({root})", flush=True)
    try:
        op = start_local_operator(cluster, trivial, root / "operator.log")
        try:
            result = asyncio.run(drive_local(cluster, count, op, trivial, timeout))
        finally:
            op.stop()
    finally:
        cluster.stop()
    # Failed attempts the operator retried (kopf logs each), e.g. API requests that timed out.
    trouble = op.trouble()
    if trouble:
        print(f"{label}: {len(trouble)} retried or failed, e.g. {trouble[0][:300]}")
    result["trouble_lines"] = len(trouble)
    shutil.copyfile(root / "operator.log", f"/tmp/bench_operator_local_{label}.log")
    shutil.rmtree(root, ignore_errors=True)
    return result


def main_local(n: int, timeout: float, skip_baseline: bool) -> int:
    # A SIGTERM (or a SIGINT that a background shell ignored) still stops the clusters on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    crds = read_crds()
    ours = measure_local(n, trivial=False, timeout=timeout, crds=crds)
    print(f"ours:     {n} ChatModels Ready in {ours['seconds']:.1f} s (all with a status in "
          f"{ours['status_seconds']:.1f} s, every Deployment ready in {ours['pods_ready_seconds']:.1f} s); "
          f"operator CPU {ours['cpu_seconds']:.1f} s ({1000 * ours['cpu_seconds'] / n:.1f} ms each), "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB, up to {ours['peak_sockets']} sockets; API server CPU "
          f"{ours['apiserver_cpu_seconds']:.1f} s; reconcile p50 {ours['reconcile_p50_seconds'] * 1000:.0f} "
          f"ms, p95 {ours['reconcile_p95_seconds'] * 1000:.0f} ms "
          f"over {ours['reconciles']} reconciles")  # fmt: skip
    figures: dict[str, Any] = {
        "local.count": n,
        "local.cluster": "a fresh local control plane per operator (tests/cluster/devcluster.py)",
        "local.nodes": f"3 dev + {len(bench_nodes(n))} bench kwok nodes of {PODS_PER_NODE} pods",
        "local.create": "server-side apply, 16 concurrent",
        f"local.seconds_{n}": round(ours["seconds"], 1),
        f"local.status_seconds_{n}": round(ours["status_seconds"], 1),
        "local.create_seconds": round(ours["create_seconds"], 1),
        "local.cpu_seconds": round(ours["cpu_seconds"], 2),
        "local.cpu_ms_per_chatmodel": round(1000 * ours["cpu_seconds"] / n, 2),
        "local.peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "local.peak_sockets": ours["peak_sockets"],
        "local.idle_cpu_percent": round(ours["idle_cpu_percent"], 2),
        "local.apiserver_cpu_seconds": round(ours["apiserver_cpu_seconds"], 1),
        "local.reconciles": ours["reconciles"],
        "local.reconcile_p50_ms": round(1000 * ours["reconcile_p50_seconds"], 1),
        "local.reconcile_p95_ms": round(1000 * ours["reconcile_p95_seconds"], 1),
        "local.retried_requests": ours["trouble_lines"],
    }
    if not skip_baseline:
        base = measure_local(n, trivial=True, timeout=timeout, crds=crds)
        pods = base["pods_ready_seconds"]
        grace = BASELINE_PODS_GRACE_SECONDS
        pods_said = f"in {pods:.1f} s" if pods is not None else f"not yet {grace:.0f} s after converging"
        print(f"baseline: {n} ChatModels with its status in {base['seconds']:.1f} s (every Deployment "
              f"ready {pods_said}); operator CPU {base['cpu_seconds']:.1f} s "
              f"({1000 * base['cpu_seconds'] / n:.1f} ms each), peak RSS {base['peak_rss_mb']:.0f} MB, up "
              f"to {base['peak_sockets']} sockets; API server CPU "
              f"{base['apiserver_cpu_seconds']:.1f} s")  # fmt: skip
        ratio = round(ours["cpu_seconds"] / max(base["cpu_seconds"], 1e-9), 2)
        figures.update(
            {
                f"local.baseline_seconds_{n}": round(base["seconds"], 1),
                f"local.baseline_pods_ready_seconds_{n}": None if pods is None else round(pods, 1),
                "local.baseline_cpu_seconds": round(base["cpu_seconds"], 2),
                "local.baseline_cpu_ms_per_chatmodel": round(1000 * base["cpu_seconds"] / n, 2),
                "local.baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
                "local.baseline_peak_sockets": base["peak_sockets"],
                "local.baseline_apiserver_cpu_seconds": round(base["apiserver_cpu_seconds"], 1),
                "local.baseline_retried_requests": base["trouble_lines"],
                "local.cpu_ratio_vs_kopf_baseline": ratio,
            }
        )
        print(f"CPU ratio vs the trivial kopf operator on the local cluster: {ratio} (target <= 1.5); "
              f"peak RSS {ours['peak_rss_mb']:.0f} MB (target < 100)")  # fmt: skip
    figures["local.wall_seconds"] = round(time.monotonic() - t0)
    if os.environ.get("BENCH_PROFILE"):
        print(f"profiled, so nothing recorded: {os.environ['BENCH_PROFILE']}.ours, .baseline")
        return 0
    record_operator(figures, local=True)
    return 0


def record_operator(figures: dict[str, Any], local: bool) -> None:
    """Write this mode's figures into the "operator" section, keeping the other mode's (local figures are
    the "local." keys, so run_all.py reads them as operator.local.*)."""
    from tests.bench.results import RESULTS

    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    kept = {k: v for k, v in (data.get("operator") or {}).items() if k.startswith("local.") != local}
    record("operator", {**kept, **figures})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--cluster", choices=["kmock", "local"], default="kmock", help="kmock, or the local control plane"
    )
    parser.add_argument("--emulator", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--operator", help=argparse.SUPPRESS)
    parser.add_argument("--trivial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--health-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--namespace", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulator:
        asyncio.run(emulator(args.emulator))
        return 0
    if args.operator == LOCAL_BASELINE:
        run_local_baseline(args.namespace, args.metrics_port, args.health_port)
        return 0
    if args.operator:
        run_operator(args.operator, args.trivial, args.metrics_port)
        return 0
    if args.cluster == "local":
        return main_local(args.count, args.timeout, args.skip_baseline)

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
    record_operator(figures, local=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
