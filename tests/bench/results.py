"""One results file for every benchmark: bench-results.json (git-ignored) plus a Markdown table."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# `make bench-quick` (CI's smoke run) writes elsewhere so it never overwrites the figures of a real run.
RESULTS = ROOT / os.environ.get("BENCH_RESULTS", "bench-results.json")
TABLE = RESULTS.with_suffix(".md")


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "transformers", "kopf"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), **versions}


def stamp() -> dict[str, Any]:
    """When and from which commit: the date (UTC), `git rev-parse --short HEAD`, and whether tracked files
    differed from it."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD")
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": head.stdout.strip() if head.returncode == 0 else "unknown",
        "dirty": git("diff", "--quiet", "HEAD").returncode == 1,
    }


def reset() -> None:
    """Start from an empty results file (a full `make bench`)."""
    for path in (RESULTS, TABLE):
        path.unlink(missing_ok=True)


def record(section: str, figures: dict[str, Any], merge: str = "") -> None:
    """Merge one benchmark's figures into bench-results.json under `section` (with when and from which
    commit they were measured, as `measured`) and rewrite the table. `merge` (a key prefix such as
    "multi_lora_"): keep the section's other figures and stamp these as `<merge>measured`."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["machine"] = machine()
    if merge:  # beside another benchmark's figures in the same section, with its own stamp
        data[section] = {**data.get(section, {}), **figures, f"{merge}measured": stamp()}
    else:
        data[section] = {**figures, "measured": stamp()}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    lines = ["| key | value |", "|---|---|"]
    for sec, figs in data.items():
        if sec == "machine" or not isinstance(figs, dict):
            continue
        lines += [f"| `{sec}.{k}` | {v} |" for k, v in figs.items() if not isinstance(v, (dict, list))]
    m = data["machine"]
    lines.append(
        f"\nMachine: {m['cores']} cores, {m['cpu']}, torch {m.get('torch')}, "
        f"transformers {m.get('transformers')}."
    )
    TABLE.write_text("\n".join(lines) + "\n")
    print(TABLE.read_text())
