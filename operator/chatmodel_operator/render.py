"""`chatmodel render MANIFEST`: print every object the operator would create, as YAML, with no cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import KIND, ChatModel, parse_manifest


class _KubeDumper(yaml.SafeDumper):
    """Quotes the strings YAML 1.1 reads as booleans that PyYAML leaves bare (y, n): kubectl's parser
    would turn them into booleans ("cannot unmarshal bool into ... of type string")."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_KubeDumper.add_representer(str, _str)


def dump(objs: list[dict[str, Any]], stream: TextIO) -> None:
    yaml.dump_all(objs, stream, Dumper=_KubeDumper, sort_keys=False)


def load(path: str) -> list[ChatModel]:
    """Every ChatModel in a (multi-document) YAML file; other kinds are skipped. YAML that does not parse
    raises yaml's error (it names the line); the documents that fail validation raise together, as one
    ExceptionGroup, each error noted with its file and document: `chatmodel render` (chatmodel_serving.cli)
    prints a line per problem, `x.yaml: document 2: spec.serving.replicas.min: ...`."""
    with open(path, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    several = sum(1 for d in docs if d is not None) > 1
    models: list[ChatModel] = []
    errors: list[Exception] = []
    for number, doc in enumerate(docs, 1):
        if doc is None:  # an empty document (a leading or trailing ---)
            continue
        error: Exception
        if not isinstance(doc, dict):
            error = ValueError(f"expected a Kubernetes object (a mapping), not a YAML {type(doc).__name__}")
        elif doc.get("kind") != KIND:
            continue
        else:
            try:
                models.append(parse_manifest(doc))
                continue
            except ValidationError as exc:
                error = exc
        error.add_note(f"{path}: document {number}" if several else path)
        errors.append(error)
    if errors:
        raise ExceptionGroup(f"{path}: {len(errors)} invalid documents", errors)
    if not models:
        raise ValueError(f"{path}: no document of kind {KIND}")
    return models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="YAML file with one or more ChatModel documents")


def run(args: argparse.Namespace) -> int:
    config = Config.from_env()
    objs = [o for cm in load(args.manifest) for o in all_objects(cm, config)]
    dump(objs, sys.stdout)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="chatmodel render", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
