"""The runtime's command line, described once: `chatmodel serve` parses it with `add_arguments` and
`from_args`; `chatmodel run`, the demo and every operator builder render it with `to_argv`.

It lives beside spec.py because both sides use it: the serving runtime (which may import the shared spec
package) and the operator (which never imports the runtime). Plain dataclasses and argparse: no torch,
no pydantic, no kopf.

One field = one flag. Its metadata says the flag, help text and, where set, the environment variable that
supplies the default, argparse's `choices`, or that the flag is a negation (`--no-ui` stores False). List
fields repeat their flag; `models` and `served_model_names` are rendered as pairs (`--model M
--served-model-name N` per model).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

DEFAULT_MODEL = "builtin://smollm2-135m"
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _opt(flag: str, help: str, **extra: Any) -> dict[str, Any]:
    return {"flag": flag, "help": help, **extra}


class CommandLine:
    """A command's options as a dataclass (the subclass): one flag per field, parsed with `add_arguments` and
    `from_args`, rendered with `to_argv`."""

    PINNED: ClassVar[tuple[str, ...]] = ()  # fields rendered even at their defaults
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # set by @dataclass on the subclass

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field; defaults from the environment where a field names a variable."""
        for f in dataclasses.fields(cls):
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")  # "int", ...
            meta = dict(f.metadata)
            flag, help_text = meta.pop("flag"), meta.pop("help")
            env = meta.pop("env", None)
            if meta.pop("negate", False):
                parser.add_argument(flag, dest=f.name, action="store_false", help=help_text)
                continue
            if kind == "bool":
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
                continue
            if kind.startswith("list["):  # repeated; None = the field's default (see from_args)
                parser.add_argument(flag, dest=f.name, action="append", help=help_text, **meta)
                continue
            convert = {"int": int, "float": float}.get(kind, str)
            default = f.default
            if env and os.environ.get(env) is not None:
                default = convert(os.environ[env])
            parser.add_argument(flag, dest=f.name, type=convert, default=default, help=help_text, **meta)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if v is not None})  # None: the field's default

    def to_argv(self, exclude: Collection[str] = ()) -> list[str]:
        """The command's arguments (without the subcommand) that parse back to these options: every field
        that differs from its default, and the PINNED ones always; `exclude` names fields to leave out (a
        launcher that sets --host/--port itself)."""
        defaults = type(self)()
        args: list[str] = []
        for f in dataclasses.fields(self):
            if f.name in exclude:
                continue
            value, flag = getattr(self, f.name), f.metadata["flag"]
            special = self.rendered(f.name)
            if special is not None:
                args += special
            elif value == getattr(defaults, f.name) and f.name not in self.PINNED:
                continue
            elif isinstance(value, bool):
                args.append(flag)  # --log-prompts, or --no-ui when ui is False
            elif isinstance(value, list):
                args += [a for item in value for a in (flag, str(item))]
            elif value is not None:
                args += [flag, str(value)]
        return args

    def rendered(self, name: str) -> list[str] | None:
        """The arguments of a field rendered its own way, or None for the usual flag and value."""
        return None


@dataclass
class ServeOptions(CommandLine):
    """Everything `chatmodel serve` takes, with its defaults."""

    models: list[str] = field(
        default_factory=lambda: [DEFAULT_MODEL],
        metadata=_opt(
            "--model",
            "builtin://smollm2-135m (default), a local folder, file://..., hf://org/name[@rev] or "
            "s3://bucket/prefix (downloaded once into the cache); repeat to serve several models",
            metavar="SRC",
        ),
    )
    served_model_names: list[str] | None = field(
        default=None,
        metadata=_opt(
            "--served-model-name",
            "name in /v1/models and the `model` field (one per --model)",
            metavar="NAME",
        ),
    )
    host: str = field(default="127.0.0.1", metadata=_opt("--host", "address to listen on"))
    port: int = field(default=8000, metadata=_opt("--port", "port to listen on"))
    api_keys_file: str | None = field(
        default=None,
        metadata=_opt(
            "--api-keys-file",
            "file with one API key per line (env CHATMODEL_API_KEYS_FILE); none = open API",
            env="CHATMODEL_API_KEYS_FILE",
        ),
    )
    max_waiting_requests: int = field(
        default=64,
        metadata=_opt("--max-waiting-requests", "queue bound; beyond it requests get 429 with Retry-After"),
    )
    max_batch_size: int = field(default=32, metadata=_opt("--max-batch-size", "sequences decoded together"))
    max_kv_tokens: int = field(
        default=131072,
        metadata=_opt(
            "--max-kv-tokens",
            "KV-cache capacity in tokens: admission waits beyond it; kv_cache_usage_perc is use ÷ this",
        ),
    )
    dtype: str = field(
        default="auto",
        metadata=_opt(
            "--dtype", "auto = bfloat16 where the CPU/GPU computes it natively, else float32", choices=DTYPES
        ),
    )
    device: str = field(default="auto", metadata=_opt("--device", "auto, cpu, cuda or cuda:N"))
    default_max_tokens: int = field(
        default=512, metadata=_opt("--default-max-tokens", "max_tokens when a request gives none")
    )
    default_temperature: float = field(
        default=0.7, metadata=_opt("--default-temperature", "temperature when a request gives none")
    )
    drain_timeout: float = field(
        default=120.0, metadata=_opt("--drain-timeout", "seconds to finish in-flight requests after SIGTERM")
    )
    log_prompts: bool = field(
        default=False, metadata=_opt("--log-prompts", "log prompts (off by default for privacy)")
    )
    ui: bool = field(
        default=True, metadata=_opt("--no-ui", "do not serve the playground page at /", negate=True)
    )
    backend: str | None = field(
        default=None,
        metadata=_opt(
            "--backend",
            "triton://HOST:GRPC_PORT[/MODEL]: serve the API by forwarding to a Triton server running "
            "a `chatmodel triton-repo` repository (MODEL defaults to the served model name)",
            metavar="URL",
        ),
    )
    lora_modules: list[str] | None = field(
        default=None,
        metadata=_opt(
            "--lora-modules",
            'NAME=PATH (or vLLM\'s JSON {"name": NAME, "path": PATH}): serve the PEFT LoRA adapter in '
            "folder PATH as model NAME on the base model, batched with it and other adapters (repeat)",
            metavar="NAME=PATH",
        ),
    )
    lora_dir: str | None = field(
        default=None,
        metadata=_opt(
            "--lora-dir",
            "a folder of adapter folders: each one holding adapter_config.json is served under its "
            "folder's name, as with --lora-modules: those there at start, and a later one when a request "
            "first names it",
            metavar="DIR",
        ),
    )
    adapters_file: str | None = field(
        default=None,
        metadata=_opt(
            "--adapters-file",
            'a JSON table {"adapters": {NAME: PATH}, "aliases": {ALIAS: {NAME: WEIGHT}}} followed while '
            "the server runs: its adapters loaded (before the server is ready) and those it drops unloaded; "
            "a request for an alias goes to one of its adapters at random by weight",
            metavar="FILE",
        ),
    )
    max_loras: int = field(
        default=8,
        metadata=_opt(
            "--max-loras",
            "LoRA adapters on the device at once; more stay loaded in CPU memory and take a slot when asked "
            "for (least recently used out); 0 = no adapters",
        ),
    )
    max_lora_rank: int = field(
        default=64, metadata=_opt("--max-lora-rank", "the highest LoRA rank an adapter may have")
    )
    runtime_lora: bool = field(
        default=True,
        metadata=_opt(
            "--no-runtime-lora",
            "refuse POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes; open to API "
            "callers by default) and loading --lora-dir adapters on demand",
            negate=True,
        ),
    )
    requests_per_minute: int = field(
        default=0,
        metadata=_opt(
            "--requests-per-minute",
            "per API key (a key's own rpm= in the keys file wins); 0 = unlimited",
            env="CHATMODEL_REQUESTS_PER_MINUTE",
        ),
    )
    tokens_per_minute: int = field(
        default=0,
        metadata=_opt(
            "--tokens-per-minute",
            "prompt + completion tokens per API key (a key's own tpm= wins); 0 = unlimited",
            env="CHATMODEL_TOKENS_PER_MINUTE",
        ),
    )
    # Tests shorten the quota window to see it free up; not a user setting.
    quota_window_seconds: float = field(
        default=60.0, metadata=_opt("--quota-window-seconds", argparse.SUPPRESS)
    )
    max_request_bytes: int = field(
        default=1 << 20,
        metadata=_opt("--max-request-bytes", "largest request body; beyond it 413 (default 1 MiB)"),
    )
    tls_cert_file: str | None = field(
        default=None,
        metadata=_opt("--tls-cert-file", "serve HTTPS with this certificate", env="CHATMODEL_TLS_CERT_FILE"),
    )
    tls_key_file: str | None = field(
        default=None, metadata=_opt("--tls-key-file", "the certificate's key", env="CHATMODEL_TLS_KEY_FILE")
    )

    # Rendered even at their defaults: a Deployment states how it generates, so a runtime image with other
    # defaults serves it the same.
    PINNED = ("port", "dtype", "default_max_tokens", "default_temperature", "drain_timeout")

    def rendered(self, name: str) -> list[str] | None:
        if name == "served_model_names":
            return []  # rendered with models
        if name == "models":
            return self._model_args()
        return None

    def _model_args(self) -> list[str]:
        args: list[str] = []
        for i, model in enumerate(self.models):
            args += ["--model", model]
            if self.served_model_names:
                args += ["--served-model-name", self.served_model_names[i]]
        return args


VLLM_PORT = 8001  # vLLM's own port in a shared-adapter pod; the sidecar answers on the Service's port


@dataclass
class VllmSidecarOptions(CommandLine):
    """Everything `chatmodel vllm-sidecar` takes: the container beside vLLM in a serving.lora.shared pod that
    keeps vLLM's LoRA adapters equal to the adapter table and answers for the table's aliases."""

    adapters_file: str = field(
        default="",
        metadata=_opt("--adapters-file", "the adapter table (as `chatmodel serve --adapters-file` reads it)"),
    )
    vllm_url: str = field(
        default=f"http://127.0.0.1:{VLLM_PORT}",
        metadata=_opt("--vllm-url", "the vLLM server in this pod (its API key: env VLLM_API_KEY)"),
    )
    host: str = field(default="127.0.0.1", metadata=_opt("--host", "address to listen on"))
    port: int = field(default=8000, metadata=_opt("--port", "port to listen on"))
    drain_timeout: float = field(
        default=30.0, metadata=_opt("--drain-timeout", "seconds open responses may take to finish on SIGTERM")
    )
    tls_cert_file: str | None = field(
        default=None, metadata=_opt("--tls-cert-file", "serve HTTPS with this certificate")
    )
    tls_key_file: str | None = field(default=None, metadata=_opt("--tls-key-file", "the certificate's key"))

    PINNED = ("adapters_file", "port")


@dataclass
class GatewayOptions(CommandLine):
    """Everything `chatmodel gateway` takes: the OpenAI-compatible proxy in front of one namespace's
    ChatModels (routing by version weight and prompt prefix, global quotas, scale from zero)."""

    namespace: str = field(
        default="default",
        metadata=_opt("--namespace", "the namespace whose ChatModels it serves", env="POD_NAMESPACE"),
    )
    kube_api: str | None = field(
        default=None, metadata=_opt("--kube-api", "API server URL (default: the pod's service account)")
    )
    kube_token_file: str | None = field(
        default=None, metadata=_opt("--kube-token-file", "bearer token file for --kube-api")
    )
    kube_ca_file: str | None = field(default=None, metadata=_opt("--kube-ca-file", "CA of --kube-api"))
    host: str = field(default="127.0.0.1", metadata=_opt("--host", "address to listen on"))
    port: int = field(default=8000, metadata=_opt("--port", "port to listen on"))
    api_keys_file: str | None = field(
        default=None,
        metadata=_opt(
            "--api-keys-file", "the serving pods' key file (KEY [rpm=N] [tpm=N] per line); checked here first"
        ),
    )
    requests_per_minute: int = field(
        default=0,
        metadata=_opt("--requests-per-minute", "default per-key request limit, all replicas (0: none)"),
    )
    tokens_per_minute: int = field(
        default=0, metadata=_opt("--tokens-per-minute", "default per-key token limit, all replicas (0: none)")
    )
    quota_store: str = field(
        default="memory://",
        metadata=_opt(
            "--quota-store",
            "where the quota windows live: redis://[:PASSWORD@]HOST:PORT shares them between replicas",
            env="CHATMODEL_QUOTA_STORE",
        ),
    )
    quota_store_down: str = field(
        default="open",
        metadata=_opt(
            "--quota-store-down",
            "with the store unreachable: open = each replica counts alone, closed = 429 + Retry-After",
            choices=("open", "closed"),
        ),
    )
    prefix_chars: int = field(
        default=256,
        metadata=_opt(
            "--prefix-chars", "characters of the prompt's start hashed for affinity (0: least load)"
        ),
    )
    cold_start_timeout: float = field(
        default=300.0,
        metadata=_opt("--cold-start-timeout", "seconds a request waits for a version scaled to zero"),
    )
    max_held: int = field(
        default=256, metadata=_opt("--max-held", "requests held for cold starts at once; more get a 503")
    )
    upstream_scheme: str = field(
        default="http",
        metadata=_opt("--upstream-scheme", "how the serving pods answer", choices=("http", "https")),
    )
    upstream_ca_file: str | None = field(
        default=None, metadata=_opt("--upstream-ca-file", "CA of the serving pods' certificates")
    )
    drain_timeout: float = field(
        default=30.0, metadata=_opt("--drain-timeout", "seconds open responses may take to finish on SIGTERM")
    )
    tls_cert_file: str | None = field(
        default=None, metadata=_opt("--tls-cert-file", "serve HTTPS with this certificate")
    )
    tls_key_file: str | None = field(default=None, metadata=_opt("--tls-key-file", "the certificate's key"))

    PINNED = ("namespace", "port")
