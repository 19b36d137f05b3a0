"""spec.access on every runtime: quotas and TLS reach the server's flags, the certificate is mounted
read-only where it is used, probes speak HTTPS, the endpoint says https, keys come only from Secrets; bad
settings are refused by the CRD and the model, naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from chatmodel_operator.builders import all_objects, deployment
from chatmodel_operator.builders.meta import COMPONENT_LABEL, NAME_LABEL
from chatmodel_operator.config import Config
from chatmodel_operator.observe import DeploymentObs
from chatmodel_operator.plan import plan
from chatmodel_operator.spec import Access, ChatModel, model_version, parse_manifest
from tests.operator.operator_crdcheck import validate
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate as schema_validate

ACCESS = {
    "apiKeySecretRef": {"name": "bot-keys"},
    "quota": {"requestsPerMinute": 60, "tokensPerMinute": 20000},
    "tls": {"secretName": "bot-tls"},
}
BASE: dict[str, Any] = {
    "apiVersion": "chatmodel.dev/v1alpha1",
    "kind": "ChatModel",
    "metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1"},
    "spec": {"access": ACCESS},
}


def chatmodel(runtime: str, access: dict[str, Any] = ACCESS) -> ChatModel:
    doc = copy.deepcopy(BASE)
    doc["spec"] = {"access": access, "serving": {"runtime": runtime}}
    assert validate(doc) == []
    return ChatModel.model_validate(doc)


def containers(cm: ChatModel) -> dict[str, dict[str, Any]]:
    pod = deployment(cm, "v1", Config())["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


@pytest.mark.parametrize("runtime", ["pytorch", "triton"])
def test_quota_and_tls_reach_our_api_front(runtime: str) -> None:
    server = containers(chatmodel(runtime))["server"]
    args = " ".join(server["args"])
    assert "--requests-per-minute 60" in args and "--tokens-per-minute 20000" in args
    assert "--tls-cert-file /etc/chatmodel/tls/tls.crt --tls-key-file /etc/chatmodel/tls/tls.key" in args
    tls = next(m for m in server["volumeMounts"] if m["name"] == "tls")
    assert tls["readOnly"] and tls["mountPath"] == "/etc/chatmodel/tls"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS"
    if runtime == "triton":  # Triton neither checks keys nor serves TLS: it gets neither Secret
        assert {m["name"] for m in containers(chatmodel(runtime))["triton"]["volumeMounts"]}.isdisjoint(
            {"tls", "api-keys"}
        )


def test_vllm_gets_tls_through_its_own_flags_and_refuses_quotas() -> None:
    access = {k: v for k, v in ACCESS.items() if k != "quota"}
    server = containers(chatmodel("vllm", access))["server"]
    args = server["args"]
    assert args[args.index("--ssl-certfile") + 1] == "/etc/chatmodel/tls/tls.crt"
    assert args[args.index("--ssl-keyfile") + 1] == "/etc/chatmodel/tls/tls.key"
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    doc = copy.deepcopy(BASE)
    doc["spec"]["serving"] = {"runtime": "vllm"}
    assert any("spec.access.quota" in e for e in validate(doc))
    with pytest.raises(ValidationError, match=r"spec\.access\.quota"):
        parse_manifest(doc)


@pytest.mark.parametrize("runtime", ["pytorch", "triton", "vllm"])
def test_rendered_objects_are_valid_restricted_and_hold_no_key(runtime: str) -> None:
    access = ACCESS if runtime != "vllm" else {k: v for k, v in ACCESS.items() if k != "quota"}
    for obj in all_objects(chatmodel(runtime, access), Config()):
        schema_validate(obj)
        pod = pod_spec_of(obj)
        if pod is not None:
            assert violations(pod) == [], obj["kind"]
            for c in pod["containers"]:
                for env in c.get("env", []):  # a key may only arrive by reference, never as a value
                    assert "KEY" not in env["name"] or "valueFrom" in env, env


def test_the_api_has_no_field_for_a_literal_key() -> None:
    """Keys live in Secrets only: nothing in the ChatModel can hold one (and `apiKey` is refused below)."""
    assert set(Access.model_fields) == {"api_key_secret_ref", "quota", "tls", "network_policy"}


def test_the_endpoint_says_https() -> None:
    cm = chatmodel("pytorch")
    v = model_version(cm.spec)
    ready = plan(cm, {}, {v: DeploymentObs(v, f"bot-{v}", 1, 1)}, Config(), "2026-01-01T00:00:00Z")
    assert ready.phase == "Ready" and ready.status["endpoint"] == "https://bot.team-a.svc:8000/v1"


def test_network_policy_admits_only_the_named_namespaces_and_pods() -> None:
    access = {
        **ACCESS,
        "networkPolicy": {"allowNamespaces": ["gateway", "monitoring"], "allowPodLabels": {"app": "ui"}},
    }
    cm = chatmodel("pytorch", access)
    policy = next(o for o in all_objects(cm, Config()) if o["kind"] == "NetworkPolicy")
    schema_validate(policy)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {NAME_LABEL: "bot", COMPONENT_LABEL: "serving"}
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    names = rule["from"][0]["namespaceSelector"]["matchExpressions"][0]
    assert names == {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["gateway", "monitoring"],
    }
    assert rule["from"][1] == {"podSelector": {"matchLabels": {"app": "ui"}}}
    # Nothing named: no ingress rule, so no one is admitted (an empty `from` would admit everyone).
    closed = chatmodel("pytorch", {**ACCESS, "networkPolicy": {}})
    policy = next(o for o in all_objects(closed, Config()) if o["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"] == [] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert not any(o["kind"] == "NetworkPolicy" for o in all_objects(chatmodel("pytorch"), Config()))


BAD = [
    ("zero-rpm", {"quota": {"requestsPerMinute": 0}}, "requestsPerMinute"),
    ("string-tpm", {"quota": {"tokensPerMinute": "lots"}}, "tokensPerMinute"),
    ("bad-secret-name", {"tls": {"secretName": "Not_A_Name"}}, "secretName"),
    ("tls-without-name", {"tls": {}}, "secretName"),
    ("literal-key", {"apiKey": "sk-123"}, "apiKey"),
    ("bad-namespace", {"networkPolicy": {"allowNamespaces": ["Gateway_NS"]}}, "allowNamespaces"),
    (
        "too-many-namespaces",
        {"networkPolicy": {"allowNamespaces": [f"n{i}" for i in range(33)]}},
        "allowNamespaces",
    ),
]


@pytest.mark.parametrize("case,extra,field", BAD, ids=[b[0] for b in BAD])
def test_bad_access_settings_are_refused_naming_the_field(
    case: str, extra: dict[str, Any], field: str
) -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["access"] = {"apiKeySecretRef": {"name": "bot-keys"}, **extra}
    assert any(field in e for e in validate(doc)), (case, validate(doc))
    with pytest.raises(ValidationError) as info:
        parse_manifest(doc)
    assert field in str(info.value) or field in json.dumps(info.value.errors(), default=str)
