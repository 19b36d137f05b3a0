"""`make bench`: every benchmark in one run, one results file, then the targets table.

Each benchmark runs in its own process (so one's memory and threads never colour the next) and merges its
section into bench-results.json; this script times the whole run and prints each headline figure beside its
target (docs/benchmarks.md "Targets"). A missed target is printed as such, never hidden.

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

from tests.bench.results import RESULTS, TABLE, record

ROOT = Path(__file__).resolve().parents[2]
# Each a module of this package, run as `python -m tests.bench.NAME` from the repository root.
BENCHMARKS = {
    "serving": ["bench_serving"],
    "train": ["bench_train"],
    "triton": ["bench_triton"],
    "operator": ["bench_operator"],
    "operator-cluster": ["bench_operator", "--cluster", "local"],
    "grammar": ["bench_grammar"],
}
Check = Callable[[float, float], bool]
# key -> (comparison, target); None = reported only.
TARGETS: dict[str, tuple[str, float] | None] = {
    "serving.ratio_vs_transformers_serve_32": (">=", 1.3),
    "serving.ttft_p50_ratio_vs_transformers_serve_32": ("<=", 0.5),
    "serving.ratio_vs_sequential_32": (">=", 8.0),
    "serving.ratio_vs_vllm_32": None,
    "serving.structured_ratio_32": (">=", 0.85),
    "serving.batch1_fraction_of_bandwidth_bound": None,
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
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated sections to run")
    args = ap.parse_args()
    start = time.monotonic()
    failed = []
    for section in args.only.split(","):
        print(f"\n=== {section} ===", flush=True)
        t0 = time.monotonic()
        module, *extra = BENCHMARKS[section]
        rc = subprocess.call([sys.executable, "-m", f"tests.bench.{module}", *extra], cwd=ROOT)
        print(f"=== {section}: {time.monotonic() - t0:.0f} s, exit {rc}", flush=True)
        if rc:
            failed.append(section)
    record("run", {"wall_seconds": round(time.monotonic() - start), "failed": ",".join(failed) or "none"})
    lines = summary(json.loads(RESULTS.read_text()))
    text = "\n".join(lines)
    TABLE.write_text(TABLE.read_text() + "\n## Targets\n\n" + text + "\n")
    print(f"\n{text}\n\nWhole run: {time.monotonic() - start:.0f} s. Figures: {RESULTS.name}, {TABLE.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
