"""Triton runtime benchmark: the same requests through the same openai client to `chatmodel serve` (the
PyTorch runtime) and to `chatmodel serve --backend triton://` in front of tritonserver running the same
engine, same run: single requests alternate between the runtimes (latency), then each takes N concurrent
streams alone (throughput). Writes the `triton` section of bench-results.json; the target is
`latency_ratio_vs_pytorch` <= 1.15 (docs/benchmarks.md).

    python -m tests.bench.bench_triton [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.triton.server import triton_front
from tests.bench.load import Run, run_streams
from tests.bench.results import record

MODEL = "builtin://smollm2-135m"
NAME = "smollm2-135m"


@contextlib.contextmanager
def runtime(kind: str, work: Path) -> Iterator[ServerProcess]:
    args = ["--dtype", "auto"]  # both sides pick the same dtype for this machine
    if kind == "pytorch":
        with ServerProcess(["--model", MODEL, *args], log_path=work / "pytorch.log") as srv:
            yield srv
    else:
        with triton_front(work / "triton", args, MODEL, dtype="auto") as (_, front):
            yield front


def latencies(urls: dict[str, str], rounds: int, max_tokens: int) -> dict[str, dict[str, float]]:
    """Single requests, alternating runtimes round by round (the idle one costs nothing), so load from
    elsewhere on a shared machine falls on both alike."""
    runs: dict[str, list[Run]] = {k: [] for k in urls}
    for r in range(rounds):
        order = list(urls) if r % 2 == 0 else list(reversed(urls))
        for kind in order:
            runs[kind].append(run_streams(urls[kind], NAME, 1, max_tokens=max_tokens))
    out = {}
    for kind, rs in runs.items():
        merged = Run(1, sum(x.tokens for x in rs), sum(x.seconds for x in rs), [], [])
        merged.ttfts = [t for x in rs for t in x.ttfts]
        merged.latencies = [t for x in rs for t in x.latencies]
        out[kind] = merged.summary()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter requests")
    a = ap.parse_args()
    rounds, streams, max_tokens = (4, 8, 32) if a.quick else (10, 32, 64)
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    (work / "triton").mkdir()
    with runtime("pytorch", work) as pytorch, runtime("triton", work) as triton:
        urls = {"pytorch": pytorch.url, "triton": triton.url}
        for url in urls.values():
            run_streams(url, NAME, 2, max_tokens=8)  # warm-up: first-call costs are not the runtime's speed
        single = latencies(urls, rounds, max_tokens)
        results = {
            kind: {
                "single": single[kind],
                "concurrent": run_streams(url, NAME, streams, max_tokens).summary(),
            }
            for kind, url in urls.items()
        }
    print(results, flush=True)
    p, t = results["pytorch"], results["triton"]
    figures = {
        "max_tokens": max_tokens,
        "latency_rounds": rounds,
        "streams": streams,
        "pytorch_latency_p50_s": p["single"]["latency_p50_s"],
        "triton_latency_p50_s": t["single"]["latency_p50_s"],
        "latency_ratio_vs_pytorch": round(t["single"]["latency_p50_s"] / p["single"]["latency_p50_s"], 3),
        "pytorch_ttft_p50_s": p["single"]["ttft_p50_s"],
        "triton_ttft_p50_s": t["single"]["ttft_p50_s"],
        f"pytorch_tokens_per_second_{streams}": p["concurrent"]["tokens_per_second"],
        f"triton_tokens_per_second_{streams}": t["concurrent"]["tokens_per_second"],
        f"throughput_ratio_vs_pytorch_{streams}": round(
            t["concurrent"]["tokens_per_second"] / p["concurrent"]["tokens_per_second"], 3
        ),
        "runs": results,
    }
    record("triton", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
