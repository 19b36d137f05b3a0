"""Build the local control plane's binaries from their published Go modules (`make install-cluster`).

The versions live in the go.mod files under tests/cluster/tools/ (one module per tool, so each gets its
own dependency versions). Binaries go to a cache outside the clone, keyed by those files and the Go
version, so a second build on the same machine only checks that they are there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).parent / "tools"
K8S_VERSION = "v1.37.2"
# What each module builds: (package, binary name).
BUILDS: dict[str, list[tuple[str, str]]] = {
    "kubernetes": [
        ("go.etcd.io/etcd/server/v3", "etcd"),
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("k8s.io/kubernetes/cmd/kube-controller-manager", "kube-controller-manager"),
        ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
    ],
    "kwok": [("sigs.k8s.io/kwok/cmd/kwok", "kwok")],
    "helm": [("helm.sh/helm/v3/cmd/helm", "helm")],
}
# Without the stamp the server says v0.0.0-master and Helm refuses charts with a kubeVersion.
_MAJOR, _MINOR = K8S_VERSION[1:].split(".")[:2]
LDFLAGS = {
    "kubernetes": f"-X k8s.io/component-base/version.gitVersion={K8S_VERSION} "
    f"-X k8s.io/component-base/version.gitMajor={_MAJOR} -X k8s.io/component-base/version.gitMinor={_MINOR} "
    "-X k8s.io/component-base/version.gitTreeState=clean",
    "helm": "-X helm.sh/helm/v3/internal/version.version=v3.22.0",
    "kwok": "",
}
BINARIES = [name for builds in BUILDS.values() for _, name in builds]
# kwok ships its pod and node lifecycles as Stage files in its module; it finds none by itself.
KWOK_STAGES = [
    "node/fast/node-initialize.yaml",
    # Without a heartbeat the node controller marks nodes NotReady after 40 s and evicts the pods.
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",  # Job pods succeed
    "pod/fast/pod-delete.yaml",
]
STAGES_FILE = "kwok-stages.yaml"


def go_env() -> dict[str, str]:
    # The machine's own Go: a toolchain download is not wanted.
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}


def cache_root() -> Path:
    base = os.environ.get("CHATMODEL_CLUSTER_CACHE") or Path.home() / ".cache" / "chatmodel-cluster"
    return Path(base)


def bin_dir() -> Path:
    """The cache folder for exactly these versions: a hash of every go.mod/go.sum and the Go version."""
    digest = hashlib.sha256()
    for f in sorted(f for tool in BUILDS for f in (TOOLS / tool).glob("go.*")):
        digest.update(f.relative_to(TOOLS).as_posix().encode() + b"\0" + f.read_bytes())
    go = shutil.which("go")
    if go:
        digest.update(
            subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout.encode()
        )
    return cache_root() / f"{K8S_VERSION}-{digest.hexdigest()[:12]}" / "bin"


def module_dir(tool: str, module: str) -> Path:
    """Where the Go module cache unpacked `module` at the version tools/<tool>/go.mod pins."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=TOOLS / tool,
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def write_stages(target: Path) -> None:
    stage_root = module_dir("kwok", "sigs.k8s.io/kwok") / "kustomize" / "stage"
    text = "\n---\n".join((stage_root / f).read_text() for f in KWOK_STAGES)
    (target / (STAGES_FILE + ".partial")).write_text(text)
    os.replace(target / (STAGES_FILE + ".partial"), target / STAGES_FILE)


def build(verbose: bool = True) -> Path:
    target = bin_dir()
    missing = [b for b in BINARIES if not (target / b).is_file()]
    if not missing and (target / STAGES_FILE).is_file():
        return target
    if shutil.which("go") is None:
        sys.exit("install-cluster: `go` is not on PATH (Go 1.26 builds the control plane)")
    tmp = target.with_name("bin.partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for tool, builds in BUILDS.items():
        todo = [(pkg, name) for pkg, name in builds if name in missing]
        if not todo:
            continue
        started = time.monotonic()
        if verbose:
            print(f"install-cluster: building {', '.join(n for _, n in todo)} (cold: minutes)", flush=True)
        for pkg, name in todo:  # one `go build` per binary: -o FILE names it (etcd's package ends in /v3)
            cmd = ["go", "build", "-trimpath", "-ldflags", LDFLAGS[tool], "-o", str(tmp / name), pkg]
            subprocess.run(cmd, cwd=TOOLS / tool, env=go_env(), check=True)
        if verbose:
            print(f"install-cluster: {tool} built in {time.monotonic() - started:.0f} s", flush=True)
    target.mkdir(parents=True, exist_ok=True)
    for name in missing:
        os.replace(tmp / name, target / name)  # whole binaries only: a killed build leaves none half-written
    shutil.rmtree(tmp, ignore_errors=True)
    write_stages(target)
    return target


if __name__ == "__main__":
    started = time.monotonic()
    where = build()
    print(f"install-cluster: binaries in {where} ({time.monotonic() - started:.1f} s)")
