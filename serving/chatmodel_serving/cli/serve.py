"""`chatmodel serve`: load one or more models, start their engines and the OpenAI API, drain on SIGTERM.

Its options are chatmodel_operator.runtime_args.ServeOptions, the one description of the runtime's command
line that `chatmodel run` and the operator's builders render too."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from chatmodel_operator.runtime_args import ServeOptions

from ..api.quota import Limits, Quotas, parse_key_line
from ..logs import setup_logging
from . import CliError

if TYPE_CHECKING:
    from collections.abc import Callable

    import uvicorn

    from ..api.records import TrainingRecord
    from ..api.state import ServedModel, ServerState

log = logging.getLogger("chatmodel.serve")


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
        raise CliError(f"--api-keys-file: cannot read {path}: {exc.strerror}") from None
    out = ApiKeys()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key, limits = parse_key_line(line, lineno)
        except ValueError as exc:
            raise CliError(f"--api-keys-file: {path} {exc}") from None
        out.keys.append(key)
        if limits is not None:
            out.limits[key] = limits
    if not out.keys:
        raise CliError(f"--api-keys-file: {path} holds no keys; refusing to start open by accident")
    return out


def serve_model(opts: ServeOptions, source: str, name: str | None = None) -> ServedModel:
    """One model loaded and its engine started (imports torch, so called late); `name` defaults to the
    model's own."""
    from ..api.state import ServedModel
    from ..engine.core import Engine
    from ..engine.types import EngineClient
    from ..models import load_model

    if opts.backend:  # Triton holds the weights; the API needs the tokenizer and config only
        from ..triton.client import load_front

        loaded = load_front(source)
    else:
        loaded = load_model(source, dtype=opts.dtype, device=opts.device)
    name = name or loaded.name
    engine: EngineClient
    if opts.backend:
        from ..engine.grammar import Grammars
        from ..triton.client import TritonBackend

        bound = opts.max_batch_size + opts.max_waiting_requests
        grammars = Grammars(loaded.tokenizer, int(loaded.model.config.vocab_size))
        engine = TritonBackend.from_url(opts.backend, name, bound, opts.max_kv_tokens, grammars)
    else:
        engine = Engine(
            loaded,
            max_batch_size=opts.max_batch_size,
            max_waiting_requests=opts.max_waiting_requests,
            max_kv_tokens=opts.max_kv_tokens,
            max_loras=opts.max_loras,
            max_lora_rank=opts.max_lora_rank,
        ).start()
    served = ServedModel(name, loaded, engine, opts.default_max_tokens, opts.default_temperature)
    served.training = training_record(source)
    return served


def training_record(source: str) -> TrainingRecord | None:
    """What the fine-tune that made this model folder left in it (metrics.json, and gate.json from `chatmodel
    run`), for GET /v1/versions; None for a plain model (or a record it cannot read, which is logged)."""
    from ..api.records import TrainingRecord
    from ..models import resolve_source
    from ..train.artifact import read_gate, read_metrics

    folder = resolve_source(source)
    try:
        metrics = read_metrics(folder)
        if metrics is None:
            return None
        return TrainingRecord.from_files(folder.name, metrics, read_gate(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        log.warning("no training record for %s: %s", source, exc)
        return None


def build_state(opts: ServeOptions, api_keys: ApiKeys) -> ServerState:
    """The models loaded and their engines started."""
    from ..api.state import ServerState

    names = opts.served_model_names or []
    if names and len(names) != len(opts.models):
        raise CliError("--served-model-name: give one name per --model")
    served: dict[str, ServedModel] = {}
    for i, source in enumerate(opts.models):
        model = serve_model(opts, source, names[i] if names else None)
        if model.name in served:
            raise CliError(f"--served-model-name: {model.name!r} is used twice")
        served[model.name] = model
    quotas = Quotas(
        Limits(opts.requests_per_minute, opts.tokens_per_minute), api_keys.limits, opts.quota_window_seconds
    )
    state = ServerState(
        served,
        api_keys.keys,
        log_prompts=opts.log_prompts,
        ui=opts.ui,
        quotas=quotas,
        max_request_bytes=opts.max_request_bytes,
        lora_updates=opts.runtime_lora,
        lora_dir=opts.lora_dir,
        adapters_file=opts.adapters_file,
    )
    serve_adapters(state, opts)
    return state


@dataclass(frozen=True)
class AdapterSource:
    flag: str  # where it was asked for: --lora-modules or --lora-dir
    name: str
    path: str


def adapter_sources(opts: ServeOptions) -> list[AdapterSource]:
    """The adapters to serve from the start (checked before torch is imported): each --lora-modules
    NAME=PATH, then every adapter folder inside --lora-dir under its folder's name."""
    out = []
    for item in opts.lora_modules or []:
        name, sep, path = item.partition("=")
        if item.lstrip().startswith("{"):  # vLLM's JSON form: {"name": ..., "path": ...}
            try:
                entry = json.loads(item)
                name, path, sep = str(entry["name"]), str(entry["path"]), "="
            except (ValueError, KeyError, TypeError):
                raise CliError(f'--lora-modules {item}: JSON needs "name" and "path"') from None
        if not (sep and name and path):
            raise CliError(f"--lora-modules {item}: give NAME=PATH (a served name and an adapter folder)")
        if not Path(path).expanduser().is_dir():
            raise CliError(f"--lora-modules {item}: no such folder {path}")
        out.append(AdapterSource("--lora-modules", name, path))
    if opts.lora_dir:
        root = Path(opts.lora_dir).expanduser()
        if not root.is_dir():
            raise CliError(f"--lora-dir {opts.lora_dir}: no such folder")
        found = sorted(d for d in root.iterdir() if (d / "adapter_config.json").is_file())
        out += [AdapterSource("--lora-dir", d.name, str(d)) for d in found]
    return out


def check_adapters_file(path: str | None) -> None:
    """A table that cannot be read now is refused (a later bad version of it is logged and skipped)."""
    from ..api.adapter_table import read_table

    if path:
        try:
            read_table(path)
        except ValueError as exc:
            raise CliError(f"--adapters-file {path}: {exc}") from None


def serve_adapters(state: ServerState, opts: ServeOptions) -> None:
    """Load the start-up adapters on the base model. A bad --lora-modules entry stops the server (the user
    named it); a bad folder inside --lora-dir is logged and skipped, so one broken adapter in a shared
    folder does not take the others down."""
    from ..api.adapters import load_adapter
    from ..api.protocol import ApiError

    for src in adapter_sources(opts):
        try:
            state.models[src.name] = load_adapter(state, src.name, src.path)
        except ApiError as exc:
            if src.flag == "--lora-modules":
                raise CliError(f"--lora-modules {src.name}={src.path}: {exc.message}") from None
            log.warning("LoRA adapter skipped", extra={"folder": src.path, "reason": exc.message})


def tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """(certificate, key) for HTTPS; both or neither, readable now rather than after the model loads."""
    given = {"--tls-cert-file": cert, "--tls-key-file": key}
    if not any(given.values()):
        return None
    for flag, value in given.items():
        if not value:
            raise CliError(f"{flag}: TLS needs both --tls-cert-file and --tls-key-file")
        if not os.access(value, os.R_OK):
            raise CliError(f"{flag}: cannot read {value}")
    return cert or "", key or ""


def check_listen_address(host: str, port: int) -> None:
    """Refuse a port that is not one or already taken, and a host that is not this machine's, before the
    minutes a model takes to load (uvicorn would find out only then). Port 0 (any free port) passes."""
    if not 0 <= port <= 65535:
        raise CliError(f"--port {port}: not a port number (0 to 65535)")
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CliError(f"--host {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT counts as free
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                busy = f"{host}:{port} is in use; stop what listens there or pick another port"
                raise CliError(f"--port {port}: {busy}", code=1) from None
            if exc.errno == errno.EACCES:
                denied = f"not allowed to listen on {host}:{port} (a port below 1024 needs privileges)"
                raise CliError(f"--port {port}: {denied}", code=1) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise CliError(f"--host {host}: not an address of this machine") from None
            raise


def check_model_sources(models: list[str]) -> None:
    """A local model folder that does not exist, refused before torch is imported (models.resolve_source
    checks everything again, and the rest, when it loads)."""
    for source in models:
        path = source.removeprefix("file://")
        if path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
            raise CliError(f"--model {source}: no such folder")


def uvicorn_config(
    app: Any, host: str, port: int, drain_timeout: float, tls: tuple[str, str] | None
) -> uvicorn.Config:
    """How our servers listen (`serve`, `vllm-sidecar`): our JSON logs, no access log, open responses get
    the drain budget on SIGTERM."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(drain_timeout),
        timeout_keep_alive=30,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )


def serve(opts: ServeOptions, background: Callable[[ServerState], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; then stop taking requests, finish those in flight and return 0.
    `background(state)` runs in a thread of its own beside the server (`chatmodel run`'s fine-tune,
    which then adds its version to the served models)."""
    keys = read_api_keys(opts.api_keys_file)  # fail fast, before torch is imported and a model loads
    tls = tls_files(opts.tls_cert_file, opts.tls_key_file)
    check_listen_address(opts.host, opts.port)
    check_model_sources(opts.models)
    adapter_sources(opts)
    check_adapters_file(opts.adapters_file)

    import uvicorn

    from ..api.app import create_app

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

    server = DrainingServer(uvicorn_config(app, opts.host, opts.port, opts.drain_timeout, tls))
    if background is not None:
        threading.Thread(target=background, args=(state,), name="chatmodel-background", daemon=True).start()
    log.info("serving", extra={"url": f"{scheme}://{opts.host}:{opts.port}/v1", "models": list(state.models)})
    server.run()
    for m in state.models.values():
        m.engine.shutdown()
    log.info("stopped")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    ServeOptions.add_arguments(p)  # the runtime's options, described once (chatmodel_operator.runtime_args)
    p.add_argument("--log-format", choices=["json", "text"], default="json")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    return serve(ServeOptions.from_args(args))  # errors: chatmodel_serving.cli.main reports them
