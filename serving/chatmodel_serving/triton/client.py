"""The OpenAI front for a Triton server: `chatmodel serve --backend triton://HOST:GRPC_PORT[/MODEL]`.

TritonBackend implements engine.types.EngineClient, as the in-process Engine does, so the API serves it
unchanged. Each request is one gRPC bidirectional stream (tritonclient.grpc.aio) on one shared
channel, run as a task in the API's event loop: the model is decoupled, so text deltas arrive as separate
responses, and cancelling the task cancels the stream, which Triton passes on to the engine.

The front tokenizes (chat template included) and sends `input_ids`, so Triton runs exactly the prompt the
PyTorch runtime would, and greedy answers match token for token. It loads the tokenizer and the config only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from ..engine.grammar import Grammars
from ..engine.types import (
    AdapterError,
    EngineClient,
    EngineStats,
    EngineStoppedError,
    Event,
    QueueFullError,
    SamplingParams,
    Sink,
    UnknownAdapterError,
)
from ..models import DEFAULT_SOURCE, LoadedModel, default_model_name, resolve_source
from . import contract

log = logging.getLogger("chatmodel.triton")


def load_front(source: str) -> LoadedModel:
    """What the API needs of a model without its weights: tokenizer, config (context, vocabulary)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_source(source)
    config_folder = folder
    adapter = folder / "adapter_config.json"
    if adapter.is_file():  # a LoRA adapter: the architecture is its base model's
        base = json.loads(adapter.read_text()).get("base_model_name_or_path") or DEFAULT_SOURCE
        config_folder = resolve_source(base)
    tok_folder = folder if (folder / "tokenizer_config.json").is_file() else config_folder
    model = SimpleNamespace(config=AutoConfig.from_pretrained(config_folder))
    return LoadedModel(
        model,
        AutoTokenizer.from_pretrained(tok_folder),
        source,
        default_model_name(source),
        torch.float32,  # unknown here: the Triton side chose it
        torch.device("cpu"),
    )


def request_inputs(prompt: list[int], params: SamplingParams) -> list[grpcclient.InferInput]:
    arrays: list[tuple[contract.Tensor, np.ndarray[Any, Any]]] = [
        (contract.INPUT_IDS, np.array(prompt, dtype=np.int64)),
        (contract.MAX_TOKENS, np.array([params.max_tokens], dtype=np.int32)),
        (contract.TEMPERATURE, np.array([params.temperature], dtype=np.float32)),
        (contract.TOP_P, np.array([params.top_p], dtype=np.float32)),
        (contract.STREAM, np.array([True])),
        (contract.IGNORE_EOS, np.array([params.ignore_eos])),
        (contract.BEAM_WIDTH, np.array([params.beams], dtype=np.int32)),
    ]
    if params.stop:
        arrays.append((contract.STOP, np.array([s.encode() for s in params.stop], dtype=np.object_)))
    if params.seed is not None:
        arrays.append((contract.SEED, np.array([params.seed], dtype=np.int64)))
    if sampling := contract.sampling_json(params):
        arrays.append((contract.SAMPLING, np.array([sampling.encode()], dtype=np.object_)))
    return infer_inputs(grpcclient, arrays)


def infer_inputs(module: Any, arrays: list[tuple[contract.Tensor, np.ndarray[Any, Any]]]) -> list[Any]:
    """Triton InferInputs for `module` (tritonclient.grpc or tritonclient.http) from (tensor, array) pairs."""
    inputs = []
    for tensor, array in arrays:
        i = module.InferInput(tensor.name, list(array.shape), tensor.client_type)
        i.set_data_from_numpy(array)
        inputs.append(i)
    return inputs


def event_from(result: Any) -> Event:
    def first(name: str) -> Any:
        return result.as_numpy(name).reshape(-1)[0]

    reason = first(contract.FINISH_REASON.name).decode()
    return Event(
        text=first(contract.TEXT_OUTPUT.name).decode(),
        finish_reason=reason or None,
        completion_tokens=int(first(contract.COMPLETION_TOKENS.name)),
        logprobs=contract.logprobs_from(first(contract.LOGPROBS.name).decode()),
    )


@dataclass
class _Flight:
    prompt_tokens: int
    task: asyncio.Task[None] | None = None
    started: bool = False  # a first response arrived: the engine is running it
    tokens: int = 0


class TritonBackend(EngineClient):
    def __init__(
        self,
        grpc_url: str,
        model: str,
        max_in_flight: int = 96,
        kv_capacity: int = 131072,
        grammars: Grammars | None = None,
    ):
        self.grpc_url, self.model, self.max_in_flight = grpc_url, model, max_in_flight
        self.grammars = grammars  # checks guides before they are sent (None: Triton's engine alone does)
        self.kv_capacity = kv_capacity  # the engine's budget behind Triton (same flag on both sides)
        self._client: aioclient.InferenceServerClient | None = None  # made in the serving loop
        self._flights: dict[int, _Flight] = {}
        self._ids = itertools.count(1)
        self._accepting = True

    @classmethod
    def from_url(
        cls,
        url: str,
        default_model: str,
        max_in_flight: int = 96,
        kv_capacity: int = 131072,
        grammars: Grammars | None = None,
    ) -> TritonBackend:
        """triton://HOST:GRPC_PORT[/MODEL]; MODEL defaults to the served model name."""
        u = urlparse(url)
        if u.scheme != "triton" or not u.hostname or not u.port:
            raise ValueError(f"--backend must look like triton://HOST:GRPC_PORT[/MODEL], not {url!r}")
        model = u.path.strip("/") or default_model
        return cls(f"{u.hostname}:{u.port}", model, max_in_flight, kv_capacity, grammars)

    @property
    def queue_limit(self) -> int:
        """As Engine.queue_limit."""
        return self.max_in_flight

    def start(self) -> TritonBackend:
        return self

    def prepare(self, params: SamplingParams) -> None:
        """A bad guide is the caller's 400 here, as on the PyTorch runtime, not an error mid-stream:
        compiled once per guide (cached) before it is sent, as the engine behind Triton compiles it too."""
        if params.guide is not None and self.grammars is not None:
            self.grammars.compile(params.guide)

    # Called by the API in its event loop, like Engine.submit; the sink runs in that loop too.
    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> int:
        if not prompt:
            raise ValueError("the prompt is empty")
        if not self._accepting:
            raise EngineStoppedError("the server is draining and takes no new requests")
        if len(self._flights) >= self.max_in_flight:
            raise QueueFullError(f"{len(self._flights)} requests are already in flight")
        rid = next(self._ids)
        flight = self._flights[rid] = _Flight(len(prompt))
        flight.task = asyncio.get_running_loop().create_task(self._run(rid, flight, prompt, params, sink))
        return rid

    async def _run(
        self, rid: int, flight: _Flight, prompt: list[int], params: SamplingParams, sink: Sink
    ) -> None:
        if self._client is None:
            self._client = aioclient.InferenceServerClient(self.grpc_url)
        finished = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self.model, "inputs": request_inputs(prompt, params), "request_id": str(rid)}
            await finished.wait()  # half-closing early could end the stream before the last response

        stream = self._client.stream_infer(requests())
        last = Event(finish_reason="error", error="the stream ended without a final response")
        try:
            async for result, error in stream:
                if error is not None:
                    last = Event(finish_reason="error", error=str(error))
                    break
                ev = event_from(result)
                flight.started, flight.tokens = True, ev.completion_tokens
                if ev.finish_reason:
                    last = ev
                    break
                sink(ev)
        except asyncio.CancelledError:
            last = Event(finish_reason="abort", completion_tokens=flight.tokens)
            stream.cancel()  # Triton cancels the request and the engine frees its batch slot
        except Exception as exc:  # Triton unreachable or gone: fail this request, keep serving
            log.warning("triton request failed: %s", exc)
            last = Event(finish_reason="error", error=f"triton: {exc}")
        finally:
            finished.set()
            del self._flights[rid]
        sink(last)

    def cancel(self, request_id: int) -> None:
        flight = self._flights.get(request_id)
        if flight and flight.task:
            flight.task.cancel()

    def stats(self) -> EngineStats:
        running = [f for f in self._flights.values() if f.started]
        kv = sum(f.prompt_tokens + f.tokens for f in running)
        return EngineStats(len(self._flights) - len(running), len(running), kv, self.kv_capacity)

    def load_adapter(self, name: str, path: str) -> object:
        raise AdapterError(name, "LoRA adapters are served by the PyTorch runtime only, not through Triton")

    def unload_adapter(self, name: str) -> None:
        raise UnknownAdapterError(name)

    def idle(self) -> bool:
        return not self._flights

    def stop_accepting(self) -> None:
        self._accepting = False

    def shutdown(self) -> None:
        # The serving loop has ended: the channel goes with it; requests still in flight are Triton's.
        self._client = None
