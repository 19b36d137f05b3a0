"""The benchmark harness's pure parts, on synthetic figures (no server, no model): the README table
generator (tests/bench/readme_table.py), the serving keys run_all.py's targets read, and the prompt sets."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench import readme_table
from tests.bench.results import ROOT
from tests.bench.run_all import TARGETS
from tests.bench.workloads import WORKLOADS, distinct_prompts, long_context_prompts, select


def fig(tps: float, ttft: float) -> dict[str, Any]:
    return {"streams": 1, "tokens_per_second": tps, "ttft_p50_s": ttft, "ttft_p95_s": ttft * 2}


def synthetic() -> dict[str, Any]:
    ours = {
        "shared-prefix": {"1": fig(14.0, 0.1), "32": fig(220.0, 0.5)},
        "distinct": {"32": fig(150.0, 1.0)},
    }
    vllm = {
        "shared-prefix": {"1": fig(12.0, 0.2), "32": fig(250.0, 2.0)},
        "distinct": {"32": fig(100.0, 3.0)},
    }
    ts = {"shared-prefix": {"32": fig(140.0, 3.3)}}
    serving: dict[str, Any] = {
        "settings": {
            "ours": {"dtype": "bfloat16", "same_length": "ignore_eos"},
            "vllm": {"dtype": "bfloat16", "same_length": "ignore_eos"},
            "transformers_serve": {
                "dtype": "float32",
                "same_length": 'generation_config {"eos_token_id": -1}',
            },
        },
        "ours": ours,
        "vllm": vllm,
        "transformers_serve": ts,
        "ratio_vs_vllm_shared-prefix_1": 1.17,
        "ratio_vs_vllm_shared-prefix_32": 0.88,
        "ratio_vs_vllm_distinct_32": 1.5,
        "ttft_p50_ratio_vs_vllm_distinct_32": 0.33,
        "ratio_vs_transformers_serve_shared-prefix_32": 1.57,
        "ours_1": ours["shared-prefix"]["1"],
        "ours_32": ours["shared-prefix"]["32"],
        "sequential_generate_tokens_per_second": 15.0,
        "ratio_vs_sequential_32": 14.67,
        "structured_32": fig(209.0, 0.4),
        "unstructured_32": fig(198.0, 0.4),
        "structured_ratio_32": 1.06,
        "batch1_dtype": "bfloat16",
        "copy_bandwidth_gb_s": 30.6,
        "batch1_bandwidth_bound_tokens_per_second": 114.0,
        "batch1_fraction_of_bandwidth_bound": 0.123,
        "measured": {"date_utc": "2026-12-04 10:00", "commit": "abc1234", "dirty": False},
    }
    return {
        "machine": {"cores": 2, "cpu": "Test CPU", "torch": "2.13.0", "transformers": "5.23.0"},
        "run": {
            "date_utc": "2026-12-04 09:00",
            "commit": "abc1234",
            "dirty": False,
            "full": True,
            "sections": "serving,train",
            "wall_seconds": 2460,
            "failed": "none",
        },
        "serving": serving,
        "train": {
            "tokens_per_second": 193.0,
            "dtype": "bfloat16",
            "hf_trainer_tokens_per_second": 164.0,
            "hf_trainer_dtype": "bfloat16",
            "ratio_vs_hf_trainer": 1.177,
            "measured": {"date_utc": "2026-11-30 08:00", "commit": "0ld0ne0", "dirty": True},
        },
    }


def test_table_has_a_row_per_workload_and_streams_with_dtypes_and_ratios() -> None:
    block = readme_table.render(synthetic())
    assert "2026-12-04 09:00 UTC" in block and "`abc1234`" in block and "41 min wall" in block
    assert "ours, bfloat16" in block and "vLLM-CPU, bfloat16" in block and "CB, float32" in block
    rows = [ln for ln in block.splitlines() if ln.startswith(("| shared-prefix |", "| distinct |"))]
    assert [r.split(" | ")[:2] for r in rows] == [
        ["| shared-prefix", "1"],
        ["| shared-prefix", "32"],
        ["| distinct", "32"],
    ]
    assert "220.0 tok/s, TTFT 0.50 s" in rows[1] and "250.0 tok/s, TTFT 2.00 s" in rows[1]
    assert "1.57x" in rows[1]  # vs transformers serve
    assert "not run" in rows[2]  # transformers serve did not run distinct
    assert "0.33x" in rows[2]  # TTFT ratio


def test_behind_vllm_is_marked_and_said_plainly() -> None:
    block = readme_table.render(synthetic())
    rows = {ln.split(" | ")[0] + ln.split(" | ")[1]: ln for ln in block.splitlines() if ln.startswith("| ")}
    assert "0.88x **behind**" in rows["| shared-prefix32"]
    assert "behind" not in rows["| shared-prefix1"] and "behind" not in rows["| distinct32"]
    assert "**Where we are behind vLLM in this run** (tok/s): shared-prefix at 32 streams (0.88x)." in block
    data = synthetic()
    data["serving"]["ratio_vs_vllm_shared-prefix_32"] = 1.01
    assert "nowhere" in readme_table.render(data)


def test_other_rows_with_targets_and_sections_not_run() -> None:
    block = readme_table.render(synthetic())
    assert "| 1.06x | ≥ 0.85: met |" in block  # structured outputs
    assert "(bfloat16 weights)" in block and "| 0.12 | ≥ 0.5: **missed** |" in block  # batch 1
    assert "193.0 tok/s (bfloat16)" in block and "164.0 tok/s (bfloat16)" in block and "1.18x" in block
    for section in ("Triton runtime", "grammar libraries", "operator on kmock"):
        assert f"| {section}" in block and "not run" in block
    assert "Measured in other runs: train (2026-11-30, `0ld0ne0`)" in block


def test_rewrite_replaces_only_the_marked_block() -> None:
    def page(table: str) -> str:
        marked = f"{readme_table.START}\n{table}{readme_table.END}"
        return f"# X\n\n## Performance\n\nProse before.\n\n{marked}\n\nAfter.\n"

    out = readme_table.rewrite(page("old table\n"), "new table\n")
    assert out == page("new table\n")
    assert readme_table.rewrite(out, "new table\n") == out
    with pytest.raises(ValueError, match="bench-table"):
        readme_table.rewrite("# no markers\n", "x")


def test_the_readme_has_the_markers() -> None:
    text = (ROOT / "README.md").read_text()
    perf = text[text.index("## Performance") :]
    assert perf.index(readme_table.START) < perf.index(readme_table.END) < perf.index("\n## ", 1)


def test_serving_keys_cover_the_targets() -> None:
    """Every serving key run_all.py checks is one bench_serving writes for a full run (none misspelt)."""
    from tests.bench.bench_serving import legacy, ratios

    summary = fig(100.0, 1.0)
    full = {w.name: {str(s): summary for s in w.streams} for w in WORKLOADS.values()}
    sides = {"ours": full, "vllm": full, "transformers_serve": full}
    written = {*ratios(sides), *legacy(sides, 32)}
    written |= {"ratio_vs_sequential_32", "structured_ratio_32", "batch1_fraction_of_bandwidth_bound"}
    written |= {"multi_lora_ratio_32", "multi_lora_load_p50_s"}  # bench_lora.py, merged into the section
    wanted = {k.removeprefix("serving.") for k in TARGETS if k.startswith("serving.")}
    assert wanted <= written, wanted - written
    assert legacy(sides, 32)["ours_32"] is summary and "ratio_vs_transformers_serve_32" in written


class Words:
    """A tokenizer stand-in: one token per word."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * len(text.split())


def test_prompt_sets_are_deterministic_sized_and_distinct() -> None:
    tok = Words()
    a, b = distinct_prompts(tok, 64, variant=1), distinct_prompts(tok, 64, variant=1)
    assert a == b and len(set(a)) == 64
    sizes = [len(tok.encode(p)) for p in a]
    assert min(sizes) >= 30 and max(sizes) <= 800 and max(sizes) - min(sizes) > 300
    other = distinct_prompts(tok, 64, variant=2)  # same lengths and questions, other sentences
    assert [len(tok.encode(p)) for p in other] == sizes and other != a
    docs = long_context_prompts(tok)
    assert len(set(docs)) == 8 and all(1450 <= len(tok.encode(d)) <= 1500 for d in docs)


def test_select_subsets() -> None:
    picked = select(["distinct", "long-context", "long-answer"], [8], 16, quick=False)
    assert [(w.name, w.streams, w.max_tokens) for w in picked] == [
        ("distinct", (8,), 16),
        ("long-context", (8,), 16),
    ]
    assert [w.max_tokens for w in select(None, None, None, quick=False)] == [64, 128, 128, 512]
    with pytest.raises(SystemExit):
        select(["nope"], None, None, quick=False)
