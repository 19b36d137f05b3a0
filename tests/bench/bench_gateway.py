"""Gateway benchmark, one run, the same three `chatmodel serve` pods behind both sides:
- multi-turn chats (16 users x 5 turns, growing histories, each opening with its own long document):
  through `chatmodel gateway` (prefix affinity) against round-robin straight to the pods (what a plain
  Service gives), each side with conversations of its own so that neither finds the other's prefixes
  cached. p50 time to first token of each: `gateway.ttft_ratio_vs_round_robin` (target <= 0.5);
- the gateway's own cost: 2,000 one-token completions from 32 clients through it and straight to one pod,
  `gateway.added_latency_p50_ms` = the difference of the p50s (target <= 2), and its RSS before/after.
The namespace (ChatModel, EndpointSlices) is kmock's emulator, as in tests/serving/gateway.

    python -m tests.bench.bench_gateway [--model SRC] [--users 16] [--turns 5] [--requests 2000]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.bench.load import quantile
from tests.bench.memory import tree_rss_mb
from tests.bench.peers import MODEL
from tests.bench.results import record
from tests.serving.gateway.namespace import Emulator, GatewayProcess, Namespace, start_servers, wait_for

WORDS = [
    "tide",
    "harbour",
    "valve",
    "pressure",
    "filter",
    "warranty",
    "pump",
    "seal",
    "winter",
    "flow",
    "sensor",
    "reset",
    "manual",
]


def document(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def chats(urls: list[str], side: int, users: int, turns: int, words: int) -> list[float]:
    """TTFT of every turn; user u's requests go to urls[...] by round-robin over the whole run when several
    urls are given (one per pod), or all to the one url (the gateway)."""
    clients = [openai.OpenAI(base_url=u, api_key="none", max_retries=0, timeout=600) for u in urls]
    turn_counter = itertools.count()
    lock = threading.Lock()
    ttfts: list[float] = []

    def converse(user: int) -> None:
        history: list[Any] = [
            {
                "role": "user",
                "content": f"Read this: {document(side * 1000 + user, words)}. What is it about?",
            }
        ]
        for turn in range(turns):
            with lock:
                client = clients[next(turn_counter) % len(clients)]
            began, first, text = time.monotonic(), None, ""
            stream = client.chat.completions.create(
                model="bench", messages=history, max_tokens=16, temperature=0, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.monotonic()
                    text += chunk.choices[0].delta.content
            with lock:
                ttfts.append((first or time.monotonic()) - began)
            history += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": f"And then {turn}?"},
            ]

    with ThreadPoolExecutor(users) as pool:
        list(pool.map(converse, range(users)))
    return ttfts


def latencies(url: str, requests: int, clients: int) -> list[float]:
    out: list[float] = []
    lock = threading.Lock()
    body = {"model": "bench", "prompt": "hi", "max_tokens": 1}

    def worker(n: int) -> None:
        with httpx.Client(timeout=120) as c:
            for _ in range(n):
                began = time.monotonic()
                r = c.post(url + "/completions", json=body)
                r.raise_for_status()
                with lock:
                    out.append(time.monotonic() - began)

    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, share))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--words", type=int, default=300, help="words of each chat's opening document")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    serve = ["--model", args.model, "--served-model-name", "bench", "--max-waiting-requests", "256"]
    pods = start_servers(serve, 3, folder)
    try:
        with Emulator(folder / "kmock.log") as emu:
            ns = Namespace(emu.url)
            ns.chatmodel("bench", "v1")
            ns.pods("bench", "v1", [p.port for p in pods])
            with GatewayProcess(emu.url, [], folder / "gateway.log") as gw:
                wait_for(
                    lambda: httpx.get(gw.url + "/models").json()["data"], what="the gateway listing bench"
                )
                direct = [p.url for p in pods]
                rr = chats(direct, 1, args.users, args.turns, args.words)
                affinity = chats([gw.url], 2, args.users, args.turns, args.words)
                assert gw.proc is not None
                rss_before = tree_rss_mb(gw.proc.pid)
                through = latencies(gw.url, args.requests, args.clients)
                straight = latencies(pods[0].url, args.requests, args.clients)
                rss_after = tree_rss_mb(gw.proc.pid)
    finally:
        for p in pods:
            p.stop()
    figures = {
        "ttft_ratio_vs_round_robin": round(statistics.median(affinity) / statistics.median(rr), 3),
        "ttft_p50_s_affinity": round(statistics.median(affinity), 3),
        "ttft_p50_s_round_robin": round(statistics.median(rr), 3),
        "ttft_p95_s_affinity": quantile(affinity, 95),
        "ttft_p95_s_round_robin": quantile(rr, 95),
        "added_latency_p50_ms": round((statistics.median(through) - statistics.median(straight)) * 1000, 2),
        "latency_p50_ms_through": round(statistics.median(through) * 1000, 2),
        "latency_p50_ms_direct": round(statistics.median(straight) * 1000, 2),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "settings": f"{args.users} users x {args.turns} turns, {args.words}-word openings, 16 new tokens; "
        f"{args.requests} one-token requests from {args.clients} clients; model {args.model}",
    }
    print(figures)
    record("gateway", figures)


if __name__ == "__main__":
    main()
