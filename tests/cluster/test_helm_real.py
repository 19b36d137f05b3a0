"""Must-show 3 of the real-cluster issue: the Helm chart as it is, CRDs included, installed by a real helm
into a real kube-apiserver (RBAC authorizer on), in cluster and in namespaced scope; the operator runs here
as the chart's ServiceAccount (a bound token) and carries ChatModels through their whole life with no
request refused. Then a rule taken out of the installed Role or ClusterRole is a 403 and a ChatModel that
does not progress: the RBAC the lifecycle passes with is what the real authorizer enforces."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatmodel_operator import rbac
from tests.cluster.devcluster import LocalCluster, eventually
from tests.cluster.operator_process import OperatorProcess, operator_process, service_account_kubeconfig

REPO = Path(__file__).parents[2]
CHART = REPO / "charts" / "chatmodel-operator"
SAMPLES = REPO / "manifests" / "samples"
CRD = "chatmodels.chatmodel.dev"
# Where each release's operator lives, and the namespaces its ChatModels are in.
CLUSTER_RELEASE, CLUSTER_TEAM = "helm-cluster-op", "helm-team-c"
NAMESPACED_RELEASE, NAMESPACED_TEAM = "helm-ns-op", "helm-team-a"
KINDS = "deployments,replicasets,pods,services,jobs,persistentvolumeclaims"


@dataclass
class Release:
    name: str
    namespace: str
    team: str  # where the test's ChatModels go
    scope: str
    service_account: str
    role: tuple[str, str]  # (kind, namespace or "") of the object that holds the namespaced rules
    role_name: str
    env: dict[str, str]  # what the chart's Deployment sets for the operator container

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def helm(cluster: LocalCluster, home: Path, *args: str) -> str:
    env = {**os.environ, **{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}}
    cmd = [cluster.tool("helm"), "--kubeconfig", str(cluster.kubeconfig), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, f"helm {' '.join(args)}: {out.stderr.strip()}"
    return out.stdout


def get_json(cluster: LocalCluster, *args: str) -> Any:
    out = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def install(
    cluster: LocalCluster, home: Path, name: str, team: str, values: dict[str, Any]
) -> Iterator[Release]:
    """`helm install` of the chart directory into namespace `name` (a release of that name), waiting for
    its Deployment; the CRD in crds/ is already there (conftest), so helm must take it as installed."""
    crd_before = get_json(cluster, "crd", CRD)
    values_file = home / f"{name}-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm(cluster, home, "install", name, str(CHART), "-n", name, "--create-namespace", "-f", str(values_file),
         "--wait", "--timeout", "90s")  # fmt: skip
    try:
        crd_after = get_json(cluster, "crd", CRD)
        assert crd_after is not None, "the chart's crds/ left no ChatModel CRD"
        if crd_before is not None:  # helm left the CRD it found alone
            assert crd_after["metadata"]["uid"] == crd_before["metadata"]["uid"]
        # ...and what is installed is the chart's CRD, field for field (server-side dry run).
        diff = cluster.kubectl(
            "diff", "--server-side", "-f", str(CHART / "crds" / f"{CRD}.yaml"), check=False
        )
        assert diff.returncode == 0, f"the live CRD differs from the chart's crds/:\n{diff.stdout[-3000:]}"
        objects = list(yaml.safe_load_all(helm(cluster, home, "get", "manifest", name, "-n", name)))
        objects = [o for o in objects if o]
        (dep,) = [o for o in objects if o["kind"] == "Deployment"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
        kind, ns = ("ClusterRole", "") if values["rbac"]["scope"] == "cluster" else ("Role", team)
        (role,) = [o for o in objects if o["kind"] == kind]
        # The chart's own pod: scheduled and Running on a kwok node (no container runs there).
        pods = get_json(cluster, "pods", "-n", name, "-l", f"app.kubernetes.io/instance={name}")["items"]
        assert [p["status"]["phase"] for p in pods] == ["Running"], [p["status"] for p in pods]
        yield Release(
            name, name, team, values["rbac"]["scope"], sa, (kind, ns), role["metadata"]["name"], env
        )
    finally:
        helm(cluster, home, "uninstall", name, "-n", name, "--wait", "--timeout", "60s")


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm")


@pytest.fixture(scope="module")
def cluster_release(cluster: LocalCluster, helm_home: Path) -> Iterator[Release]:
    cluster.kubectl("create", "namespace", CLUSTER_TEAM)
    yield from install(cluster, helm_home, CLUSTER_RELEASE, CLUSTER_TEAM, {"rbac": {"scope": "cluster"}})


@pytest.fixture(scope="module")
def namespaced_release(cluster: LocalCluster, helm_home: Path) -> Iterator[Release]:
    cluster.kubectl("create", "namespace", NAMESPACED_TEAM)  # the chart puts its Role there
    values = {"rbac": {"scope": "namespaced"}, "watchNamespaces": [NAMESPACED_TEAM]}
    yield from install(cluster, helm_home, NAMESPACED_RELEASE, NAMESPACED_TEAM, values)


@contextlib.contextmanager
def operator_as(cluster: LocalCluster, release: Release, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator, authenticated as the release's ServiceAccount, with the env its Deployment sets."""
    kc = service_account_kubeconfig(
        cluster, release.namespace, release.service_account, tmp_path / "sa.kubeconfig"
    )
    with operator_process(kc, tmp_path / "operator.log", release.env) as op:
        yield op


def denials(cluster: LocalCluster) -> float:
    """Requests the API server refused since it started (the authorization filter's own count: neither
    RBAC nor Node allowed them), whoever sent them."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    found = re.findall(r'^authorization_attempts_total\{result="(?:denied|no-opinion)"\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


def chatmodel(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    return get_json(cluster, "chatmodel", name, "-n", ns) or {}


def diagnosis(cluster: LocalCluster, ns: str, op: OperatorProcess, names: list[str]) -> str:
    status = {n: chatmodel(cluster, ns, n).get("status") for n in names}
    children = cluster.kubectl("get", KINDS, "-n", ns, check=False).stdout
    return f"status: {json.dumps(status, indent=1)}\n{children}\noperator log tail:\n{op.tail(3000)}"


def sample(file: str, ns: str) -> dict[str, Any]:
    cm: dict[str, Any]
    (cm,) = yaml.safe_load_all((SAMPLES / file).read_text())
    cm["metadata"]["namespace"] = ns
    return cm


def phase_is(cluster: LocalCluster, ns: str, name: str, phase: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        body = chatmodel(cluster, ns, name)
        return body if (body.get("status") or {}).get("phase") == phase else None

    return check


def status_written_through_the_subresource(body: dict[str, Any]) -> None:
    """Every manager that wrote status fields wrote them through /status (the CRD has the subresource;
    a write of .status to the main resource would be dropped by the server)."""
    writers = [m for m in body["metadata"]["managedFields"] if '"f:status"' in json.dumps(m.get("fieldsV1"))]
    assert writers, body["metadata"]["managedFields"]
    assert {m.get("subresource") for m in writers} == {"status"}, writers


def lifecycle(cluster: LocalCluster, op: OperatorProcess, ns: str) -> None:
    """What a user does with kubectl: a base model served, a fine-tuned one trained and served, both
    deleted; the real controllers and kwok do the rest."""
    base = sample("base-only.yaml", ns)
    # The quickstart's fine-tune, without its quality gate: kwok's training pods carry no trainer figures
    # in every stage set, and RBAC, not the gate, is what this test is about.
    tuned = sample("quickstart.yaml", ns)
    tuned["spec"].pop("rollout", None)
    names = [base["metadata"]["name"], tuned["metadata"]["name"]]

    def why() -> str:
        return diagnosis(cluster, ns, op, names)

    cluster.apply([base])
    body = eventually(f"{ns}/{names[0]} Ready", phase_is(cluster, ns, names[0], "Ready"), why)
    version = body["status"]["activeVersion"]
    dep = get_json(cluster, "deployment", f"{names[0]}-{version}", "-n", ns)
    assert dep["status"]["readyReplicas"] == 1, why()  # the real Deployment controller, kwok's pod
    svc = get_json(cluster, "service", names[0], "-n", ns)
    assert svc["spec"]["selector"]["chatmodel.dev/version"] == version
    with_fields = get_json(cluster, "chatmodel", names[0], "-n", ns, "--show-managed-fields")
    status_written_through_the_subresource(with_fields)

    cluster.apply([tuned])
    body = eventually(f"{ns}/{names[1]} Ready", phase_is(cluster, ns, names[1], "Ready"), why)
    version = body["status"]["activeVersion"]
    assert body["status"]["versions"][0]["fineTuned"] is True, why()
    job = get_json(cluster, "job", f"{names[1]}-{version}-train", "-n", ns)
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"]), why()
    assert "chatmodel.dev/result" in job["metadata"]["annotations"], why()  # the operator's patch of the Job
    pvc = get_json(cluster, "pvc", f"{names[1]}-artifacts", "-n", ns)
    assert pvc["status"]["phase"] == "Bound", why()
    assert get_json(cluster, "deployment", f"{names[1]}-{version}", "-n", ns)["status"]["readyReplicas"] == 1
    events = get_json(cluster, "events", "-n", ns, "--field-selector", f"involvedObject.name={names[1]}")
    assert "Ready" in {e["reason"] for e in events["items"]}, why()  # posted by the operator

    cluster.kubectl("delete", "chatmodel", *names, "-n", ns, "--wait=true", "--timeout=60s")

    def gone() -> bool:
        return not cluster.kubectl("get", KINDS, "-n", ns, "-o", "name").stdout.split()

    eventually(f"{ns}: every child gone", gone, why)


def check_clean(op: OperatorProcess, denied: float, cluster: LocalCluster) -> None:
    assert op.forbidden() == [], "the operator was refused:\n" + "\n".join(op.forbidden())
    failed = [line for line in op.lines() if "failed with an exception" in line or "Traceback" in line]
    assert failed == [], "handlers failed:\n" + "\n".join(failed) + f"\n{op.tail(3000)}"
    now = denials(cluster)
    assert now == denied, f"the API server refused {now - denied:.0f} requests during the lifecycle"


def json_documents(text: str) -> list[Any]:
    """kubectl create -o json prints one JSON document per object created, one after the other."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        doc, at = decoder.raw_decode(text, at)
        out.append(doc)
    return out


def check_grants(cluster: LocalCluster, release: Release) -> None:
    """The real authorizer's answer for every permission rbac.py declares for this scope, asked of it as
    SubjectAccessReviews for the ServiceAccount (cluster-scoped rows cluster-wide, the rest in the team
    namespace); and nothing beyond: Secrets only read one by one (hub tokens), no other namespace in
    namespaced scope."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{release.namespace}", "system:authenticated"]

    def review(group: str, resource: str, verb: str, ns: str) -> dict[str, Any]:
        plural, _, sub = resource.partition("/")
        attrs = {"group": group, "resource": plural, "subresource": sub, "verb": verb, "namespace": ns}
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": release.user, "groups": groups, "resourceAttributes": attrs}}  # fmt: skip

    wanted = [
        (a.group, a.resource, v, "" if a.cluster_scoped else release.team)
        for a in rbac.in_mode(release.scope)
        for v in a.verbs
    ]
    refused = [("", "secrets", v, release.team) for v in ("list", "watch", "create", "update")]
    if release.scope == "namespaced":
        refused += [("apps", "deployments", "create", "default"), ("chatmodel.dev", "chatmodels", "list", "")]
        refused += [("", "secrets", "get", "default")]
    asked = [review(*w) for w in wanted + refused]
    reviews = json.dumps({"apiVersion": "v1", "kind": "List", "items": asked})
    items = json_documents(cluster.kubectl("create", "-o", "json", "-f", "-", input=reviews).stdout)
    allowed = {w: bool(i["status"].get("allowed")) for w, i in zip(wanted + refused, items, strict=True)}
    assert [w for w in wanted if not allowed[w]] == [], f"declared in rbac.py, refused for {release.user}"
    assert [w for w in refused if allowed[w]] == [], f"allowed beyond the declared rules for {release.user}"


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_chart_install_and_a_whole_lifecycle_without_a_403(
    cluster: LocalCluster, request: pytest.FixtureRequest, tmp_path: Path, scope: str
) -> None:
    release: Release = request.getfixturevalue(f"{scope}_release")
    assert release.env["CHATMODEL_NAMESPACES"] == ("" if scope == "cluster" else NAMESPACED_TEAM)
    check_grants(cluster, release)
    denied = denials(cluster)
    with operator_as(cluster, release, tmp_path) as op:
        lifecycle(cluster, op, release.team)
        check_clean(op, denied, cluster)


def without(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    """`rules` with `verb` on `group`/`resource` taken out (the rest of its rule kept)."""
    out = []
    for rule in copy.deepcopy(rules):
        if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
            out.append(rule)
            continue
        others = [r for r in rule["resources"] if r != resource]
        if others:
            out.append({**rule, "resources": others})
        verbs = [v for v in rule["verbs"] if v != verb]
        if verbs:
            out.append({**rule, "resources": [resource], "verbs": verbs})
    return out


def can(cluster: LocalCluster, release: Release, *asked: str) -> bool:
    args = ["auth", "can-i", *asked, "--as", release.user, "-n", release.team]
    return cluster.kubectl(*args, check=False).stdout.strip() == "yes"


@contextlib.contextmanager
def rule_removed(
    cluster: LocalCluster, release: Release, group: str, resource: str, verb: str
) -> Iterator[Any]:
    """The installed Role/ClusterRole without one permission (as a hand edit or a chart bug would leave
    it); yields a function that puts it back. Waits until the authorizer answers accordingly."""
    kind, ns = release.role
    where = ["-n", ns] if ns else []
    rules = get_json(cluster, kind.lower(), release.role_name, *where)["rules"]
    asked = can_i_args(verb, group, resource)

    def put(new: list[dict[str, Any]], allowed: bool) -> None:
        patch = json.dumps([{"op": "replace", "path": "/rules", "value": new}])
        cluster.kubectl("patch", kind.lower(), release.role_name, *where, "--type=json", "-p", patch)
        eventually(f"the authorizer {'allows' if allowed else 'refuses'} {verb} {resource}",
                   lambda: can(cluster, release, *asked) == allowed, lambda: "", timeout=20)  # fmt: skip

    put(without(rules, group, resource, verb), allowed=False)
    restored = False

    def restore() -> None:
        nonlocal restored
        if not restored:
            put(rules, allowed=True)
            restored = True

    try:
        yield restore
    finally:
        restore()


def can_i_args(verb: str, group: str, resource: str) -> list[str]:
    plural, _, sub = resource.partition("/")
    return [verb, f"{plural}.{group}" if group else plural, *([f"--subresource={sub}"] if sub else [])]


@pytest.mark.parametrize(
    ("scope", "group", "resource", "verb", "name"),
    [
        # The Role in the watched namespace without create on Deployments: nothing gets served.
        ("namespaced", "apps", "deployments", "create", "refused-deploy"),
        # The ClusterRole without patch on chatmodels/status: the Deployment comes, the status never does.
        ("cluster", "chatmodel.dev", "chatmodels/status", "patch", "refused-status"),
    ],
)
def test_a_rule_taken_out_is_a_403_and_the_chatmodel_does_not_progress(
    cluster: LocalCluster,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    scope: str,
    group: str,
    resource: str,
    verb: str,
    name: str,
) -> None:
    release: Release = request.getfixturevalue(f"{scope}_release")
    ns = release.team
    cm = sample("base-only.yaml", ns)
    cm["metadata"]["name"] = name
    plural = resource.partition("/")[0]
    said = f'cannot {verb} resource "{resource}" in API group "{group}" in the namespace "{ns}"'
    denied = denials(cluster)
    with (
        rule_removed(cluster, release, group, resource, verb) as restore,
        operator_as(cluster, release, tmp_path) as op,
    ):

        def why() -> str:
            return diagnosis(cluster, ns, op, [name])

        cluster.apply([cm])
        eventually(f"a 403 for {verb} {resource}", lambda: any(said in line for line in op.forbidden()), why)
        assert release.user in op.forbidden()[0], op.forbidden()[0]
        assert denials(cluster) > denied, "the API server counted no refusal"
        body = chatmodel(cluster, ns, name)
        assert (body.get("status") or {}).get("phase") is None, why()  # no progress, and no status
        deployments = get_json(cluster, "deployments", "-n", ns, "-l", f"chatmodel.dev/name={name}")["items"]
        assert bool(deployments) == (plural != "deployments"), why()
        # The rule back: kopf's retries go through, and the ChatModel goes on to Ready.
        restore()
        eventually(f"{ns}/{name} Ready once the rule is back", phase_is(cluster, ns, name, "Ready"), why)
        cluster.kubectl("delete", "chatmodel", name, "-n", ns, "--wait=true", "--timeout=60s")
