"""`chatmodel render MANIFEST`: print every object the operator would create, as YAML, with no cluster."""

from __future__ import annotations

import argparse
import sys

import yaml

from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import load_manifests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="YAML file with one or more ChatModel documents")


def run(args: argparse.Namespace) -> int:
    config = Config.from_env()
    objs = [o for cm in load_manifests(args.manifest) for o in all_objects(cm, config)]
    yaml.safe_dump_all(objs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="chatmodel render", description=__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
