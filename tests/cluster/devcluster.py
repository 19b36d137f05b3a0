"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes whose pods run through kwok's lifecycle stages), built by
`make install-cluster` from the published Go modules.

People: `make cluster` (= `python -m tests.cluster.devcluster up`) prints how to use it; `make cluster-down`.
Tests: tests/cluster/conftest.py starts the same once per test session.

No kubelet and no kube-proxy: pods are scheduled and go Running/Ready/Succeeded through kwok, but no
container starts and nothing answers on a cluster IP (README "A local control plane"). Pod logs do come
back through the API server (`kubectl logs`, pods/log): kwok serves them for its nodes from files a test
writes (`LocalCluster.write_pod_log`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chatmodel_serving.launch import free_port
from tests.cluster import build

HERE = Path(__file__).parent

ADMIN_TOKEN = "chatmodel-dev-admin-token"
SERVICE_CIDR = "10.0.0.0/24"
# Our own kwok stages (not kwok's): pods whose image says so fail, or never pull, so tests can make a
# training Job fail and a serving pod stay Pending the way a real node would report it.
TEST_STAGES = HERE / "stages.yaml"
UNPULLABLE_IMAGE = "kwok.invalid/pull-fails:1"
# Containers whose logs kwok serves: every pod's container of that name reads root/pod-logs/NAME.log.
LOGGED_CONTAINERS = ("download",)
# kwok manages only nodes with this annotation.
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
GPU_RESOURCE = "nvidia.com/gpu"


def node(name: str, gpus: int = 0) -> dict[str, Any]:
    """A kwok node: 16 CPUs, 64 GiB, 110 pods; GPU nodes get nvidia.com/gpu capacity and its taint."""
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"}
    spec: dict[str, Any] = {}
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
        spec["taints"] = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict(KWOK_ANNOTATION)},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


NODES = [node("kwok-cpu-0"), node("kwok-cpu-1"), node("kwok-gpu-0", gpus=4)]


def hostpath_volume(name: str, size: str = "500Gi") -> dict[str, Any]:
    """A PersistentVolume that PVCs without a storage class bind to (no provisioner runs here)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"chatmodel.dev/dev-cluster": "pool"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/chatmodel-dev-cluster/{name}"},
        },
    }


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    """A CA, the API server's serving certificate (loopback SANs) and the service-account key pair."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=chatmodel-dev-ca", cwd=d)  # fmt: skip
    sans = "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=kube-apiserver", "-addext", sans, cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "3650", "-copy_extensions", "copy", cwd=d)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    # token,user,uid,"group": the admin the tests and controllers use (system:masters).
    (d / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')


def kubeconfig(server: str, ca: Path, token: str, user: str = "admin") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": user, "namespace": "default"}}],
        "current-context": "dev",
    }


@dataclass
class LocalCluster:
    """The control plane's processes and files; `start()` returns once nodes are Ready."""

    root: Path
    bin: Path = field(default_factory=build.bin_dir)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.tool("kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out

    def apply(self, objects: list[dict[str, Any]], *args: str) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", *args,
                     input=yaml.safe_dump_all(objects))  # fmt: skip

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the process' life)
        # Own session: `down` and the fixture stop the whole group.
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait(self, what: str, ok: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{tail}")
            with contextlib.suppress(Exception):
                if ok():
                    return
            time.sleep(0.25)
        raise TimeoutError(f"dev cluster: {what} not within {timeout:.0f} s (logs in {self.root})")

    def _readyz(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.root / "ca.crt"))
        req = urllib.request.Request(
            self.server + "/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)

    def _start_etcd_and_api_server(self, d: Path) -> None:
        # A port checked free can still be taken before the child binds it (seen once in CI: etcd's):
        # such a start is retried on fresh ports; any other failure is the real one.
        for attempt in range(3):
            etcd_port, peer_port, api_port = distinct_free_ports(3)
            self.server = f"https://127.0.0.1:{api_port}"
            self._spawn("etcd", [
                self.tool("etcd"), "--name", "dev", "--data-dir", str(d / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"dev=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync", "--log-level", "warn",
            ])  # fmt: skip
            self._spawn("kube-apiserver", [
                self.tool("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                # 1.37 refuses a loopback advertise address with the default endpoint reconciler.
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={d / 'server.crt'}", f"--tls-private-key-file={d / 'server.key'}",
                f"--client-ca-file={d / 'ca.crt'}", f"--token-auth-file={d / 'tokens.csv'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--allow-privileged=true", "--profiling=false",
                # kwok's nodes have a Hostname address nothing resolves: logs go to their InternalIP.
                "--kubelet-preferred-address-types=InternalIP",
            ])  # fmt: skip
            self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.server, d / "ca.crt", ADMIN_TOKEN)))
            try:
                self._wait("the API server's /readyz", self._readyz, timeout=90)
                return
            except RuntimeError as e:
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                self.stop()
                shutil.rmtree(d / "etcd", ignore_errors=True)

    def start(self) -> LocalCluster:
        missing = [b for b in build.BINARIES if not (self.bin / b).is_file()]
        if missing:
            raise FileNotFoundError(
                f"control-plane binaries missing ({', '.join(missing)}): run `make install-cluster`"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        d = self.root
        make_certificates(d)
        self._start_etcd_and_api_server(d)
        kc = f"--kubeconfig={self.kubeconfig}"
        self._spawn("kube-controller-manager", [
            self.tool("kube-controller-manager"), kc, f"--service-account-private-key-file={d / 'sa.key'}",
            # A leaf self-signed certificate here breaks the trust-bundle publisher: the CA.
            f"--root-ca-file={d / 'ca.crt'}", "--use-service-account-credentials",
            "--leader-elect=false", "--secure-port=0", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
        ])  # fmt: skip
        self._spawn(
            "kube-scheduler", [self.tool("kube-scheduler"), kc, "--leader-elect=false", "--secure-port=0"]
        )
        configs = [str(self.kwok_stages()), str(TEST_STAGES), str(self.kwok_logs())]
        # kwok answers the API server's kubelet requests (logs) for every node on one loopback port;
        # the API server does not check a kubelet's certificate without --kubelet-certificate-authority.
        kubelet_port = free_port()
        self._spawn("kwok", [
            self.tool("kwok"), kc, *(f"--config={c}" for c in configs), "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", "--cidr=10.244.0.0/16",
            "--node-lease-duration-seconds=40", "--node-ip=127.0.0.1", f"--node-port={kubelet_port}",
            f"--server-address=127.0.0.1:{kubelet_port}",
            f"--tls-cert-file={d / 'server.crt'}", f"--tls-private-key-file={d / 'server.key'}",
        ])  # fmt: skip
        self.apply([*NODES, *(hostpath_volume(f"pool-{i}") for i in range(24))])
        self._wait("Ready nodes", self._nodes_ready, timeout=60)
        # The service-account controller makes "default" in each namespace; pods need it.
        self._wait("the default ServiceAccount", lambda: self.kubectl("get", "sa", "default").returncode == 0)
        (d / "pids.json").write_text(
            json.dumps({n: [p.pid, started_at(p.pid)] for n, p in self.procs.items()})
        )
        return self

    def kwok_stages(self) -> Path:
        """kwok's own stages, but its pod-ready passes over pods whose image cannot be pulled: a pod stays
        Pending then, and pod-ready would take it from there to Ready."""
        docs = list(yaml.safe_load_all((self.bin / build.STAGES_FILE).read_text()))
        for stage in docs:
            if stage["metadata"]["name"] == "pod-ready":
                stage["spec"]["selector"]["matchExpressions"].append(
                    {"key": ".spec.containers.[].image", "operator": "NotIn", "values": [UNPULLABLE_IMAGE]}
                )
        out = self.root / "kwok-stages.yaml"
        out.write_text(yaml.safe_dump_all(docs))
        return out

    def kwok_logs(self) -> Path:
        """kwok's ClusterLogs: each LOGGED_CONTAINERS container, in any pod, reads its file."""
        (self.root / "pod-logs").mkdir(exist_ok=True)
        docs = []
        for name in LOGGED_CONTAINERS:
            self.pod_log(name).touch()
            logs = [{"containers": [name], "logsFile": str(self.pod_log(name))}]
            docs.append({
                "apiVersion": "kwok.x-k8s.io/v1alpha1",
                "kind": "ClusterLogs",
                "metadata": {"name": f"{name}-logs"},
                "spec": {"selector": {}, "logs": logs},
            })  # fmt: skip
        out = self.root / "kwok-logs.yaml"
        out.write_text(yaml.safe_dump_all(docs))
        return out

    def pod_log(self, container: str) -> Path:
        return self.root / "pod-logs" / f"{container}.log"

    def write_pod_log(self, container: str, lines: list[str]) -> None:
        """What `kubectl logs` shows for that container from now on, in the CRI format kubelets keep."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        text = "".join(f"{now} stdout F {line}\n" for line in lines)
        tmp = self.pod_log(container).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.pod_log(container))

    def _nodes_ready(self) -> bool:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = [
            n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True" for c in _conditions(n))
        ]
        return len(ready) == len(NODES)

    def stop(self) -> None:
        # One at a time in reverse start order: kube-apiserver hangs on an etcd that went first.
        for p in reversed(list(self.procs.values())):
            end_group(p.pid, lambda p=p: p.poll() is not None)
            p.wait(timeout=10)
        self.procs.clear()


def distinct_free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def eventually(what: str, ok: Any, why: Any = lambda: "", timeout: float = 90.0) -> Any:
    """ok()'s first truthy answer, polled; else an AssertionError saying what did not come, and why()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{why()}")


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def started_at(pid: int) -> str:
    """The process' start time in clock ticks since boot (/proc/PID/stat field 22): a reused pid differs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def end_group(pid: int, ended: Any, grace: float = 10.0) -> None:
    """SIGTERM to the process group of pid, then SIGKILL if `ended()` is still false after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if ended():
                return
            time.sleep(0.1)


def default_dir() -> Path:
    return Path(
        os.environ.get("CHATMODEL_DEV_CLUSTER_DIR") or Path(tempfile.gettempdir()) / "chatmodel-dev-cluster"
    )


def up(root: Path) -> None:
    if (root / "pids.json").exists():
        down(root)
    shutil.rmtree(root, ignore_errors=True)
    cluster = LocalCluster(root).start()
    kubectl = cluster.tool("kubectl")
    print(f"dev cluster up: API server {cluster.server}, logs in {root}")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  export PATH={cluster.bin}:$PATH   # kubectl {build.K8S_VERSION}, helm, kwok")
    print(f"  {kubectl} --kubeconfig {cluster.kubeconfig} get nodes")
    print("  kwok's pods run no containers: run the operator here, `.venv/bin/python -m chatmodel_operator`")
    print("  stop it: make cluster-down")


def down(root: Path) -> None:
    pids = root / "pids.json"
    if not pids.exists():
        print(f"dev cluster: none running in {root}")
        return
    for pid, started in reversed(list(json.loads(pids.read_text()).values())):
        if started_at(pid) == started:  # still our process, not a reused pid
            end_group(pid, lambda pid=pid, started=started: started_at(pid) != started)
    pids.unlink()
    print(f"dev cluster in {root} stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument(
        "--dir", type=Path, default=default_dir(), help="state folder (kubeconfig, certs, logs)"
    )
    args = parser.parse_args(argv)
    try:
        (up if args.command == "up" else down)(args.dir)
    except (FileNotFoundError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
