"""Training throughput: our trainer vs plain Hugging Face `Trainer`, same data, model, batch, same run.

Both full fine-tune the builtin SmolLM2-135M for one epoch over the demo FAQ (64 chat examples, the
same tokens and prompt masking, batch 4). Each side runs in its own faster precision here, chosen by
measuring both: float32 and bfloat16 autocast (ours `compute_dtype`, HF `bf16=True`); the ratio is best
against best, and the precision of each is recorded. Both are timed the same way: throughput = non-padding
tokens of the training set ÷ the wall time of the trainer's training loop, measured by this script around
the loop itself (ours `Run.loop`, HF `Trainer._run_epoch`), set-up (model load, optimizer, data) before
it, saving after it and any evaluation inside it excluded on both sides. The machine's cores are shared,
so each configuration runs `--rounds` times, interleaved, and the best run of each counts (the one least
slowed by neighbours). Writes the `train` section of bench-results.json.

`train.ddp2_ratio_vs_single`: the same recipe through `chatmodel train` as two torchrun workers (DDP,
gloo, 1 thread each, 2 examples per rank) ÷ one process with 2 threads, same global batch of 4, both
as subprocesses on the same cores (each from its own metrics.json: both ours, timed alike).

    .venv/bin/python -m tests.bench.bench_train [--rounds 2] [--ours-modes fp32,bf16] [--hf-modes fp32,bf16]
        [--no-ddp]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.bench.results import record

SOURCE = "builtin://smollm2-135m"
DATA = "builtin://tidewell-faq"
BATCH, MAX_LEN, LR, SEED = 4, 256, 1e-4, 42
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@contextlib.contextmanager
def loop_clock(cls: type, loop: str, excluded: tuple[str, ...]) -> Iterator[list[float]]:
    """Wall time spent in `cls.loop` (less the time in the `excluded` methods called from it), added to
    the yielded one-element list while the block runs; the methods are restored after."""
    seconds = [0.0]
    originals = {name: getattr(cls, name) for name in (loop, *excluded)}

    def timed(fn: Callable[..., Any], sign: float) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[0] += sign * (time.perf_counter() - started)

        return inner

    for name, fn in originals.items():
        setattr(cls, name, timed(fn, 1.0 if name == loop else -1.0))
    try:
        yield seconds
    finally:
        for name, fn in originals.items():
            setattr(cls, name, fn)


def tokenized() -> tuple[list[Any], Any]:
    from chatmodel_serving.models import load_model
    from chatmodel_serving.train.data import load_examples, tokenize_examples

    tokenizer = load_model(SOURCE, dtype="float32").tokenizer
    items, _ = tokenize_examples(load_examples(DATA), tokenizer, MAX_LEN)
    return items, tokenizer


def run_ours(workdir: Path, val: Path, dtype: str) -> float:
    from chatmodel_serving.train.config import TrainConfig
    from chatmodel_serving.train.trainer import Run, train

    config = TrainConfig(
        base_model=SOURCE,
        data=DATA,
        validation_data=str(val),  # a tiny set: evaluation is not what is measured
        output=workdir / f"ours-{time.monotonic_ns()}",
        method="full",
        epochs=1,
        learning_rate=LR,
        batch_size=BATCH,
        max_seq_length=MAX_LEN,
        save_steps=0,
        compute_dtype=dtype,
        seed=SEED,
        termination_message_path=None,
    )
    with loop_clock(Run, "loop", ("record_eval",)) as seconds:
        m = train(config, json_lines=True).metrics
    return float(m["train_tokens"] / seconds[0])


def run_cli(workdir: Path, val: Path, workers: int) -> float:
    """`chatmodel train` in a subprocess: `workers` torchrun workers of 1 thread, or (1) one process
    with as many threads as the machine has cores (at most 2: the DDP run's total)."""
    out = workdir / f"cli-{workers}-{time.monotonic_ns()}"
    bin_dir = Path(sys.executable).parent
    args = ["train", "--base-model", SOURCE, "--data", DATA, "--validation-data", str(val)]
    args += ["--method", "full", "--epochs", "1", "--learning-rate", str(LR), "--batch-size", str(BATCH)]
    args += ["--max-seq-length", str(MAX_LEN), "--save-steps", "0", "--seed", str(SEED), "--output", str(out)]
    args += ["--progress", "json", "--termination-message-path", str(workdir / "termination")]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    if workers > 1:
        cmd = [str(bin_dir / "torchrun"), "--standalone", f"--nproc-per-node={workers}", "--no-python"]
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = []
        env["OMP_NUM_THREADS"] = "2"
    subprocess.run([*cmd, "chatmodel", *args], env=env, check=True, capture_output=True, timeout=1800)
    m = json.loads((out / "metrics.json").read_text())
    return float(m["train_tokens"] / m["train_seconds"])


def run_hf(workdir: Path, items: list[Any], tokenizer: Any, bf16: bool) -> float:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from chatmodel_serving.models import load_model

    model = load_model(SOURCE, dtype="float32").model.train()
    args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR,
        use_cpu=True,
        bf16=bf16,
        seed=SEED,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    dataset = [{"input_ids": i.input_ids, "labels": i.labels} for i in items]
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    with loop_clock(Trainer, "_run_epoch", ("_evaluate",)) as seconds:
        trainer.train()
    return sum(len(i) for i in items) / seconds[0]


def mode_key(config: str) -> str:
    """hf_bf16 -> hf_trainer_bf16, ours_fp32 -> ours_fp32; "" for the torchrun configurations."""
    if config.startswith("hf_"):
        return f"hf_trainer_{config.removeprefix('hf_')}"
    return config if config.startswith("ours_") else ""


def summarise(runs: dict[str, list[float]], examples: int, rounds: int) -> dict[str, Any]:
    best = {k: max(v) for k, v in runs.items() if v}
    ours_mode = max((k for k in best if k.startswith("ours_")), key=lambda k: best[k])
    hf_mode = max((k for k in best if k.startswith("hf_")), key=lambda k: best[k])
    figures: dict[str, Any] = {
        "tokens_per_second": round(best[ours_mode], 1),
        "dtype": DTYPES[ours_mode.removeprefix("ours_")],
        "hf_trainer_tokens_per_second": round(best[hf_mode], 1),
        "hf_trainer_dtype": DTYPES[hf_mode.removeprefix("hf_")],
        **{f"{mode_key(k)}_tokens_per_second": round(v, 1) for k, v in best.items() if mode_key(k)},
        "ratio_vs_hf_trainer": round(best[ours_mode] / best[hf_mode], 3),
    }
    if "ours_fp32" in best and "hf_fp32" in best:
        figures["tokens_per_second_fp32"] = round(best["ours_fp32"], 1)
        figures["ratio_fp32_vs_hf_trainer_fp32"] = round(best["ours_fp32"] / best["hf_fp32"], 3)
    if best.get("ddp2") and best.get("single_cli"):
        figures["ddp2_tokens_per_second"] = round(best["ddp2"], 1)
        figures["single_2threads_tokens_per_second"] = round(best["single_cli"], 1)
        figures["ddp2_ratio_vs_single"] = round(best["ddp2"] / best["single_cli"], 3)
    figures["all_runs"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
    figures["setup"] = (
        f"full fine-tune {SOURCE}, {examples} examples, batch {BATCH}, 1 epoch, best of {rounds}; "
        "each side in its faster of float32 / bfloat16 autocast"
    )
    figures["timing"] = (
        "non-padding training tokens ÷ wall time of the training loop (ours Run.loop less its evaluation, "
        "HF Trainer._run_epoch), timed by the benchmark on both sides; set-up and saving excluded"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ours-modes", default="fp32,bf16", help="our precisions to run (default: both)")
    parser.add_argument(
        "--hf-modes", default="fp32,bf16", help="HF Trainer precisions to run (default: both)"
    )
    parser.add_argument("--no-ddp", dest="ddp", action="store_false", help="skip the torchrun comparison")
    opts = parser.parse_args()
    items, tokenizer = tokenized()
    ours_modes, hf_modes = opts.ours_modes.split(","), opts.hf_modes.split(",")
    for mode in (*ours_modes, *hf_modes):
        if mode not in DTYPES:
            raise SystemExit(f"unknown precision {mode!r}; known: {', '.join(DTYPES)}")
    runs: dict[str, list[float]] = {
        **{f"ours_{m}": [] for m in ours_modes},
        **{f"hf_{m}": [] for m in hf_modes},
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        workdir = Path(tmp)
        val = workdir / "val.jsonl"
        from chatmodel_serving.train.data import resolve_data_source

        val.write_text("".join(resolve_data_source(DATA).read_text().splitlines(keepends=True)[:2]))
        configs = {
            "ours_fp32": lambda: run_ours(workdir, val, "float32"),
            "ours_bf16": lambda: run_ours(workdir, val, "bfloat16"),
            "hf_fp32": lambda: run_hf(workdir, items, tokenizer, bf16=False),
            "hf_bf16": lambda: run_hf(workdir, items, tokenizer, bf16=True),
        }
        configs = {k: v for k, v in configs.items() if k in runs}
        if opts.ddp:
            configs["ddp2"] = lambda: run_cli(workdir, val, 2)
            configs["single_cli"] = lambda: run_cli(workdir, val, 1)
            runs["ddp2"], runs["single_cli"] = [], []
        names = list(configs)
        for r in range(opts.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
                runs[name].append(configs[name]())
                gc.collect()
                print(json.dumps({"round": r, "config": name, "tokens_per_second": round(runs[name][-1], 1)}))
            figures = summarise(runs, len(items), r + 1)
            record("train", figures)  # after every round: a long run stopped early still reports
    print(
        f"train tokens/s: ours {figures['tokens_per_second']} ({figures['dtype']}) vs HF Trainer "
        f"{figures['hf_trainer_tokens_per_second']} ({figures['hf_trainer_dtype']}) "
        f"-> ratio {figures['ratio_vs_hf_trainer']} (target >= 1.0)"
    )
    if "ddp2_ratio_vs_single" in figures:
        print(
            f"torchrun 2 workers x 1 thread {figures['ddp2_tokens_per_second']} vs 1 process x 2 threads "
            f"{figures['single_2threads_tokens_per_second']} tokens/s "
            f"-> ratio {figures['ddp2_ratio_vs_single']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
