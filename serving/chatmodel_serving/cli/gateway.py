"""`chatmodel gateway`: the OpenAI-compatible proxy in front of one namespace's ChatModels (gateway/). Its
options are chatmodel_operator.runtime_args.GatewayOptions (the chart renders the same flags)."""

from __future__ import annotations

import argparse
import ssl

from chatmodel_operator.runtime_args import GatewayOptions

from ..logs import setup_logging
from . import CliError
from .serve import check_listen_address, read_api_keys, tls_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    GatewayOptions.add_arguments(p)
    p.add_argument("--log-format", choices=["json", "text"], default="json")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    opts = GatewayOptions.from_args(args)
    keys = read_api_keys(opts.api_keys_file)
    tls = tls_files(opts.tls_cert_file, opts.tls_key_file)
    check_listen_address(opts.host, opts.port)

    import httpx
    from aiohttp import web

    from ..api.quota import STORE_SCHEMES, Limits, Quotas

    if not opts.quota_store.startswith(STORE_SCHEMES):
        raise CliError(f"--quota-store {opts.quota_store}: not memory:// or a redis:// URI")
    from ..gateway import kube
    from ..gateway.app import Gateway, create_app
    from ..gateway.directory import Directory

    try:
        api = kube.connect(opts.kube_api, opts.kube_token_file, opts.kube_ca_file)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    quotas = Quotas(
        Limits(opts.requests_per_minute, opts.tokens_per_minute),
        keys.limits,
        storage=opts.quota_store,
        fail_open=opts.quota_store_down == "open",
    )
    gw = Gateway(
        Directory(), api, opts.namespace, quotas, keys.keys, opts.prefix_chars, opts.cold_start_timeout,
        opts.max_held, opts.upstream_scheme,
    )  # fmt: skip
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=opts.upstream_ca_file) if opts.upstream_ca_file else True
    )
    app = create_app(gw, httpx.AsyncClient(verify=verify))
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    web.run_app(
        app, host=opts.host, port=opts.port, ssl_context=context, shutdown_timeout=opts.drain_timeout,
        access_log=None, print=None,
    )  # fmt: skip
    return 0
