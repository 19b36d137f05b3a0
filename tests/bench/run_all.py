"""`make bench`: every benchmark in one run, one results file, then the targets table.

Each benchmark runs in its own process (so one's memory and threads never colour the next) and merges its
section into bench-results.json; this script times the whole run and prints each headline figure beside its
target (docs/benchmarks.md "Targets"). A missed target is printed as such, never hidden. A full run starts
from an empty results file; `--only` reruns some sections and keeps the others. The `run` section records
the date (UTC) and commit of the run; `make bench-readme` then writes the README's table from the file.

    python -m tests.bench.run_all [--only serving,train]
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.results import RESULTS, TABLE, record, reset, stamp

ROOT = Path(__file__).resolve().parents[2]
# Each a module of this package, run as `python -m tests.bench.NAME` from the repository root.
BENCHMARKS = {
    "serving": ["bench_serving"],
    "kv-budget": ["bench_kv_budget"],
    "train": ["bench_train"],
    "triton": ["bench_triton"],
    "operator": ["bench_operator"],
    "operator-cluster": ["bench_operator", "--cluster", "local"],
    "grammar": ["bench_grammar"],
    "lora": ["bench_lora"],
    "gateway": ["bench_gateway"],
}
Check = Callable[[float, float], bool]
# Serving workloads (tests/bench/workloads.py) and their stream counts, for the per-workload targets.
SERVING_RUNS = [
    *(f"{w}_{s}" for w in ("shared-prefix", "distinct") for s in (1, 8, 32, 64)),
    "long-context_8",
    "long-answer_16",
]
VLLM_TARGETED = {"shared-prefix_32", "shared-prefix_64", "distinct_32", "distinct_64", "long-context_8",
                 "long-answer_16"}  # fmt: skip
# key -> (comparison, target); None = reported only.
TARGETS: dict[str, tuple[str, float] | None] = {
    "serving.ratio_vs_transformers_serve_32": (">=", 1.3),
    "serving.ttft_p50_ratio_vs_transformers_serve_32": ("<=", 0.5),
    "serving.ratio_vs_sequential_32": (">=", 8.0),
    "serving.ratio_vs_vllm_32": None,
    **{f"serving.ratio_vs_vllm_{r}": (">=", 1.0) if r in VLLM_TARGETED else None for r in SERVING_RUNS},
    "serving.ttft_p50_ratio_vs_vllm_distinct_32": ("<=", 0.5),
    # The issue's >= 1.5 per workload, except the figure the legacy key above is (shared-prefix at 32
    # streams), which keeps DESIGN.md's 1.3.
    **{
        f"serving.ratio_vs_transformers_serve_{r}": (">=", 1.3 if r == "shared-prefix_32" else 1.5)
        for r in SERVING_RUNS
    },
    "serving.structured_ratio_32": (">=", 0.85),
    "serving.multi_lora_ratio_32": (">=", 0.8),
    "serving.multi_lora_load_p50_s": None,
    "serving.batch1_fraction_of_bandwidth_bound": (">=", 0.5),
    "kv_budget.peak_rss_over_allowed": ("<=", 1.0),
    "train.ratio_vs_hf_trainer": (">=", 1.0),
    "train.ddp2_ratio_vs_single": None,
    "triton.latency_ratio_vs_pytorch": ("<=", 1.15),
    "triton.throughput_ratio_vs_pytorch_32": None,
    "operator.cpu_ratio_vs_kopf_baseline": ("<=", 1.5),
    "operator.peak_rss_mb": ("<", 100.0),
    "operator.seconds_1000": None,
    "operator.baseline_seconds_1000": None,
    "operator.local.cpu_ratio_vs_kopf_baseline": ("<=", 1.5),
    "operator.local.peak_rss_mb": ("<", 100.0),
    "operator.local.seconds_1000": None,
    "operator.local.baseline_seconds_1000": None,
    "operator.reconcile_p95_ms": None,
    "gateway.ttft_ratio_vs_round_robin": ("<=", 0.5),
    "gateway.added_latency_p50_ms": ("<=", 2.0),
}
COMPARE: dict[str, Check] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def lookup(data: dict[str, Any], key: str) -> float | None:
    section, name = key.split(".", 1)
    value = data.get(section, {}).get(name)
    return value if isinstance(value, (int, float)) else None


def summary(data: dict[str, Any]) -> list[str]:
    lines = ["| figure | value | target | |", "|---|---|---|---|"]
    for key, target in TARGETS.items():
        value = lookup(data, key)
        if target is None:
            lines.append(f"| `{key}` | {value if value is not None else 'not run'} | report | |")
            continue
        op, bound = target
        verdict = "not run" if value is None else ("met" if COMPARE[op](value, bound) else "**MISSED**")
        lines.append(f"| `{key}` | {value if value is not None else '-'} | {op} {bound} | {verdict} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated sections to run, keeping the others' figures")
    args = ap.parse_args()
    sections = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(sections) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}")
    if not args.only:
        reset()  # a full run: no figure from an earlier run survives
    start = time.monotonic()
    began = stamp()
    failed = []
    for section in sections:
        print(f"\n=== {section} ===", flush=True)
        t0 = time.monotonic()
        module, *extra = BENCHMARKS[section]
        rc = subprocess.call([sys.executable, "-m", f"tests.bench.{module}", *extra], cwd=ROOT)
        print(f"=== {section}: {time.monotonic() - t0:.0f} s, exit {rc}", flush=True)
        if rc:
            failed.append(section)
    run = {
        **began,
        "sections": ",".join(sections),
        "full": not args.only,
        "wall_seconds": round(time.monotonic() - start),
        "failed": ",".join(failed) or "none",
    }
    record("run", run)
    lines = summary(json.loads(RESULTS.read_text()))
    text = "\n".join(lines)
    TABLE.write_text(TABLE.read_text() + "\n## Targets\n\n" + text + "\n")
    print(f"\n{text}\n\nWhole run: {time.monotonic() - start:.0f} s. Figures: {RESULTS.name}, {TABLE.name}")
    print("`make bench-readme` writes the README's Performance table from them.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
