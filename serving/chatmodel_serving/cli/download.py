"""`chatmodel download SOURCE`: fetch a model or dataset into the download cache and print its local path.

The cluster's download Job runs this with the shared model cache volume; `chatmodel run` and `serve` call
the same code (chatmodel_serving.fetch) with ~/.cache/chatmodel. Stores and credentials come from the
variables their own tools read: HF_ENDPOINT, HF_TOKEN; AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source", help="hf://org/name[@revision], hf://datasets/org/name/file.jsonl, s3://bucket/key"
    )
    p.add_argument("--cache-dir", type=Path, help="download cache (default: $CHATMODEL_CACHE/downloads)")
    p.add_argument("--endpoint", help="hub or S3 endpoint URL (default: HF_ENDPOINT / AWS_ENDPOINT_URL)")
    p.add_argument("--region", help="S3 region (default: AWS_REGION)")
    p.add_argument(
        "--virtual-host-style", action="store_true", help="S3 bucket in the host name (default: in the path)"
    )
    p.add_argument(
        "--stall-seconds", type=float, help="fail when no byte arrives for this long (default 300)"
    )
    p.add_argument("--offline", action="store_true", help="only look in the cache")
    p.add_argument("--json", action="store_true", help="print path, revision and bytes fetched as JSON")
    p.add_argument(
        "--result-file",
        type=Path,
        help="also write the result (or the error) there as JSON: the cluster's download Job writes its "
        "termination message, which the operator reads",
    )


def run(args: argparse.Namespace) -> int:
    from ..fetch import Settings, pull

    try:
        settings = Settings.for_source(
            args.source,
            args.endpoint,
            args.region,
            False if args.virtual_host_style else None,
            stall_seconds=args.stall_seconds,
            offline=True if args.offline else None,
        )
        pulled = pull(args.source, settings, cache_root=args.cache_dir)
    except Exception as e:  # the CLI prints it as one line; the result file carries it to the operator
        if args.result_file:
            args.result_file.write_text(json.dumps({"error": str(e) or type(e).__name__}))
        raise
    body = {
        "path": str(pulled.path),
        "revision": pulled.revision,
        "fetchedBytes": pulled.fetched_bytes,
        "bytesTotal": pulled.total_bytes,
        "files": pulled.files,
    }
    if args.result_file:
        args.result_file.write_text(json.dumps(body))
    print(json.dumps(body) if args.json else pulled.path)
    return 0
