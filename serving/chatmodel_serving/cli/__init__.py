"""`chatmodel` command line: each subcommand lives in its own module and is imported only when used,
so `chatmodel render` works in the operator image, which has no torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("chatmodel_serving.cli.serve", "serve a model with the OpenAI API"),
    "chat": ("chatmodel_serving.cli.chat", "streaming terminal chat against an OpenAI-compatible URL"),
    "train": ("chatmodel_serving.train.cli", "fine-tune a model on a JSONL dataset"),
    "run": ("chatmodel_serving.cli.run", "run a ChatModel manifest locally: fine-tune, then serve"),
    "triton-repo": ("chatmodel_serving.triton.repo", "write a Triton model repository that runs our engine"),
    "triton-server": ("chatmodel_serving.triton.server", "run the bundled tritonserver on a repository"),
    "render": (
        "chatmodel_operator.render",
        "print every Kubernetes object the operator creates for a manifest",
    ),
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line as the `chatmodel` command reads it (argparse exits on an invalid one)."""
    parser = argparse.ArgumentParser(prog="chatmodel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Import only the module of the command being run (and none for --help on the top level).
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return int(args._run(args) or 0)
