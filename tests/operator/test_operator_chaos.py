"""Operator chaos on kmock: the real operator process (`python -m chatmodel_operator`) is killed (SIGKILL) or
stopped (SIGTERM) at random points while it reconciles, 20 rounds from a fixed seed, while a stand-in for the
cluster's controllers finishes training Jobs and makes Deployments ready, and users change specs mid-way.

The end state must be correct (every ChatModel Ready on the version its spec asks for, the children that
version needs and nothing else) and no object is ever created twice: kmock keeps each object's history, so a
second successful create of a name (after a delete) would show as a second life. A create answered 409 is
not a duplicate (the API server refused it); those attempts are counted and printed.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from tests.operator.operator_kmock import Cluster, eventually, operator_process, path
from tests.operator.test_operator_lifecycle import CM, FINE_TUNE, NS, finish_job, manifest, version

ROUNDS = 20
SEED = 20261201
SPECS: dict[str, dict[str, Any]] = {
    "base": {},
    "tuned": FINE_TUNE,
    "moving": {"fineTune": {**FINE_TUNE["fineTune"], "dataset": {"source": "pvc://data/a.jsonl"}}},
    "wide": {"serving": {"replicas": {"min": 1, "max": 1}}},
}
# Users change specs between rounds: a new dataset (a new version: Job, then a switch) and a serving change.
CHANGES: dict[int, tuple[str, dict[str, Any]]] = {
    6: ("moving", {"fineTune": {"dataset": {"source": "pvc://data/b.jsonl"}}}),
    11: ("wide", {"serving": {"replicas": {"min": 2, "max": 2}}}),
    15: ("base", {"fineTune": FINE_TUNE["fineTune"]}),
}
WATCHED = ("jobs", "deployments", "services", "persistentvolumeclaims", "poddisruptionbudgets")


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


class World:
    """What the cluster's own controllers would do, whether or not the operator runs: a Job finishes a
    while after it appears (a pod with the result message, then Job status); a Deployment's pods become
    ready a while after its replicas change."""

    def __init__(self, c: Cluster, rng: random.Random) -> None:
        self.c, self.rng = c, rng
        self.due: dict[tuple[str, str, int], float] = {}

    async def step(self) -> None:
        loop = asyncio.get_running_loop()
        for job in await self.c.items(path("batch/v1", "jobs", NS)):
            name = job["metadata"]["name"]
            if job.get("status", {}).get("conditions"):
                continue
            due = self.due.setdefault(("job", name, 0), loop.time() + self.rng.uniform(0.1, 1.5))
            if loop.time() >= due:
                await self.finish(name, job)
        for dep in await self.c.items(path("apps/v1", "deployments", NS)):
            name, want = dep["metadata"]["name"], dep["spec"].get("replicas", 1)
            if dep.get("status", {}).get("readyReplicas", 0) == want:
                continue
            due = self.due.setdefault(("dep", name, want), loop.time() + self.rng.uniform(0.1, 1.0))
            if loop.time() >= due:
                url = path("apps/v1", "deployments", NS, name, "status")
                await self.c.patch(url, {"status": {"replicas": want, "readyReplicas": want}})

    async def finish(self, name: str, job: dict[str, Any]) -> None:
        trained = name.endswith("-train")  # else the artifact-prune Job
        message = json.dumps({"eval_loss": 0.9, "eval_loss_before": 1.7}) if trained else "{}"
        await finish_job(self.c, name, ok=True, message=message)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(0.05)


def operator_writes(c: Cluster) -> int:
    """Requests that change something, sent by the operator (kopf's user agent), so far."""
    return sum(
        1
        for r in c.k
        if str(r.method.value).upper() in {"POST", "PATCH", "PUT", "DELETE"}
        and "kopf" in r.headers.get("User-Agent", "")
    )


def lives(obj: Any) -> int:
    """How many times an object was created: runs of versions in its history separated by deletions."""
    history, count, alive = list(obj.history), 0, False
    for entry in history:
        if entry is not None and not alive:
            count += 1
        alive = entry is not None
    return count


async def stop(proc: subprocess.Popen[bytes], how: str) -> None:
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 30)


async def converged(c: Cluster, specs: dict[str, dict[str, Any]]) -> bool:
    for name, spec in specs.items():
        cm = (await c.get(f"{CM}/{name}")) or {}
        st = cm.get("status") or {}
        ready = st.get("phase") == "Ready" and st.get("activeVersion") == version(name, spec)
        if not ready or st.get("observedGeneration") != cm["metadata"]["generation"]:
            return False
    return True


async def test_operator_killed_at_random_points_converges_without_duplicates(
    cluster: Cluster, tmp_path: Path
) -> None:
    c, rng = cluster, random.Random(SEED)
    specs = {name: dict(spec) for name, spec in SPECS.items()}
    for name, spec in specs.items():
        await c.create(CM, manifest(name, spec))
    world_stop = asyncio.Event()
    world = asyncio.create_task(World(c, rng).run(world_stop))
    stops: Counter[str] = Counter()
    try:
        for rnd in range(ROUNDS):
            if rnd in CHANGES:
                name, change = CHANGES[rnd]
                await c.patch(f"{CM}/{name}", {"spec": change})
                specs[name] = merge(specs[name], change)
            proc, _ = operator_process(c.k, tmp_path, f"operator-{rnd:02d}.log")
            how = rng.choice(["kill", "kill", "term"])
            if rng.random() < 0.6:  # right after the n-th write this process makes: mid-reconcile
                target, before = rng.randint(1, 6), operator_writes(c)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 8
                while operator_writes(c) - before < target and loop.time() < deadline:
                    await asyncio.sleep(0.005)
                stops[f"{how} after write {target}"] += 1
            else:  # at a random time, start-up included
                await asyncio.sleep(rng.uniform(0.2, 3.0))
                stops[f"{how} at a time"] += 1
            await stop(proc, how)

        proc, _ = operator_process(c.k, tmp_path, "operator-final.log")
        try:
            await eventually(lambda: converged(c, specs), timeout=60)
        finally:
            await stop(proc, "term")
    finally:
        world_stop.set()
        await world

    # Exactly what the final specs need, each created once.
    created: dict[str, dict[str, int]] = {p: {} for p in WATCHED}
    for (resource, _, name), obj in c.k.objects.items():
        if resource.plural in created:
            created[resource.plural][name] = lives(obj)
    duplicates = {p: {n: k for n, k in names.items() if k > 1} for p, names in created.items()}
    attempts = Counter(
        str(r.url).split("/")[-1]
        for r in c.k
        if str(r.method.value).upper() == "POST" and "kopf" in r.headers.get("User-Agent", "")
    )
    summary = {
        "rounds": ROUNDS,
        "stops": dict(stops),
        "operator_writes": operator_writes(c),
        "creates_by_kind": {p: len(n) for p, n in created.items()},
        "create_attempts_by_kind": dict(attempts),
        "duplicates": sum(len(d) for d in duplicates.values()),
    }
    print("\nchaos:", json.dumps(summary))
    assert not any(duplicates.values()), duplicates

    live: dict[str, set[str]] = {p: set() for p in WATCHED}
    for (resource, _, name), obj in c.k.objects.items():
        if resource.plural in live and not obj.deleted:
            live[resource.plural].add(name)
    versions = {name: version(name, spec) for name, spec in specs.items()}
    train = {f"{n}-{v}-train" for n, v in versions.items() if "fineTune" in specs[n]}
    train.add(f"moving-{version('moving', SPECS['moving'])}-train")  # v1's Job, kept with its version
    assert {j for j in live["jobs"] if j.endswith("-train")} == train
    serving = set(versions.values())
    assert {d.rsplit("-", 1)[1] for d in live["deployments"]} >= serving
    for name, v in versions.items():
        dep = await c.get(path("apps/v1", "deployments", NS, f"{name}-{v}"))
        assert dep is not None, f"{name}-{v}"
        svc = await c.get(path("v1", "services", NS, name))
        assert svc["spec"]["selector"]["chatmodel.dev/version"] == v, name
    # Only the versions each ChatModel has had exist, and a replaced version no longer takes traffic.
    for d in live["deployments"]:
        name, v = d.rsplit("-", 1)
        if v != versions[name]:
            dep = await c.get(path("apps/v1", "deployments", NS, d))
            assert dep["spec"]["replicas"] == 0, d
    wide = await c.get(path("apps/v1", "deployments", NS, f"wide-{versions['wide']}"))
    assert wide["spec"]["replicas"] == 2
