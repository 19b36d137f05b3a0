"""Must-show 5 of the real-cluster issue: operator chaos against the real API server (the idea of
tests/operator/test_operator_chaos.py, without an emulator). The operator process is killed (SIGKILL) or
stopped (SIGTERM) at random points, from a fixed seed, while it reconciles five ChatModels (base-only and
fine-tuned on builtin://tidewell-faq), the real controllers and kwok go on finishing Jobs and making pods
Ready whether or not it runs, and specs change between rounds (three make new versions, two of them past
a history limit of one, so that versions are pruned; one changes only the replicas).

The server's own record says what was created: API watches (the admin token) run from before the first
ChatModel to the end and keep every ADDED/DELETED with its uid, and the API server's request counter
(apiserver_request_total) must count as many successful creates (a create answered with a timeout counts
as tried). Child names are per version and
no spec comes back to an earlier version, so a second uid under one name is a recreation; the only deletes
by design are a pruned version's children (its version gone from status.versions), all of them. Each
Deployment keeps one ReplicaSet (no restart changed a pod template). Creates answered 409 (a restarted
operator finds what its predecessor made) are the server's count too, printed with the operator logs'
retries and conflicts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import ssl
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chatmodel_operator.builders.storage import PRUNE_COMPONENT
from chatmodel_operator.spec import ChatModel, model_version
from tests.cluster.devcluster import LocalCluster
from tests.cluster.operator_process import OperatorProcess, operator_process

NS = "chaos"
ROUNDS = 10
SEED = 20261205
FT = {"dataset": {"source": "builtin://tidewell-faq"}, "method": "full", "backoffLimit": 0}
SPECS: dict[str, dict[str, Any]] = {
    "base": {},
    "tuned": {"fineTune": FT},
    "moving": {"fineTune": FT, "rollout": {"historyLimit": 1}},
    "wide": {"serving": {"replicas": {"min": 1}}},
    "late": {},
}
# Merge patches between rounds, while the operator is down: new versions (a Job, then a switch; "moving"
# keeps one version, so each of its switches prunes the one before), a serving change (same version) and a
# base model gaining a tune.
CHANGES: dict[int, tuple[str, dict[str, Any]]] = {
    2: ("moving", {"fineTune": {"hyperparameters": {"epochs": 2}}}),
    4: ("wide", {"serving": {"replicas": {"min": 2}}}),
    5: ("late", {"fineTune": FT}),
    7: ("moving", {"fineTune": {"hyperparameters": {"epochs": 4}}}),
}
# What the operator creates (and the kinds it could create for a serving version), and ChatModels.
CHILDREN = {
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
}
RESOURCES = {
    "Job": "jobs",
    "Deployment": "deployments",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
}
# ReplicaSets too: a second one under a Deployment means its pod template changed (its pods replaced).
WATCHED = {
    **CHILDREN,
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "ChatModel": "/apis/chatmodel.dev/v1alpha1/namespaces/{ns}/chatmodels",
}
NAME, VERSION, COMPONENT = "chatmodel.dev/name", "chatmodel.dev/version", "app.kubernetes.io/component"
CONVERGE_SECONDS = 120
# A failing handler, a retried request, a conflict or an unexpected exit in kopf's log.
TROUBLE = re.compile(r"Traceback|failed with an exception|Request attempt #\d+/\d+ failed|Conflict|\b409\b")


@dataclass(frozen=True)
class Seen:
    """One watch event, as the API server sent it."""

    type: str
    kind: str
    name: str
    uid: str
    created: str
    labels: dict[str, str] = field(hash=False)
    owner: str = ""  # the controller owner's uid


class Recorder:
    """Real API watches on `WATCHED` in one namespace, each in a thread, resumed from the last
    resourceVersion (short server-side timeouts, so stop() returns quickly): every event, in the server's
    order per kind."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        self.token = config["users"][0]["user"]["token"]
        url = urllib.parse.urlsplit(cluster.server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.ctx = ssl.create_default_context(cafile=str(cluster.root / "ca.crt"))
        self.namespace = namespace
        self.events: list[Seen] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(kind, path.format(ns=namespace)), daemon=True)
            for kind, path in WATCHED.items()
        ]
        self._listed = threading.Barrier(len(self._threads) + 1)

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _record(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        m = obj.get("metadata") or {}
        seen = Seen(
            type_, kind, m.get("name", ""), m.get("uid", ""),
            m.get("creationTimestamp", ""), dict(m.get("labels") or {}),
            next((o["uid"] for o in m.get("ownerReferences") or [] if o.get("controller")), ""),
        )  # fmt: skip
        with self._lock:
            self.events.append(seen)

    def _list(self, kind: str, path: str) -> str:
        deadline = time.monotonic() + 30
        status, body = self.get(path)
        while status == 429 and time.monotonic() < deadline:  # a new CRD's storage still initializing
            time.sleep(0.5)
            status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"list {path}: HTTP {status} {body[:300]!r}")
        listed = json.loads(body)
        known = {e.uid for e in self.snapshot() if e.kind == kind}
        for item in listed.get("items") or []:
            if item["metadata"]["uid"] not in known:  # after a lost watch (410) only new ones
                self._record(kind, "ADDED", item)
        return str(listed["metadata"]["resourceVersion"])

    def _watch(self, kind: str, path: str) -> None:
        try:
            rv = self._list(kind, path)
        except Exception as e:
            self.errors.append(f"{kind}: {e}")
            rv = ""
        self._listed.wait(30)
        while not self._stop.is_set():
            query = f"watch=1&allowWatchBookmarks=true&timeoutSeconds=2&resourceVersion={rv}"
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=20)
            try:
                conn.request("GET", f"{path}?{query}", headers={"Authorization": f"Bearer {self.token}"})
                resp = conn.getresponse()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status} {resp.read()[:300]!r}")
                for line in resp:
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: relist, note the gap
                        self.errors.append(f"{kind}: watch error {obj.get('message')}")
                        rv = self._list(kind, path)
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._record(kind, event["type"], obj)
            except Exception as e:  # a dropped connection: resume from rv
                if not self._stop.is_set():
                    self.errors.append(f"{kind}: {type(e).__name__}: {e}")
                    time.sleep(0.2)
            finally:
                conn.close()

    def start(self) -> None:
        for t in self._threads:
            t.start()
        self._listed.wait(30)  # every watch has its starting point before anything is created

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.events)

    def writes(self) -> int:
        """Writes of the operator seen so far: children created or deleted, ChatModels changed (status,
        kopf's annotations; the test's own patches come while no operator runs)."""
        return sum(
            1
            for e in self.snapshot()
            if (e.kind in CHILDREN and e.type in ("ADDED", "DELETED"))
            or (e.kind == "ChatModel" and e.type == "MODIFIED")
        )

    def creates(self) -> Counter[tuple[str, int]]:
        """The API server's count of create requests per (resource, HTTP code), since its start."""
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics: HTTP {status}"
        out: Counter[tuple[str, int]] = Counter()
        for family in text_string_to_metric_families(body.decode()):
            if family.name != "apiserver_request":
                continue
            for s in family.samples:
                ours = s.labels.get("resource") in RESOURCES.values() and not s.labels.get("subresource")
                if ours and s.name.endswith("_total") and s.labels.get("verb") == "POST":
                    out[s.labels["resource"], int(s.labels["code"])] += int(s.value)
        return out


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def chatmodel(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS}
    return {"apiVersion": "chatmodel.dev/v1alpha1", "kind": "ChatModel", "metadata": meta, "spec": spec}


def get_all(cluster: LocalCluster, what: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", what, "-n", NS, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def kill(op: OperatorProcess, how: str) -> None:
    if how == "term":
        op.stop(timeout=15)  # SIGTERM; SIGKILL if kopf has not exited after 15 s
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(op.proc.pid, signal.SIGKILL)
        op.proc.wait(timeout=15)


def exited_by_itself(op: OperatorProcess) -> str:
    """An exit the test did not cause: a crash fails the test; a SIGTERM from outside (another session's
    `devcluster.py down` with a stale pids.json can hit a reused process group) is one more stop."""
    assert "Signal SIGTERM is received" in op.text(), (
        f"the operator exited ({op.proc.returncode}):\n{op.tail()}"
    )
    return f"SIGTERM from outside, exit {op.proc.returncode}"


def final_state(cluster: LocalCluster) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """What is still wrong with the end state (empty: converged), and the ChatModels."""
    cms = {c["metadata"]["name"]: c for c in get_all(cluster, "chatmodels")}
    deps = {d["metadata"]["name"]: d for d in get_all(cluster, "deployments")}
    jobs = {j["metadata"]["name"]: j for j in get_all(cluster, "jobs")}
    svcs = {s["metadata"]["name"]: s for s in get_all(cluster, "services")}
    wrong = []
    for name in SPECS:
        cm = cms[name]
        st, gen = cm.get("status") or {}, cm["metadata"]["generation"]
        want = model_version(ChatModel.model_validate({**cm, "status": None}).spec)
        got = (
            st.get("phase"),
            st.get("activeVersion"),
            st.get("targetVersion"),
            st.get("observedGeneration"),
        )
        if got != ("Ready", want, want, gen):
            wrong.append(
                f"{name}: phase/active/target/observedGeneration {got}, want Ready/{want}/{want}/{gen}"
            )
            continue
        versions = {v["name"] for v in st.get("versions") or []}
        selector = (svcs.get(name) or {}).get("spec", {}).get("selector", {})
        if selector.get(VERSION) != want:
            wrong.append(f"{name}: Service selector {selector}, want version {want}")
        replicas = cm["spec"]["serving"]["replicas"]["min"]
        active = deps.get(f"{name}-{want}")
        if active is None or active["spec"]["replicas"] != replicas:
            wrong.append(f"{name}: Deployment {name}-{want} {active and active['spec']['replicas']} replicas")
        for dname, d in deps.items():
            v = d["metadata"]["labels"].get(VERSION)
            if d["metadata"]["labels"].get(NAME) != name or v == want:
                continue
            if v not in versions or d["spec"]["replicas"] != 0:
                wrong.append(f"{name}: {dname} of version {v} has {d['spec']['replicas']} replicas")
        for jname, j in jobs.items():
            labels = j["metadata"]["labels"]
            training = labels.get(NAME) == name and labels.get(COMPONENT) == "training"
            if training and labels.get(VERSION) not in versions:
                wrong.append(f"{name}: training Job {jname} of a version not in status.versions")
        if "fineTune" in cm["spec"] and f"{name}-{want}-train" not in jobs:
            wrong.append(f"{name}: no training Job {name}-{want}-train")
    return wrong, cms


def describe(cluster: LocalCluster, cms: dict[str, dict[str, Any]], op: OperatorProcess | None) -> str:
    statuses = {
        n: {k: (c.get("status") or {}).get(k) for k in ("phase", "message", "activeVersion", "targetVersion")}
        for n, c in cms.items()
    }
    kids = cluster.kubectl("get", "deploy,jobs,svc,pvc,pods", "-n", NS, "-o", "wide", check=False).stdout
    tail = op.tail(3000) if op else "(no operator)"
    return f"statuses: {json.dumps(statuses, indent=1)}\n{kids}\noperator log tail:\n{tail}"


@pytest.fixture
def recorder(cluster: LocalCluster) -> Iterator[Recorder]:
    cluster.kubectl("create", "namespace", NS)
    rec = Recorder(cluster, NS)
    rec.start()
    try:
        yield rec
    finally:
        rec.stop()


def test_operator_killed_at_random_points_converges_without_duplicates(
    cluster: LocalCluster, recorder: Recorder, tmp_path: Path
) -> None:
    started, rng = time.monotonic(), random.Random(SEED)
    creates_before = recorder.creates()
    specs = {name: dict(spec) for name, spec in SPECS.items()}
    cluster.apply([chatmodel(n, s) for n, s in specs.items()])
    env = {"CHATMODEL_NAMESPACES": NS}
    logs: list[OperatorProcess] = []
    stops: list[str] = []
    for rnd in range(ROUNDS):
        if rnd in CHANGES:
            name, change = CHANGES[rnd]
            cluster.kubectl(
                "patch", "chatmodel", name, "-n", NS, "--type=merge", "-p", json.dumps({"spec": change})
            )
            specs[name] = merge(specs[name], change)
        how = rng.choice(["kill", "kill", "term"])
        mid_reconcile, target = rng.random() < 0.6, rng.randint(1, 12)
        delay, down = rng.uniform(0.5, 6.0), rng.uniform(0.0, 2.0)
        with operator_process(
            cluster.kubeconfig, tmp_path / f"operator-{rnd:02d}.log", env, wait=False
        ) as op:
            logs.append(op)
            t0, before = time.monotonic(), recorder.writes()
            if mid_reconcile:  # right after the n-th write this process makes (start-up takes 2-3 s)
                while recorder.writes() - before < target and time.monotonic() - t0 < 12:
                    if op.proc.poll() is not None:
                        break
                    time.sleep(0.01)
            else:  # at a random time, start-up included
                time.sleep(delay)
            writes = recorder.writes() - before
            if op.proc.poll() is None:
                kill(op, how)
            else:
                how = exited_by_itself(op)
        point = f"after write {target}" if mid_reconcile else f"at {delay:.1f} s"
        stops.append(f"r{rnd} {how} {point}: {writes} writes in {time.monotonic() - t0:.1f} s")
        time.sleep(down)  # the controllers go on meanwhile (Jobs finish, pods get Ready)
    chaos_done = time.monotonic()

    with operator_process(cluster.kubeconfig, tmp_path / "operator-final.log", env) as final:
        logs.append(final)
        deadline, wrong = time.monotonic() + CONVERGE_SECONDS, ["not checked"]
        cms: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            wrong, cms = final_state(cluster)
            if not wrong:
                break
            time.sleep(1)
        assert not wrong, (
            f"not converged within {CONVERGE_SECONDS} s: {wrong}\n{describe(cluster, cms, final)}"
        )
        converged_at = time.monotonic()
        time.sleep(2)  # anything a late reconcile would still create or delete shows up now
        wrong, cms = final_state(cluster)
        assert not wrong, f"the end state did not hold: {wrong}\n{describe(cluster, cms, final)}"
    creates_after = recorder.creates()
    recorder.stop()
    events = recorder.snapshot()

    # Each name has one life: one uid, ever.
    uids: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in events:
        if e.kind in CHILDREN and e.uid not in uids[e.kind, e.name]:
            uids[e.kind, e.name].append(e.uid)
    created = {f"{e.kind}/{e.name}": e.created for e in events if e.kind in CHILDREN and e.type == "ADDED"}
    recreated = {f"{k}/{n}": u for (k, n), u in uids.items() if len(u) > 1}

    # No two objects of one kind live at once for the same ChatModel, component and version.
    live: dict[tuple[str, ...], set[str]] = defaultdict(set)
    overlaps: list[str] = []
    for e in events:
        if e.kind not in CHILDREN or VERSION not in e.labels:
            continue
        key = (e.kind, e.labels.get(NAME, ""), e.labels.get(COMPONENT, ""), e.labels[VERSION])
        if e.type == "DELETED":
            live[key].discard(e.uid)
        else:
            live[key].add(e.uid)
            if len(live[key]) > 1:
                overlaps.append(f"{key}: {sorted(live[key])}")

    # Deleted only by design: a pruned version's children (its version left status.versions).
    kept = {(n, v["name"]) for n, c in cms.items() for v in (c.get("status") or {}).get("versions") or []}
    deleted = [e for e in events if e.type == "DELETED" and e.kind in CHILDREN]
    undue = [
        f"{e.kind}/{e.name}"
        for e in deleted
        if (e.labels.get(NAME), e.labels.get(VERSION)) in kept
        or VERSION not in e.labels
        or e.labels.get(COMPONENT) == PRUNE_COMPONENT
    ]
    # ...and all of them: nothing of a pruned version stays (but its prune Job, kept an hour for its log).
    first_seen = {e.uid: e for e in reversed(events) if e.kind in CHILDREN}
    gone = {e.uid for e in deleted}
    left_behind = [
        f"{e.kind}/{e.name}"
        for e in first_seen.values()
        if VERSION in e.labels
        and (e.labels.get(NAME), e.labels[VERSION]) not in kept
        and e.labels.get(COMPONENT) != PRUNE_COMPONENT
        and e.uid not in gone
    ]
    pruned = sorted({(e.labels[NAME], e.labels[VERSION]) for e in deleted if VERSION in e.labels})
    # A pruned version's training Job goes with a prune Job for its artifacts (created once, like the rest).
    pruned_trained = {
        (e.labels[NAME], e.labels[VERSION])
        for e in deleted
        if e.kind == "Job" and e.labels.get(COMPONENT) == "training"
    }
    prune_jobs = {
        (e.labels.get(NAME), e.labels.get(VERSION))
        for e in first_seen.values()
        if e.kind == "Job" and e.labels.get(COMPONENT) == PRUNE_COMPONENT
    }

    # One ReplicaSet per Deployment: no restart made the operator change a pod template.
    deployments = {e.uid: e.name for e in first_seen.values() if e.kind == "Deployment"}
    replica_sets: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.kind == "ReplicaSet" and e.owner in deployments:
            replica_sets[deployments[e.owner]].add(e.name)
    rolled = {d: sorted(r) for d, r in replica_sets.items() if len(r) > 1}

    # The API server's own count of successful creates agrees with what the watches saw.
    delta = creates_after - creates_before
    server_created = {r: delta[r, 201] for r in RESOURCES.values()}
    # A create the server carried out may still be answered 504 (a timeout under load): those count as tries.
    server_tried = {
        r: sum(n for (res, code), n in delta.items() if res == r and code != 409) for r in server_created
    }
    per_kind = Counter(k for (k, _), u in uids.items() for _ in u)
    watched_created = {RESOURCES[k]: per_kind[k] for k in CHILDREN}
    conflicts = {r: delta[r, 409] for r in RESOURCES.values() if delta[r, 409]}
    troubles = Counter(
        found.group(0) for op in logs for line in op.lines() if (found := TROUBLE.search(line))
    )
    summary = {
        "rounds": ROUNDS,
        "stops": stops,
        "seconds": {
            "chaos": round(chaos_done - started, 1),
            "converge": round(converged_at - chaos_done, 1),
            "total": round(time.monotonic() - started, 1),
        },
        "created_by_kind": watched_created,
        "create_409_by_server": conflicts,
        "deleted": sorted(f"{e.kind}/{e.name}" for e in deleted),
        "prune_jobs": sorted(f"{n}/{v}" for n, v in prune_jobs),
        "operator_log_trouble": dict(troubles),
        "watch_errors": recorder.errors,
        "recreated": recreated,
        "replica_sets_per_deployment": dict(Counter(len(r) for r in replica_sets.values())),
    }
    print("\nchaos-real:", json.dumps(summary, indent=1))
    assert not recreated, f"created twice (uids per name): {recreated}; created at {created}"
    assert not overlaps, f"two live objects for one version: {overlaps}"
    assert not undue, f"deleted though not pruned: {undue}"
    assert pruned_trained <= prune_jobs, f"pruned without a prune Job: {pruned_trained - prune_jobs}"
    assert not left_behind, f"left behind by pruned versions: {left_behind}"
    # "moving" keeps one version: each switch prunes the one before (at least one, with its Job).
    assert any(n == "moving" for n, _ in pruned_trained), f"no version of moving pruned: {pruned}"
    assert not rolled, f"pod templates changed (a new ReplicaSet, pods replaced): {rolled}"
    assert not [e for e in recorder.errors if "watch error" in e], recorder.errors  # no gap (410)
    counts = f"server: {server_created} created, {server_tried} tried; watches: {watched_created}"
    assert all(server_created[r] <= watched_created[r] <= server_tried[r] for r in server_created), counts
    # The final operator, never interrupted, had no failing handler.
    assert not final.trouble(), final.trouble()
