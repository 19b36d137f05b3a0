"""RBAC covers exactly what the operator does: run kopf and our client against kmock through a ChatModel's
whole life (fine-tune, serve, scale, new version, failure, deletion), map every request to (group, resource,
verb), and compare with the declared list (chatmodel_operator/rbac.py) and the chart's rendered rules."""

from __future__ import annotations

from typing import Any

from chart_render import ROOT, render_objects
from operator_kmock import Cluster, declare, eventually, operator, path
from test_chart_render import grants
from test_operator_lifecycle import CM, FINE_TUNE, NS, finish_job, make_ready, manifest, phase_is, version

from chatmodel_operator import rbac
from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import load_manifests

Triple = tuple[str, str, str]


VERB_OF_METHOD = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def verb(r: Any) -> str:
    """The RBAC verb of a request: list and watch are GETs of a collection."""
    action = str(r.action.value).lower() if r.action else ""
    return action if action in ("list", "watch") else VERB_OF_METHOD[str(r.method.value).upper()]


def requested(emulator: Any) -> set[Triple]:
    """(group, resource[/subresource], verb) of every resource request the operator sent (kopf's client
    says User-Agent kopf/...; the test's own requests do not). Discovery (/api, /apis) is a non-resource
    URL that every authenticated user may read (system:discovery), so it needs no rule."""
    out = set()
    for r in emulator:
        if not r.headers.get("User-Agent", "").startswith("kopf/"):
            continue
        if r.resource is None or r.resource.plural is None:
            continue
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        out.add((r.resource.group or "", resource, verb(r)))
    return out


async def restored(c: Cluster, url: str, change: dict[str, Any]) -> bool:
    live = (await c.get(url) or {}).get("spec", {})
    return all(live.get(k) != v for k, v in change["spec"].items())


async def lifecycle(c: Cluster) -> None:
    v1 = version("m", FINE_TUNE)
    async with operator(c.k):
        await c.create(CM, manifest("m", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"m-{v1}-train")))
        await finish_job(c, f"m-{v1}-train", ok=True, message="{}")
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"m-{v1}")))
        await make_ready(c, f"m-{v1}")
        await eventually(lambda: phase_is(c, "m", "Ready"))
        # Autoscaling and a disruption budget come with more replicas.
        await c.patch(f"{CM}/m", {"spec": {"serving": {"replicas": {"min": 2, "max": 4}}}})
        await eventually(lambda: c.get(path("policy/v1", "poddisruptionbudgets", NS, f"m-{v1}")))
        await eventually(lambda: c.get(path("autoscaling/v2", "horizontalpodautoscalers", NS, f"m-{v1}")))
        # A failing fine-tune posts a Warning and Failed.
        vb = version("bad", FINE_TUNE)
        await c.create(CM, manifest("bad", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"bad-{vb}-train")))
        await finish_job(c, f"bad-{vb}-train", ok=False, message="dataset line 3: not valid JSON")
        await eventually(lambda: phase_is(c, "bad", "Failed"))
    # While the operator is down, someone edits its children; the restarted operator finds them (get) and
    # puts them back (patch). Then a model change moves the Service to a new version.
    drift = {
        path("apps/v1", "deployments", NS, f"m-{v1}"): {"spec": {"revisionHistoryLimit": 7}},
        path("autoscaling/v2", "horizontalpodautoscalers", NS, f"m-{v1}"): {"spec": {"maxReplicas": 9}},
        path("policy/v1", "poddisruptionbudgets", NS, f"m-{v1}"): {"spec": {"maxUnavailable": 2}},
    }
    for url, change in drift.items():
        await c.patch(url, change)
    async with operator(c.k):
        for url, change in drift.items():
            await eventually(lambda url=url, change=change: restored(c, url, change))
        new_ft = {"fineTune": {**FINE_TUNE["fineTune"], "dataset": {"source": "pvc://data/v2.jsonl"}}}
        await c.patch(f"{CM}/m", {"spec": new_ft})
        v2 = version("m", {**new_ft, "serving": {"replicas": {"min": 2, "max": 4}}})
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"m-{v2}-train")))
        await finish_job(c, f"m-{v2}-train", ok=True, message="{}")
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"m-{v2}")))
        await make_ready(c, f"m-{v2}", replicas=2)
        await eventually(lambda: phase_is(c, "m", "Ready"))

        async def gone(url: str) -> bool:
            return await c.get(url) is None

        await eventually(lambda: gone(path("apps/v1", "deployments", NS, f"m-{v1}")))
        await c.delete(f"{CM}/m")
        await eventually(lambda: gone(path("v1", "persistentvolumeclaims", NS, "m-artifacts")))


async def test_rbac_allows_every_request_and_nothing_unused(kmock: Any) -> None:
    declare(kmock)
    c = Cluster(kmock)
    await lifecycle(c)
    ours = requested(kmock)
    declared = rbac.grants()
    assert ours - declared == set(), "requests the declared RBAC does not allow"
    admission = rbac.grants(a for a in rbac.ACCESS if a.admission_only)
    assert declared - ours == admission, "declared permissions the operator never used"
    # ...and the chart grants exactly the declared list, in either scope.
    (role,) = [o for o in render_objects() if o["kind"] == "ClusterRole"]
    assert grants(role) == declared
    scoped = render_objects({"rbac": {"scope": "namespaced"}, "watchNamespaces": [NS]})
    assert set().union(*(grants(o) for o in scoped if o["kind"] in ("Role", "ClusterRole"))) == declared


def test_every_kind_the_builders_emit_has_a_row() -> None:
    """A new child kind without its row would fail here before it fails in a cluster."""
    plurals = rbac.plurals()
    for sample in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        for cm in load_manifests(sample):
            for obj in all_objects(cm, Config()):
                group = obj["apiVersion"].rpartition("/")[0]
                for verb in ("create", "delete"):
                    assert (group, plurals[obj["kind"]], verb) in rbac.grants(), (sample.name, obj["kind"])
