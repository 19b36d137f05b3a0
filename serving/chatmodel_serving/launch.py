"""Start a `chatmodel serve` process and wait until it is ready: used by the demo, tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`with ServerProcess(["--model", src]) as srv:` … srv.url is http://127.0.0.1:PORT/v1."""

    def __init__(
        self,
        args: list[str],
        port: int | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 300.0,
    ):
        self.port = port or free_port()
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "chatmodel_serving.cli", "serve", "--port", str(self.port), *self.args]
        self._log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        out = self._log or subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=self.env)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.base}/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not ready after {self.ready_timeout}s; log: {self.log_path}")

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
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
