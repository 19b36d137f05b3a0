"""`chatmodel train`: fine-tune a model on a JSONL file and write a servable folder.

Exit codes: 0 done, 2 bad data or settings (nothing written), 1 any other failure. The outcome is
also written as a short message to the Kubernetes termination-message path, where the operator
reads it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import DEFAULT_LEARNING_RATE, METHODS, TERMINATION_LOG, TrainConfig

log = logging.getLogger("chatmodel.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig  # defaults live on the dataclass only
    add = parser.add_argument
    add("--base-model", default="builtin://smollm2-135m", help="model source (default: %(default)s)")
    add(
        "--data",
        required=True,
        help="training JSONL (path, file://, builtin://NAME): {input, output} or {messages}",
    )
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--validation-data", help="validation JSONL (instead of a split)")
    val.add_argument(
        "--validation-split",
        type=float,
        default=d.validation_split,
        help="held-out fraction (default: %(default)s)",
    )
    add("--method", choices=METHODS, default=d.method, help="full fine-tune or LoRA (default: %(default)s)")
    add("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    lr = DEFAULT_LEARNING_RATE
    add("--learning-rate", type=float, help=f"peak (default: {lr['full']} full, {lr['lora']} lora)")
    add("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    add("--max-seq-length", type=int, default=d.max_seq_length, help="longer examples are truncated (logged)")
    add("--gradient-accumulation-steps", type=int, default=d.gradient_accumulation_steps)
    add(
        "--warmup-ratio",
        type=float,
        default=d.warmup_ratio,
        help="fraction of steps warming up (default: %(default)s)",
    )
    add("--weight-decay", type=float, default=d.weight_decay)
    add("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping; 0 = off")
    add(
        "--early-stopping-patience",
        type=int,
        default=d.early_stopping_patience,
        help="stop after N evaluations without improvement; 0 = never (default: %(default)s)",
    )
    add(
        "--eval-steps",
        type=int,
        default=d.eval_steps,
        help="also evaluate every N steps (default: each epoch)",
    )
    add("--max-steps", type=int, default=d.max_steps, help="stop after N optimizer steps (0 = no cap)")
    add("--seed", type=int, default=d.seed)
    add("--output", type=Path, required=True, help="folder to create (written atomically)")
    add("--overwrite", action="store_true", help="replace an existing output folder")
    add("--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps; 0 = never")
    add("--checkpoint-dir", type=Path, help="default: .OUTPUT.checkpoints beside the output")
    add("--resume", action="store_true", help="continue from the latest checkpoint, if any")
    add("--keep-checkpoints", action="store_true", help="keep checkpoints after a successful run")
    add("--merge-lora", action="store_true", help="write LoRA merged into a plain model, not an adapter")
    add("--lora-r", type=int, default=d.lora_r)
    add("--lora-alpha", type=int, default=d.lora_alpha)
    add("--lora-dropout", type=float, default=d.lora_dropout)
    add("--lora-target-modules", default=d.lora_target_modules, help="comma list or all-linear")
    add(
        "--compute-dtype",
        choices=("auto", "float32", "bfloat16"),
        default=d.compute_dtype,
        help="autocast dtype; auto = bfloat16 where the hardware has it (default: %(default)s)",
    )
    add("--no-group-by-length", dest="group_by_length", action="store_false", help="plain shuffled batches")
    add("--system-prompt", help="system prompt added to examples that have none")
    add("--device", default=d.device, help="auto, cpu, cuda (default: %(default)s)")
    add(
        "--fsdp",
        action="store_true",
        help="under torchrun, shard a full fine-tune over the workers (FSDP2) instead of replicating it",
    )
    add("--termination-message-path", type=Path, default=TERMINATION_LOG, help="(default: %(default)s)")
    add(
        "--progress",
        choices=("auto", "bar", "json"),
        default="auto",
        help="bar on a TTY, JSON lines otherwise",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        base_model=args.base_model,
        data=args.data,
        output=args.output,
        validation_data=args.validation_data,
        validation_split=args.validation_split,
        method=args.method,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        early_stopping_patience=args.early_stopping_patience,
        eval_steps=args.eval_steps,
        max_steps=args.max_steps,
        seed=args.seed,
        save_steps=args.save_steps,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        keep_checkpoints=args.keep_checkpoints,
        merge_lora=args.merge_lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_target_modules=args.lora_target_modules,
        compute_dtype=args.compute_dtype,
        group_by_length=args.group_by_length,
        system_prompt=args.system_prompt,
        device=args.device,
        termination_message_path=args.termination_message_path,
        fsdp=args.fsdp,
    )


def run(args: argparse.Namespace) -> int:
    from ..logs import setup_logging

    setup_logging("text" if sys.stderr.isatty() else "json")  # JSON lines in pod logs
    from .artifact import summary, write_termination_message
    from .data import DataError

    termination = args.termination_message_path
    try:
        config = config_from_args(args)
    except ValueError as exc:
        write_termination_message(termination, f"error: {exc}")
        raise  # chatmodel_serving.cli.main prints it, a line per problem, and exits 2
    from .distributed import from_env
    from .trainer import ResumeError, train

    world = from_env()
    who = f"rank {world.rank}: " if world.distributed else ""  # which worker failed, for the operator
    try:
        result = train(config, json_lines={"auto": None, "bar": False, "json": True}[args.progress])
    except (DataError, FileExistsError, ResumeError, ValueError) as exc:
        write_termination_message(termination, f"error: {who}{exc}")
        if who:
            exc.add_note(who.removesuffix(": "))  # prefixes each line chatmodel_serving.cli.main prints
        raise  # bad data or settings: reported a line per problem, exit 2
    except Exception as exc:
        log.exception("training failed")
        write_termination_message(termination, f"error: {who}{exc.__class__.__name__}: {exc}")
        return 1
    if not world.main:  # the result is rank 0's to report
        return 0
    write_termination_message(termination, summary(result.metrics))
    m = result.metrics
    print(
        f"eval loss {m['eval_loss_before']:.4f} -> {m['eval_loss']:.4f} in {m['steps']} steps "
        f"({m['train_tokens_per_second']:.0f} train tokens/s); model in {result.output}",
        file=sys.stderr,
    )
    from .plots import report_lines

    for line in report_lines(result.output):
        print(line, file=sys.stderr)
    return 0
