"""A bounded load script: a fixed number of chat requests (streaming and not, mixed lengths) from a fixed
number of concurrent clients against a server on THIS machine, stopping at a count or a time limit,
whichever comes first. It reports every request's outcome and the server's resident memory over the run.

    python -m tests.bench.soak                      # starts `chatmodel serve` on the shipped model
    python -m tests.bench.soak --url http://127.0.0.1:8000/v1 --pid 1234 --requests 2000

Loopback only: it refuses any other host, so it can never be pointed at someone else's server.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlparse

import httpx

from tests.bench.load import PROMPTS


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}  # an IP address string
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"soak: {url} is not a loopback address; this script only loads a local server")


def rss_mb(pid: int) -> float:
    """Resident set size of a process and its children (Triton's backend stubs are children)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


class SoakSummary(TypedDict):
    sent: int
    statuses: dict[str, int]
    seconds: float
    rss_mb: list[float]
    answered: int
    rss_warm_mb: float
    rss_end_mb: float
    rss_growth_mb: float


@dataclass
class Soak:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    rss_mb: list[float] = field(default_factory=list)  # one sample per finished batch of `concurrency`

    @property
    def answered(self) -> int:
        return self.statuses["200"]

    def summary(self) -> SoakSummary:
        """RSS climbs while allocator caches fill, then is noisy batch to batch: compare the highest sample
        of the first half (warm) with the highest of the last quarter, so only sustained growth counts."""
        quarter = max(1, len(self.rss_mb) // 4)
        warm = max(self.rss_mb[: max(1, len(self.rss_mb) // 2)], default=0.0)
        end = max(self.rss_mb[-quarter:], default=0.0)
        return SoakSummary(
            sent=self.sent,
            statuses=dict(self.statuses),
            seconds=self.seconds,
            rss_mb=[round(x, 1) for x in self.rss_mb],
            answered=self.answered,
            rss_warm_mb=round(warm, 1),
            rss_end_mb=round(end, 1),
            rss_growth_mb=round(end - warm, 1),
        )


def one_request(http: httpx.Client, url: str, model: str, i: int) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": 4 + (i * 7) % 20,
        "temperature": 0.7,
        "stream": i % 2 == 0,
    }
    try:
        with http.stream("POST", f"{url}/chat/completions", json=body) as r:
            text = r.read().decode()
            if r.status_code == 200 and body["stream"] and not text.rstrip().endswith("data: [DONE]"):
                return "incomplete-stream"
            return str(r.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def soak(
    url: str,
    model: str,
    pid: int,
    requests: int = 200,
    concurrency: int = 16,
    max_seconds: float = 300.0,
    api_key: str = "none",
) -> Soak:
    require_loopback(url)
    result = Soak()
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(headers=headers, timeout=300) as http, ThreadPoolExecutor(concurrency) as pool:
        while result.sent < requests and time.monotonic() - start < max_seconds:
            batch = range(result.sent, min(requests, result.sent + concurrency))
            result.statuses.update(pool.map(lambda i: one_request(http, url, model, i), batch))
            result.sent += len(batch)
            result.rss_mb.append(rss_mb(pid))
    result.seconds = round(time.monotonic() - start, 1)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="the server's /v1 URL (default: start one on the shipped model)")
    ap.add_argument("--pid", type=int, help="the server's process id, to sample its RSS (with --url)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()

    def run(url: str, pid: int) -> Soak:
        return soak(url, args.model, pid, args.requests, args.concurrency, args.max_seconds, args.api_key)

    if args.url:
        if args.pid is None:
            ap.error("--pid is needed with --url (the RSS to watch)")
        result = run(args.url, args.pid)
    else:
        from chatmodel_serving.launch import ServerProcess

        with ServerProcess([]) as srv:
            assert srv.proc is not None
            result = run(srv.url, srv.proc.pid)
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.answered == result.sent else 1


if __name__ == "__main__":
    raise SystemExit(main())
