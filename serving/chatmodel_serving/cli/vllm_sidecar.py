"""`chatmodel vllm-sidecar`: keep a vLLM server's LoRA adapters equal to an adapter table and answer for the
table's aliases in front of it (api/vllm_sidecar.py). The operator runs it beside vLLM in a
serving.lora.shared pod; its options are chatmodel_operator.runtime_args.VllmSidecarOptions."""

from __future__ import annotations

import argparse

from chatmodel_operator.runtime_args import VllmSidecarOptions

from ..logs import setup_logging
from . import CliError
from .serve import check_adapters_file, check_listen_address, tls_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    VllmSidecarOptions.add_arguments(p)
    p.add_argument("--log-format", choices=["json", "text"], default="json")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    opts = VllmSidecarOptions.from_args(args)
    if not opts.adapters_file:
        raise CliError("--adapters-file: required (the table to follow)")
    check_adapters_file(opts.adapters_file)
    tls = tls_files(opts.tls_cert_file, opts.tls_key_file)
    check_listen_address(opts.host, opts.port)

    import uvicorn

    from ..api.vllm_sidecar import create_app

    uvicorn.run(
        create_app(opts.adapters_file, opts.vllm_url),
        host=opts.host,
        port=opts.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(opts.drain_timeout),
        timeout_keep_alive=30,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    return 0
