"""Every `chatmodel` command line the operator renders (serve, train, triton-repo, triton-server, for every
sample manifest) parses with the runtime's real argument parser; `chatmodel serve`'s options survive a
round trip through the parser (chatmodel_operator.runtime_args is the one description of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatmodel_operator.builders import all_objects
from chatmodel_operator.builders.serving import build, serve_options
from chatmodel_operator.config import Config
from chatmodel_operator.runtime_args import ServeOptions
from chatmodel_operator.spec import load_manifests
from chatmodel_serving.cli import parse
from chatmodel_serving.cli.run import plan, serve_args
from chatmodel_serving.cli.run import serve_options as run_serve_options

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def chatmodel_argv(container: dict[str, Any]) -> list[str] | None:
    """The arguments after `chatmodel` in a container's command line, or None when it runs something else."""
    line = [*container.get("command", []), *container.get("args", [])]
    return line[line.index("chatmodel") + 1 :] if "chatmodel" in line else None


def command_lines() -> list[tuple[str, list[str]]]:
    out = []
    for path in SAMPLES:
        for cm in load_manifests(path):
            for obj in all_objects(cm, Config()):
                spec = obj.get("spec", {})
                pod = spec.get("template", {}).get("spec") or spec.get("trainer", {})
                for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                    argv = chatmodel_argv(c)
                    if argv is not None:
                        out.append((f"{path.stem}/{obj['kind']}/{c['name']}", argv))
    return out


LINES = command_lines()


def test_every_subcommand_the_operator_renders_is_covered() -> None:
    assert {argv[0] for _, argv in LINES} >= {"serve", "train", "triton-repo", "triton-server"}


@pytest.mark.parametrize(("where", "argv"), LINES, ids=[w for w, _ in LINES])
def test_rendered_command_line_parses(where: str, argv: list[str]) -> None:
    args = parse(argv)
    assert args.command == argv[0]
    if argv[0] == "serve":  # and renders back to options that parse the same
        opts = ServeOptions.from_args(args)
        assert ServeOptions.from_args(parse(["serve", *opts.to_argv()])) == opts


def test_serve_options_round_trip_through_the_parser() -> None:
    cm = load_manifests(SAMPLES[0])[0]
    opts = serve_options(cm, "/artifacts/v1", Config(), api_keys=True)
    assert ServeOptions.from_args(parse(["serve", *opts.to_argv()])) == opts
    built = build(cm, "v1", Config())  # the Deployment's line is rendered from its options, not edited
    container = built.deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", *built.options.to_argv()]


def test_chatmodel_run_renders_the_same_options() -> None:
    p = plan(ROOT / "manifests/samples/quickstart.yaml")
    opts = run_serve_options(p, "127.0.0.1", 0, with_base=True, api_keys_file=None)
    parsed = ServeOptions.from_args(parse(["serve", *serve_args(opts)]))
    assert parsed.models == opts.models and parsed.served_model_names == opts.served_model_names
    assert (parsed.port, parsed.host) == (ServeOptions.port, ServeOptions.host)  # the launcher sets them
