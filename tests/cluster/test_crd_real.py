"""Must-show 1 and 2 of the real-cluster issue: the CRD on a real kube-apiserver."""

from __future__ import annotations

import json

import yaml

from tests.cluster.devcluster import LocalCluster

DEFAULTS_ONLY = {
    "apiVersion": "chatmodel.dev/v1alpha1",
    "kind": "ChatModel",
    "metadata": {"name": "plain"},
    "spec": {},
}


def test_crd_established_with_printer_columns_and_explain(cluster: LocalCluster) -> None:
    crd = json.loads(cluster.kubectl("get", "crd", "chatmodels.chatmodel.dev", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    explained = cluster.kubectl("explain", "chatmodel.spec.serving", "--recursive").stdout
    serving = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "serving"
    ]
    for name in serving["properties"]:
        assert f"  {name}\t" in explained or f"  {name} " in explained, name
    doc = cluster.kubectl("explain", "chatmodel.spec.serving.replicas.min").stdout
    assert "kubectl scale" in doc


def test_scale_subresource_on_a_defaults_only_chatmodel(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "scale-test")
    cluster.apply([DEFAULTS_ONLY], "-n", "scale-test")
    got = json.loads(cluster.kubectl("get", "chm", "plain", "-n", "scale-test", "-o", "json").stdout)
    assert got["spec"]["serving"]["replicas"] == {"min": 1}  # the server filled the defaults in
    cluster.kubectl("scale", "chm/plain", "-n", "scale-test", "--replicas=3")
    got = json.loads(cluster.kubectl("get", "chm", "plain", "-n", "scale-test", "-o", "json").stdout)
    assert got["spec"]["serving"]["replicas"]["min"] == 3
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", "/apis/chatmodel.dev/v1alpha1/namespaces/scale-test/chatmodels/plain/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3
    # An explicit max still bounds it, through the CEL rule, naming the field.
    cluster.kubectl(
        "patch",
        "chm/plain",
        "-n",
        "scale-test",
        "--type=merge",
        "-p",
        '{"spec":{"serving":{"replicas":{"max":4}}}}',
    )
    refused = cluster.kubectl("scale", "chm/plain", "-n", "scale-test", "--replicas=5", check=False)
    assert refused.returncode != 0 and "spec.serving.replicas.min must be <= max" in refused.stderr


def test_printer_columns(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "columns-test")
    cluster.apply([DEFAULTS_ONLY], "-n", "columns-test")
    header = cluster.kubectl("get", "chm", "-n", "columns-test").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "VERSION", "READY", "ENDPOINT", "AGE"]
    assert yaml.safe_load(cluster.kubectl("get", "chatmodels.chatmodel.dev", "-A", "-o", "yaml").stdout)[
        "items"
    ]
