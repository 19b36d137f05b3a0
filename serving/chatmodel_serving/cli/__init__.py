"""`chatmodel` command line: each subcommand lives in its own module and is imported only when used,
so `chatmodel render` works in the operator image, which has no torch.

Errors are reported here, in main(), as one line per problem (`chatmodel COMMAND: PROBLEM`, naming the
option, the file and line, or the field) and no traceback. A command raises CliError, or lets through an
error that already says what is wrong: pydantic's ValidationError (a line per field), YAML's (file, line,
column), a dataset's DataError (a line per bad line), a ValueError (this project's "refused input"), an
OSError (the file and what is wrong with it). Exit codes: 2 bad input (argparse's usage errors included),
1 a failure while running (a port in use, a model that does not load), 130 Ctrl-C. `--debug` (or
CHATMODEL_DEBUG=1) adds the traceback, for bug reports."""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import difflib
import importlib
import os
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml
    from pydantic import BaseModel, ValidationError

# The source checkout (serving/chatmodel_serving/cli/ is three folders down): where `make` puts .venv-vllm
# and where the shipped samples live.
PROJECT_ROOT = Path(__file__).resolve().parents[3]

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("chatmodel_serving.cli.serve", "serve a model with the OpenAI API"),
    "chat": ("chatmodel_serving.cli.chat", "streaming terminal chat against an OpenAI-compatible URL"),
    "train": ("chatmodel_serving.train.cli", "fine-tune a model on a JSONL dataset"),
    "run": ("chatmodel_serving.cli.run", "run a ChatModel manifest locally: fine-tune, then serve"),
    "triton-repo": ("chatmodel_serving.triton.repo", "write a Triton model repository that runs our engine"),
    "triton-server": ("chatmodel_serving.triton.server", "run the bundled tritonserver on a repository"),
    "vllm-sidecar": (
        "chatmodel_serving.cli.vllm_sidecar",
        "beside vLLM: follow an adapter table with its LoRA adapters and answer for the table's aliases",
    ),
    "gateway": (
        "chatmodel_serving.cli.gateway",
        "the OpenAI proxy for a namespace's ChatModels: prefix-affinity routing, quotas, scale from 0",
    ),
    "download": ("chatmodel_serving.cli.download", "fetch a model or dataset (hf://, s3://) into the cache"),
    "render": (
        "chatmodel_operator.render",
        "print every Kubernetes object the operator creates for a manifest",
    ),
}


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on a command line: its first word that is not an option (the top level's
    options take no value)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line as the `chatmodel` command reads it (argparse exits on an invalid one)."""
    parser = argparse.ArgumentParser(
        prog="chatmodel",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="exit codes: 0 done, 1 a failure while running, 2 bad input, 130 interrupted",
    )
    debug_help = "on an error, also print its traceback (or set CHATMODEL_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # Also after the subcommand (`chatmodel render x.yaml --debug`); SUPPRESS keeps the top level's value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Import only the module of the command being run (and none for --help on the top level).
    chosen = command_of(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, parents=[common])
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser.parse_args(argv)


def debug_env() -> bool:
    return os.environ.get("CHATMODEL_DEBUG", "").lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = command_of(argv)
    prog = f"chatmodel {command}" if command else "chatmodel"
    debug = debug_env() or "--debug" in argv  # known before parsing: importing a command can fail too
    try:
        args = parse(argv)  # a usage error exits 2 here, with argparse's own message
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe (`chatmodel render x.yaml | head -1`) shows here, not at exit
        return code
    except BrokenPipeError:
        # Python's documented fix (library/signal.html, "Note on SIGPIPE"): the reader is gone, so send the
        # rest of stdout nowhere rather than fail again while flushing it at exit; exit quietly.
        with contextlib.suppress(OSError, ValueError):  # ValueError: stdout is no file (a test's StringIO)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        lines, code = describe(exc)
        for line in lines:
            print(f"{prog}: {line}", file=sys.stderr)
        return code


class CliError(Exception):
    """What a command refuses or could not do, as lines that each name one problem (the option, the file and
    line, or the field); code 2 for bad input, 1 for a failure while running."""

    def __init__(self, lines: str | Sequence[str], code: int = 2) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        self.code = code
        super().__init__("\n".join(self.lines))


# Errors that mean bad input, raised by modules that may not import this one (lower layers). Looked up only
# once their module is loaded: describing a failed `chatmodel render` must not import torch.
BAD_INPUT = (
    ("chatmodel_serving.train.trainer", "ResumeError"),
    ("chatmodel_serving.triton.server", "TritonNotInstalled"),
)
# A file named on the command line (or in a manifest) that is missing, in the way or not readable.
BAD_PATH = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def loaded_class(module: str, name: str) -> type[BaseException] | None:
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def describe(exc: BaseException) -> tuple[list[str], int]:
    """The lines main() prints for an error (one per problem) and the exit code. A PEP 678 note on the
    error (`exc.add_note("x.yaml: document 2")`) says where it happened and prefixes each of its lines; an
    ExceptionGroup reports every error it holds."""
    if isinstance(exc, BaseExceptionGroup):
        parts = [describe(e) for e in exc.exceptions]
        lines, code = [line for ls, _ in parts for line in ls], max(c for _, c in parts)
    else:
        lines, code = _describe(exc)
    where = ": ".join(getattr(exc, "__notes__", None) or [])
    return ([f"{where}: {line}" for line in lines] if where else lines), code


def _describe(exc: BaseException) -> tuple[list[str], int]:
    import yaml
    from pydantic import ValidationError

    if isinstance(exc, CliError):
        return exc.lines, exc.code
    if isinstance(exc, ValidationError):
        return validation_lines(exc), 2
    if isinstance(exc, yaml.YAMLError):
        return [yaml_line(exc)], 2
    data_error = loaded_class("chatmodel_serving.train.data", "DataError")
    if data_error is not None and isinstance(exc, data_error):
        return data_lines(exc), 2
    if isinstance(exc, OSError):
        return [os_error_line(exc)], 2 if isinstance(exc, BAD_PATH) else 1
    bad_input = tuple(c for c in (loaded_class(m, n) for m, n in BAD_INPUT) if c is not None)
    if isinstance(exc, (ValueError, *bad_input)):
        return str(exc).splitlines() or [type(exc).__name__], 2
    # Not a refusal this module knows: most likely a bug. Still one line; --debug has the rest.
    return [f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"], 1


def field_path(loc: Sequence[int | str]) -> str:
    """pydantic's error location as the manifest spells it: spec.serving.replicas.min, spec.env[0].name."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def validation_lines(exc: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One line per field pydantic refused: its path and what is wrong, without pydantic's URL. An unknown
    field gets the nearest known one, or the known ones; `model` is the model validated (default: found by
    the error's title among the ChatModel spec's models)."""
    model = model or spec_model(exc.title)
    lines = []
    for err in exc.errors(include_url=False):
        where, msg = field_path(err["loc"]), err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if where and msg.startswith(where):  # a cross-field rule that names its own fields (spec.Rule)
                lines.append(msg)
                continue
        elif err["type"] == "extra_forbidden" and model is not None:
            msg = "unknown field" + known_fields_hint(model, err["loc"])
        elif isinstance(err.get("input"), (str, int, float)) and len(repr(err["input"])) <= 60:
            msg += f" (got {err['input']!r})"
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def spec_model(title: str) -> type[BaseModel] | None:
    from pydantic import BaseModel

    cls = getattr(sys.modules.get("chatmodel_operator.spec"), title, None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def known_fields_hint(model: type[BaseModel], loc: Sequence[int | str]) -> str:
    """'; did you mean X?' or '; known: a, b, c' for an unknown field at `loc`, or '' when the model at
    that place cannot be told (a union)."""
    cls: type[BaseModel] | None = model
    skip = 0  # list indexes and dict keys between a field and the model it holds
    for part in loc[:-1]:
        if skip:
            skip -= 1
            continue
        fields = cls.model_fields if cls is not None else {}
        field = next((f for name, f in fields.items() if part in (name, f.alias)), None)
        if field is None:
            return ""
        cls, skip = model_inside(field.annotation)
    if cls is None:
        return ""
    known = [f.alias or name for name, f in cls.model_fields.items()]
    near = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f"; did you mean {near[0]}?" if near else f"; known: {', '.join(known)}"


def model_inside(annotation: Any) -> tuple[type[BaseModel] | None, int]:
    """The pydantic model a field holds (through `X | None`, list[X], dict[str, X]) and how many location
    parts (list indexes, dict keys) come before that model's fields."""
    from pydantic import BaseModel

    tp, skip = annotation, 0
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                return None, 0
            tp = rest[0]
        elif origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
            tp, skip = args[0], skip + 1
        elif origin in (dict, collections.abc.Mapping) and len(args) == 2:
            tp, skip = args[1], skip + 1
        else:
            break
    return (tp, skip) if isinstance(tp, type) and issubclass(tp, BaseModel) else (None, 0)


def yaml_line(exc: yaml.YAMLError) -> str:
    """`x.yaml: line 3, column 7: mapping values are not allowed here`: one line, lines counted from 1."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        started = (
            f" at line {context_mark.line + 1}" if context_mark and context_mark.line != mark.line else ""
        )
        problem = f"{problem} ({context}{started})"
    return f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}: {problem}"


def data_lines(exc: Any) -> list[str]:
    """A DataError (chatmodel_serving.train.data) as one line per bad line of the dataset."""
    from ..train.data import MAX_REPORTED

    problems: list[tuple[int, str]] = exc.problems
    lines = [
        f"{exc.path}: line {n}: {msg}" if n else f"{exc.path}: {msg}" for n, msg in problems[:MAX_REPORTED]
    ]
    if len(problems) > MAX_REPORTED:
        lines.append(f"{exc.path}: ... and {len(problems) - MAX_REPORTED} more bad lines")
    return lines


def os_error_line(exc: OSError) -> str:
    """`missing.yaml: No such file or directory`."""
    if exc.strerror is None:  # raised with a message only: FileExistsError("output x exists; ...")
        return " ".join(str(exc).split())
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return ": ".join([*names, exc.strerror])
