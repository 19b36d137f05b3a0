"""Start a `chatmodel serve` process and wait until it is ready: used by the demo, tests and benchmarks."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Self


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the ephemeral range: one the kernel hands out (bind to 0) can be taken
    by any outgoing connection before the child process binds it (seen once: an API server's port)."""
    top = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(top, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReadyProcess:
    """A child process that counts as started once a URL answers 200; stopped with SIGTERM (then SIGKILL).
    Subclasses say what to run and where readiness is."""

    what = "process"
    ssl_context: ssl.SSLContext | None = None  # for an HTTPS readiness URL

    def __init__(self, log_path: Path | None = None, ready_timeout: float = 300.0):
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self) -> Self:
        self._log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        out = self._log or subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out, env=self.environment())
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2, context=self.ssl_context) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.what} not ready after {self.ready_timeout}s; log: {self.log_path}")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(ReadyProcess):
    """`with ServerProcess(["--model", src]) as srv:` … srv.url is http://127.0.0.1:PORT/v1."""

    what = "chatmodel serve"

    def __init__(
        self,
        args: list[str],
        port: int | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 300.0,
        tls_ca: Path | None = None,
        subcommand: str = "serve",  # or "run" (args: a manifest and run's options)
    ):
        super().__init__(log_path, ready_timeout)
        self.port = port or free_port()
        self.args = args
        self.subcommand = subcommand
        self.env = {**os.environ, **(env or {})}
        self.scheme = "https" if tls_ca else "http"  # the server gets --tls-* in args; this trusts its CA
        if tls_ca:
            self.ssl_context = ssl.create_default_context(cafile=str(tls_ca))

    def command(self) -> list[str]:
        cli = [sys.executable, "-m", "chatmodel_serving.cli", self.subcommand]
        return [*cli, "--port", str(self.port), *self.args]

    def environment(self) -> dict[str, str]:
        return self.env

    @property
    def ready_url(self) -> str:
        return f"{self.base}/ready"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"
