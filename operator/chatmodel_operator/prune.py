"""`python -m chatmodel_operator.prune VERSION...`: remove pruned versions' artifact folders from the PVC;
`--root /model-cache --entry PATH`: remove one download from the model cache.

Runs in a small Job the operator creates when a fine-tuned version leaves status.versions (the history
limit), or when a ChatModel whose cachePolicy is Delete goes. Stdlib only, so the operator image runs it.
Refuses names that are not plain folder names (or, for an entry, a relative path without `..`), so a bad
argument can never reach outside the root."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from chatmodel_operator.builders.meta import ARTIFACTS_MOUNT


def prune(root: Path, versions: list[str]) -> list[str]:
    """Delete root/VERSION for each version; returns those that existed. Idempotent (a retried pod)."""
    removed = []
    for v in versions:
        if not v or v in (".", "..") or "/" in v or "\\" in v:
            raise ValueError(f"not a version folder name: {v!r}")
        folder = root / v
        if folder.is_dir():
            shutil.rmtree(folder)
            removed.append(v)
    return removed


def prune_entry(root: Path, entry: str) -> bool:
    """Delete one cache entry (a folder under root) and its lock file; returns whether it existed."""
    parts = Path(entry).parts
    if not parts or Path(entry).is_absolute() or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a cache entry path: {entry!r}")
    folder = root / entry
    folder.with_name(folder.name + ".lock").unlink(missing_ok=True)
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chatmodel_operator.prune", description=__doc__)
    p.add_argument("versions", nargs="*")
    p.add_argument("--root", type=Path, default=Path(ARTIFACTS_MOUNT))
    p.add_argument("--entry", help="a download's folder, relative to --root (the model cache)")
    args = p.parse_args(argv)
    try:
        if args.entry:
            removed = [args.entry] if prune_entry(args.root, args.entry) else []
        else:
            removed = prune(args.root, args.versions)
    except ValueError as e:
        print(f"prune: {e}", file=sys.stderr)
        return 2
    print(f"removed {removed or 'nothing'} under {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
