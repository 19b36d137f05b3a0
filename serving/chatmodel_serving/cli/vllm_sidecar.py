"""`chatmodel vllm-sidecar`: keep a vLLM server's LoRA adapters equal to an adapter table and answer for the
table's aliases in front of it (api/vllm_sidecar.py). The operator runs it beside vLLM in a
serving.lora.shared pod; its options are chatmodel_operator.runtime_args.VllmSidecarOptions."""

from __future__ import annotations

import argparse

from chatmodel_operator.runtime_args import VllmSidecarOptions

from ..logs import setup_logging
from . import CliError
from .serve import check_adapters_file, check_listen_address, tls_files, uvicorn_config


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

    app = create_app(opts.adapters_file, opts.vllm_url)
    uvicorn.Server(uvicorn_config(app, opts.host, opts.port, opts.drain_timeout, tls)).run()
    return 0
