"""`chatmodel serve`: load one or more models, start their engines and the OpenAI API, drain on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .logs import setup_logging
from .quota import Limits, Quotas, parse_key_line

log = logging.getLogger("chatmodel.serve")


@dataclass
class ServeOptions:
    models: list[str] = field(default_factory=lambda: ["builtin://smollm2-135m"])
    served_model_names: list[str] | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_file: str | None = None
    max_waiting_requests: int = 64
    max_batch_size: int = 32
    max_kv_tokens: int = 131072
    dtype: str = "auto"
    device: str = "auto"
    default_max_tokens: int = 512
    default_temperature: float = 0.7
    drain_timeout: float = 120.0
    log_prompts: bool = False
    ui: bool = True
    backend: str | None = None  # triton://HOST:GRPC_PORT[/MODEL]: forward generation to Triton
    requests_per_minute: int = 0  # per API key, 0 = unlimited
    tokens_per_minute: int = 0
    quota_window_seconds: float = 60.0
    max_request_bytes: int = 1 << 20
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


@dataclass
class ApiKeys:
    keys: list[str] = field(default_factory=list)
    limits: dict[str, Limits] = field(default_factory=dict)  # per-key quota overrides


def read_api_keys(path: str | None) -> ApiKeys:
    """One key per line, optionally followed by its own quota (`KEY rpm=60 tpm=20000`); blank lines and
    # comments are skipped."""
    if not path:
        return ApiKeys()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"--api-keys-file: cannot read {path}: {exc.strerror}") from None
    out = ApiKeys()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key, limits = parse_key_line(line, lineno)
        except ValueError as exc:
            raise SystemExit(f"--api-keys-file: {path} {exc}") from None
        out.keys.append(key)
        if limits is not None:
            out.limits[key] = limits
    if not out.keys:
        raise SystemExit(f"--api-keys-file: {path} holds no keys; refusing to start open by accident")
    return out


def build_state(opts: ServeOptions, api_keys: ApiKeys):  # -> ServerState; imports torch, so called late
    from .api import ServedModel, ServerState
    from .engine import Engine
    from .models import load_model

    names = opts.served_model_names or []
    if names and len(names) != len(opts.models):
        raise SystemExit("--served-model-name: give one name per --model")
    served: dict[str, ServedModel] = {}
    for i, source in enumerate(opts.models):
        if opts.backend:  # Triton holds the weights; the API needs the tokenizer and config only
            from .triton.client import load_front

            loaded = load_front(source)
        else:
            loaded = load_model(source, dtype=opts.dtype, device=opts.device)
        name = names[i] if names else loaded.name
        if name in served:
            raise SystemExit(f"--served-model-name: {name!r} is used twice")
        engine: Any  # an Engine, or a TritonBackend with the same methods
        if opts.backend:
            from .triton.client import TritonBackend

            bound = opts.max_batch_size + opts.max_waiting_requests
            engine = TritonBackend.from_url(opts.backend, name, bound, opts.max_kv_tokens)
        else:
            engine = Engine(
                loaded,
                max_batch_size=opts.max_batch_size,
                max_waiting_requests=opts.max_waiting_requests,
                max_kv_tokens=opts.max_kv_tokens,
            ).start()
        served[name] = ServedModel(name, loaded, engine, opts.default_max_tokens, opts.default_temperature)
    quotas = Quotas(
        Limits(opts.requests_per_minute, opts.tokens_per_minute), api_keys.limits, opts.quota_window_seconds
    )
    return ServerState(
        served,
        api_keys.keys,
        log_prompts=opts.log_prompts,
        ui=opts.ui,
        quotas=quotas,
        max_request_bytes=opts.max_request_bytes,
    )


def tls_files(opts: ServeOptions) -> tuple[str, str] | None:
    """(certificate, key) for HTTPS; both or neither, readable now rather than after the model loads."""
    given = {"--tls-cert-file": opts.tls_cert_file, "--tls-key-file": opts.tls_key_file}
    if not any(given.values()):
        return None
    for flag, value in given.items():
        if not value:
            raise SystemExit(f"{flag}: TLS needs both --tls-cert-file and --tls-key-file")
        if not os.access(value, os.R_OK):
            raise SystemExit(f"{flag}: cannot read {value}")
    return opts.tls_cert_file or "", opts.tls_key_file or ""


def serve(opts: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; then stop taking requests, finish those in flight and return 0."""
    import uvicorn

    from .api import create_app

    keys = read_api_keys(opts.api_keys_file)  # fail fast, before minutes of model loading
    tls = tls_files(opts)
    state = build_state(opts, keys)
    if not keys.keys:
        log.warning("no API keys configured: the API is open to anyone who can reach it")
    app = create_app(state)
    scheme = "https" if tls else "http"
    if state.ui:
        log.info("playground", extra={"url": f"{scheme}://{opts.host}:{opts.port}/"})

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if state.draining:  # a second signal: stop now
                self.should_exit = self.force_exit = True
                return
            log.info("draining", extra={"signal": signal.Signals(sig).name})
            state.draining = True  # /ready turns 503 and new requests are refused
            for m in state.models.values():
                m.engine.stop_accepting()
            threading.Thread(target=self._drain, daemon=True).start()

        def _drain(self) -> None:
            deadline = time.monotonic() + opts.drain_timeout
            while state.inflight() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.should_exit = True  # uvicorn then waits for open responses to finish writing

    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(opts.drain_timeout),
        timeout_keep_alive=30,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = DrainingServer(config)
    log.info("serving", extra={"url": f"{scheme}://{opts.host}:{opts.port}/v1", "models": list(state.models)})
    server.run()
    for m in state.models.values():
        m.engine.shutdown()
    log.info("stopped")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="SRC",
        help="builtin://smollm2-135m (default), a local folder, file://..., or hf://org/name "
        "from the local cache; repeat to serve several models",
    )
    p.add_argument(
        "--served-model-name",
        action="append",
        dest="served_model_names",
        metavar="NAME",
        help="name in /v1/models and the `model` field (one per --model)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-keys-file",
        default=env("CHATMODEL_API_KEYS_FILE"),
        help="file with one API key per line (env CHATMODEL_API_KEYS_FILE); none = open API",
    )
    p.add_argument(
        "--max-waiting-requests",
        type=int,
        default=64,
        help="queue bound; beyond it requests get 429 with Retry-After",
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences decoded together")
    p.add_argument(
        "--max-kv-tokens",
        type=int,
        default=131072,
        help="KV-cache capacity in tokens: admission waits beyond it; kv_cache_usage_perc is use ÷ this",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto = bfloat16 where the CPU/GPU computes it natively, else float32",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--default-max-tokens", type=int, default=512)
    p.add_argument("--default-temperature", type=float, default=0.7)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to finish in-flight requests after SIGTERM",
    )
    p.add_argument("--log-prompts", action="store_true", help="log prompts (off by default for privacy)")
    p.add_argument("--no-ui", dest="ui", action="store_false", help="do not serve the playground page at /")
    p.add_argument(
        "--backend",
        metavar="URL",
        help="triton://HOST:GRPC_PORT[/MODEL]: serve the API by forwarding to a Triton server running "
        "a `chatmodel triton-repo` repository (MODEL defaults to the served model name)",
    )
    p.add_argument(
        "--requests-per-minute",
        type=int,
        default=int(env("CHATMODEL_REQUESTS_PER_MINUTE", "0")),
        help="per API key (a key's own rpm= in the keys file wins); 0 = unlimited",
    )
    p.add_argument(
        "--tokens-per-minute",
        type=int,
        default=int(env("CHATMODEL_TOKENS_PER_MINUTE", "0")),
        help="prompt + completion tokens per API key (a key's own tpm= wins); 0 = unlimited",
    )
    # Tests shorten the quota window to see it free up; not a user setting.
    p.add_argument("--quota-window-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=1 << 20,
        help="largest request body; beyond it 413 (default 1 MiB)",
    )
    p.add_argument(
        "--tls-cert-file", default=env("CHATMODEL_TLS_CERT_FILE"), help="serve HTTPS with this certificate"
    )
    p.add_argument("--tls-key-file", default=env("CHATMODEL_TLS_KEY_FILE"), help="the certificate's key")
    p.add_argument("--log-format", choices=["json", "text"], default="json")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    opts = ServeOptions(
        models=args.models or ["builtin://smollm2-135m"],
        served_model_names=args.served_model_names,
        host=args.host,
        port=args.port,
        api_keys_file=args.api_keys_file,
        max_waiting_requests=args.max_waiting_requests,
        max_batch_size=args.max_batch_size,
        max_kv_tokens=args.max_kv_tokens,
        dtype=args.dtype,
        device=args.device,
        default_max_tokens=args.default_max_tokens,
        default_temperature=args.default_temperature,
        drain_timeout=args.drain_timeout,
        log_prompts=args.log_prompts,
        ui=args.ui,
        backend=args.backend,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
        quota_window_seconds=args.quota_window_seconds,
        max_request_bytes=args.max_request_bytes,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    try:
        return serve(opts)
    except Exception as exc:
        from .models import ModelSourceError

        if isinstance(exc, ModelSourceError):
            print(f"chatmodel serve: {exc}", file=sys.stderr)
            return 2
        raise
