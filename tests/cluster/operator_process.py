"""The operator as a process of its own (`python -m chatmodel_operator`) against the dev cluster, logged in
with a kubeconfig: the cluster's pods run no containers (kwok), so tests run the operator here, as the
identity they choose (a chart's ServiceAccount, through a bound token).

    kc = service_account_kubeconfig(cluster, "ops", "my-operator", tmp_path / "sa.kubeconfig")
    with operator_process(kc, tmp_path / "operator.log", {"CHATMODEL_NAMESPACES": "team"}) as op:
        ...  # op.forbidden() lists what the API server refused, op.tail() the log's end
    with running_operator(cluster.kubeconfig, log, namespaces=["team"]) as op:  # as admin
        op.pause()  # the operator "down" (SIGSTOP) without losing its state; op.resume()
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from chatmodel_serving.launch import free_port
from tests.cluster.devcluster import LocalCluster, kubeconfig

# kopf's log lines start with "[2026-01-02 03:04:05,403]": milliseconds are no HTTP status.
_TIMESTAMP = re.compile(r"^\[[^\]]*\]")
_FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)
# What a failing handler or request leaves in kopf's log, whatever the status code.
_TROUBLE = re.compile(r"Traceback|failed with an exception|Request attempt #\d+/\d+ failed|APIConflictError")


def service_account_kubeconfig(
    cluster: LocalCluster, namespace: str, name: str, path: Path, duration: str = "1h"
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a bound token (the
    TokenRequest API, as a pod's projected token), trusting the cluster's CA."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
    user = f"system:serviceaccount:{namespace}:{name}"
    path.write_text(yaml.safe_dump(kubeconfig(cluster.server, cluster.root / "ca.crt", token, user=user)))
    return path


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    health_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def lines(self, since: int = 0) -> list[str]:
        """Log lines from character offset `since` (a `len(op.text())` taken earlier)."""
        return self.text()[since:].splitlines()

    def forbidden(self, since: int = 0) -> list[str]:
        """Log lines that report a refused request (HTTP 403, Forbidden)."""
        return [line for line in self.lines(since) if _FORBIDDEN.search(_TIMESTAMP.sub("", line))]

    def trouble(self, since: int = 0) -> list[str]:
        """Log lines that report a failed handler, a retried request or a conflict."""
        return [line for line in self.lines(since) if _TROUBLE.search(line)]

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until kopf's liveness endpoint answers (its startup handlers have run); raises with the log's
        tail if the process exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.proc.returncode}):\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        raise TimeoutError(f"the operator's /healthz did not answer within {timeout:.0f} s:\n{self.tail()}")

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: the operator is as good as down (no reads, no writes), and resume() goes on."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (kopf stops its watches and handlers), then SIGKILL after `timeout`; the exit code."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused one handles its SIGTERM once continued
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


def operator_env(
    kubeconfig_path: Path, env: Mapping[str, str], metrics_port: int, health_port: int
) -> dict[str, str]:
    """This process's environment without its own KUBECONFIG or CHATMODEL_* settings, plus `env`; the
    ports are this machine's free ones (a chart's fixed pod ports would clash here)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATMODEL_") and k != "KUBECONFIG"}
    return {
        **base,
        **env,
        "KUBECONFIG": str(kubeconfig_path),
        "CHATMODEL_METRICS_PORT": str(metrics_port),
        "CHATMODEL_HEALTH_PORT": str(health_port),
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def operator_process(
    kubeconfig_path: Path, log: Path, env: Mapping[str, str] | None = None, wait: bool = True
) -> Iterator[OperatorProcess]:
    """Run `python -m chatmodel_operator` (this interpreter) logged in with `kubeconfig_path`, with the
    CHATMODEL_* settings in `env`, stdout and stderr appended to `log`; waits for /healthz unless `wait`
    is false, and stops it on leaving."""
    metrics_port, health_port = free_port(), free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatmodel_operator"],
            env=operator_env(kubeconfig_path, env or {}, metrics_port, health_port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches anything it starts
        )
    op = OperatorProcess(proc, log, metrics_port, health_port)
    try:
        if wait:
            op.wait_healthy()
        yield op
    finally:
        op.stop()


@contextlib.contextmanager
def running_operator(
    kubeconfig_path: Path,
    log: Path,
    namespaces: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    wait: bool = True,
) -> Iterator[OperatorProcess]:
    """operator_process() serving `namespaces` (CHATMODEL_NAMESPACES; none: every namespace)."""
    settings = {**(env or {}), "CHATMODEL_NAMESPACES": ",".join(namespaces)}
    with operator_process(kubeconfig_path, log, settings, wait=wait) as op:
        yield op
