"""`chatmodel render MANIFEST`: print every object the operator would create, as YAML, with no cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import yaml

from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import load_manifests


class _KubeDumper(yaml.SafeDumper):
    """Quotes the strings YAML 1.1 reads as booleans that PyYAML leaves bare (y, n): kubectl's parser
    would turn them into booleans ("cannot unmarshal bool into ... of type string")."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_KubeDumper.add_representer(str, _str)


def dump(objs: list[dict[str, Any]], stream: TextIO) -> None:
    yaml.dump_all(objs, stream, Dumper=_KubeDumper, sort_keys=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="YAML file with one or more ChatModel documents")


def run(args: argparse.Namespace) -> int:
    config = Config.from_env()
    objs = [o for cm in load_manifests(args.manifest) for o in all_objects(cm, config)]
    dump(objs, sys.stdout)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="chatmodel render", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
