"""Multi-LoRA benchmark: 32 streams spread over 8 adapters on one base (one `chatmodel serve` with
--lora-modules, batched LoRA: engine/lora.py) against the same 32 streams on one adapter merged into its
base and served alone, same server settings, same dtype, same prompts and client, one after the other in one
run; then the time to load an adapter into the running server (POST /v1/load_lora_adapter, each of the 8
unloaded and loaded again). Writes `serving.multi_lora_*` into bench-results.json.

The adapters have the shape our trainer gives by default (rank 16, alpha 32, every linear layer of the
decoder) with random weights: what an adapter costs a step depends on its shapes, not on what it learnt.
Every answer is max_tokens long (EOS ignored) on both sides.

    python -m tests.bench.bench_lora [--quick] [--streams 32] [--adapters 8] [--max-tokens 64] [--dtype auto]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.models import resolve_source
from tests.bench.load import run_streams
from tests.bench.peers import IGNORE_EOS, LOGS, MODEL
from tests.bench.results import record

RANK, ALPHA = 16, 32  # our trainer's defaults (train/config.py)


def write_adapters(base: Path, folder: Path, count: int) -> tuple[list[Path], Path]:
    """`count` random adapters of the base (seeded), and the first one merged into the base as a plain
    model folder: the single-model side."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    paths = []
    merged = folder / "merged"
    for i in range(count):
        path = folder / f"adapter-{i}"
        paths.append(path)
        if (path / "adapter_config.json").is_file() and merged.is_dir():
            continue
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
        peft = get_peft_model(model, config)
        with torch.no_grad():  # B starts at zero (a no-op adapter); small random values make it real
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
        peft.save_pretrained(str(path))
        if i == 0:
            plain: Any = peft.merge_and_unload()
            plain.save_pretrained(merged)
            tokenizer.save_pretrained(merged)
    return paths, merged


def server_args(dtype: str, model: Path, name: str) -> list[str]:
    return ["--model", str(model), "--served-model-name", name, "--dtype", dtype, "--no-ui"]


def streams_run(srv: ServerProcess, models: list[str], streams: int, max_tokens: int) -> dict[str, Any]:
    run_streams(srv.url, models, len(models), max_tokens=4, extra=IGNORE_EOS)  # warm-up: every model once
    run = run_streams(srv.url, models, streams, max_tokens=max_tokens, extra=IGNORE_EOS, same_length=True)
    return run.summary()


def load_seconds(srv: ServerProcess, adapters: dict[str, Path]) -> list[float]:
    """Each adapter unloaded, then loaded again through the API: the load's wall time as a client sees it."""
    out = []
    with httpx.Client(base_url=srv.url, timeout=120) as http:
        for name, path in adapters.items():
            http.post("/unload_lora_adapter", json={"lora_name": name}).raise_for_status()
            start = time.monotonic()
            http.post(
                "/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
            ).raise_for_status()
            out.append(time.monotonic() - start)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 streams over 4 adapters, 16 tokens: a smoke run")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", help="both sides (default: auto, the server's own choice)")
    args = ap.parse_args()
    if args.quick:
        args.streams, args.adapters, args.max_tokens = 8, 4, 16
    base = resolve_source(MODEL)
    folder = LOGS / f"bench-lora-r{RANK}"
    paths, merged = write_adapters(base, folder, args.adapters)
    names = [f"lora-{i}" for i in range(len(paths))]
    adapters = dict(zip(names, paths, strict=True))

    print(f"merged single model, {args.streams} streams x {args.max_tokens} tokens", flush=True)
    with ServerProcess(
        server_args(args.dtype, merged, "merged"), log_path=LOGS / "bench-lora-merged.log"
    ) as srv:
        single = streams_run(srv, ["merged"], args.streams, args.max_tokens)
    print(f"  {single}", flush=True)

    print(f"{len(names)} adapters on one base, the streams spread over them", flush=True)
    flags = [*server_args(args.dtype, base, "base"), "--max-loras", str(len(names))]
    for name, path in adapters.items():
        flags += ["--lora-modules", f"{name}={path}"]
    with ServerProcess(flags, log_path=LOGS / "bench-lora-multi.log") as srv:
        multi = streams_run(srv, names, args.streams, args.max_tokens)
        loads = load_seconds(srv, adapters)
    print(f"  {multi}", flush=True)
    ratio = round(multi["tokens_per_second"] / single["tokens_per_second"], 2)
    s = args.streams
    figures = {
        f"multi_lora_ratio_{s}": ratio,
        f"multi_lora_{s}": multi,
        f"multi_lora_merged_{s}": single,
        "multi_lora_load_p50_s": round(statistics.median(loads), 4),
        "multi_lora_load_max_s": round(max(loads), 4),
        "multi_lora_settings": {
            "adapters": len(names),
            "rank": RANK,
            "alpha": ALPHA,
            "target_modules": "all-linear",
            "dtype": args.dtype,
            "streams": s,
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "merged": "adapter 0 merged into the base (peft merge_and_unload), served alone",
            "multi": f"chatmodel serve --max-loras {len(names)} --lora-modules NAME=PATH x {len(names)}",
        },
    }
    print(f"multi-LoRA ratio at {s} streams: {ratio}; adapter load p50 {figures['multi_lora_load_p50_s']} s")
    record("serving", figures, merge="multi_lora_")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
