"""A real Prometheus (Debian's binary) scraping given targets every second, for PromQL tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from chatmodel_serving.launch import free_port
from tests.tools import need_binary

SCRAPE_SECONDS = 1


@contextlib.contextmanager
def prometheus(tmp: Path, targets: list[tuple[str, dict[str, str]]]) -> Iterator[str]:
    """Start Prometheus on `targets` (host:port, the labels Kubernetes service discovery would attach)."""
    binary = need_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {"job_name": "chatmodel", "static_configs": [{"targets": [t], "labels": lb} for t, lb in targets]}
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
    args = [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}"]
    args += [f"--web.listen-address=127.0.0.1:{port}"]
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus did not start; log: {tmp / 'prometheus.log'}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def query(url: str, expr: str) -> float | None:
    """An instant query's single value (None for no data), synchronously, for tests."""
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}") as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None
