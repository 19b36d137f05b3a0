"""The bounded load script (tests/bench/soak.py) against a real server: every request answered whole and
the server's resident memory flat once warm (a per-request leak of KV cache, prompts or streams would grow
it by hundreds of MB over this run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatmodel_serving.launch import ServerProcess
from tests.bench.soak import require_loopback, soak

REQUESTS, CONCURRENCY = 192, 16
MAX_GROWTH_MB = 64


def test_soak_answers_every_request_and_keeps_rss_flat(tmp_path: Path) -> None:
    with ServerProcess(["--max-waiting-requests", str(CONCURRENCY)], log_path=tmp_path / "server.log") as srv:
        assert srv.proc is not None
        result = soak(srv.url, "smollm2-135m", srv.proc.pid, REQUESTS, CONCURRENCY, max_seconds=600)
    summary = result.summary()
    (tmp_path / "soak.json").write_text(json.dumps(summary, indent=2))
    print("soak:", json.dumps(summary))
    assert result.sent == REQUESTS, summary
    assert result.statuses == {"200": REQUESTS}, summary
    assert summary["rss_growth_mb"] < MAX_GROWTH_MB, summary


def test_soak_refuses_anything_but_loopback() -> None:
    require_loopback("http://127.0.0.1:8000/v1")
    require_loopback("http://localhost:8000/v1")
    with pytest.raises(SystemExit, match="not a loopback"):
        require_loopback("http://10.1.2.3:8000/v1")
