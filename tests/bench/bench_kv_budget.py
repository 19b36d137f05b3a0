"""Memory under a KV budget: 64 streams of ~1,500-token documents against our server started with
`--max-kv-tokens` that holds only 16 of them. Every request must be answered, and the server's peak RSS
must stay within its idle RSS (model loaded, warmed up by one prompt of the same length) plus the KV it is
allowed to hold: the pool's budget and the prefix cache's bound (the engine's two stores of keys and
values). Writes the `kv_budget` section of bench-results.json.

    python -m tests.bench.bench_kv_budget [--quick]

--quick: 8 streams of 400-token documents, a budget of 2 of them (a smoke run for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, cast

from chatmodel_serving.engine import prefix_cache
from chatmodel_serving.engine.kvcache import COLUMN_STEP, round_up
from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.models import resolve_source
from tests.bench.load import run_streams
from tests.bench.memory import RssSampler, tree_rss_mb
from tests.bench.peers import IGNORE_EOS, LOGS, MODEL
from tests.bench.results import record
from tests.bench.workloads import long_context_prompts

if TYPE_CHECKING:
    from transformers import BatchEncoding


def kv_bytes_per_token(config: dict[str, int], dtype: str) -> int:
    """Keys and values of one position over every layer."""
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    import torch

    return (
        2
        * config["num_hidden_layers"]
        * heads
        * dim
        * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 streams of 400 tokens, a budget of 2")
    args = ap.parse_args()
    streams, held, doc_tokens, answer = (8, 2, 400, 16) if args.quick else (64, 16, 1500, 16)

    import torch
    from transformers import AutoTokenizer

    from chatmodel_serving.models import pick_dtype

    folder = resolve_source(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def prompt_tokens(message: str) -> int:
        ids = cast(  # return_dict=True: a BatchEncoding, whatever else the signature allows
            "BatchEncoding",
            tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], add_generation_prompt=True, return_dict=True
            ),
        )
        return len(ids["input_ids"])

    prompts = long_context_prompts(tokenizer, streams, variant=7, tokens=doc_tokens)
    longest = max(prompt_tokens(p) for p in prompts)
    # The pool gives each row the columns of the longest row, in steps of COLUMN_STEP: a budget of
    # `held` such rows holds exactly `held` of these requests at once.
    columns = round_up(longest + answer, COLUMN_STEP)
    budget_tokens = held * columns
    dtype = str(pick_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    per_token = kv_bytes_per_token(json.loads((folder / "config.json").read_text()), dtype)
    server_args = ["--model", MODEL, "--served-model-name", "m", "--dtype", dtype]
    server_args += ["--max-kv-tokens", str(budget_tokens), "--max-waiting-requests", str(streams)]
    print(f"{streams} streams of {longest} prompt tokens, KV budget {budget_tokens} tokens", flush=True)
    with ServerProcess(server_args, log_path=LOGS / "bench-kv-budget.log") as srv:
        assert srv.proc is not None
        # Warm up with one prompt of the same length: a first long prefill leaves one-off memory behind
        # (~240 MB here: kernels and buffers for its shapes) that is the runtime's, not the KV's. Its
        # prefix-cache entry stays and is taken off the allowance below (the cache's bound counts it).
        warm = long_context_prompts(tokenizer, 1, variant=99, tokens=doc_tokens)
        run_streams(srv.url, "m", 1, 4, prompts=warm)
        time.sleep(1.0)
        idle = tree_rss_mb(srv.proc.pid)
        with RssSampler(srv.proc.pid) as rss:
            run = run_streams(
                srv.url, "m", streams, answer, extra=IGNORE_EOS, prompts=prompts, same_length=True
            )
    budget_mb = budget_tokens * per_token / 2**20
    prefix_mb = (
        (prefix_cache.DEFAULT_TOKENS + longest) * per_token / 2**20
    )  # it may pass its bound by one prompt
    warm_entry_mb = prompt_tokens(warm[0]) * per_token / 2**20
    allowed = idle - warm_entry_mb + budget_mb + prefix_mb
    figures = {
        "streams": streams,
        "prompt_tokens_max": longest,
        "max_tokens": answer,
        "answered": run.requests,
        "tokens": run.tokens,
        "expected_tokens": run.expected_tokens,
        "dtype": dtype,
        "max_kv_tokens": budget_tokens,
        "rows_the_budget_holds": held,
        "kv_budget_mb": round(budget_mb, 1),
        "prefix_cache_bound_mb": round(prefix_mb, 1),
        "idle_rss_mb": round(idle, 1),
        "warm_prefix_entry_mb": round(warm_entry_mb, 1),
        "peak_rss_mb": round(rss.peak_mb, 1),
        "allowed_rss_mb": round(allowed, 1),
        "peak_rss_over_allowed": round(rss.peak_mb / allowed, 3),
        "seconds": round(run.seconds, 1),
        "server": ["chatmodel", "serve", *server_args],
    }
    record("kv_budget", figures)
    print(json.dumps(figures, indent=2))
    # Every request answered in full is the run's verdict; the memory ratio is a figure (its target is in
    # run_all.py's table), as benchmarks report and tests assert.
    return 0 if run.requests == streams and run.tokens == run.expected_tokens else 1


if __name__ == "__main__":
    sys.exit(main())
