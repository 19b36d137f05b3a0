"""The "restricted" Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
checked on a pod spec the way the admission controller would."""

from __future__ import annotations

from typing import Any, cast

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
ALLOWED_VOLUMES |= {"projected", "secret"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec: dict[str, Any] = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return cast(dict[str, Any], spec["jobTemplate"]["spec"]["template"]["spec"])
    return cast(dict[str, Any] | None, spec.get("template", {}).get("spec"))


def violations(pod: dict[str, Any]) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            out.append(f"{host} must be false")
    for vol in pod.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {vol['name']} uses {kinds - ALLOWED_VOLUMES}")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        csc = c.get("securityContext", {})
        name = c["name"]
        if csc.get("privileged"):
            out.append(f"{name}: privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot must be true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in SECCOMP_OK:
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: only NET_BIND_SERVICE may be added")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out
