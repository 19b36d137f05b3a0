"""The Triton python-backend model (loaded through the generated model.py shim, inside the backend stub).

It decodes the tensors of contract.py, submits each request to the same Engine `chatmodel serve` uses and,
decoupled, sends the request's text deltas back through its response sender from the engine thread: one
response per delta when `stream` is true, one response otherwise; the last one carries the final flag.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import triton_python_backend_utils as pb_utils

from ..engine.core import Engine
from ..engine.types import (
    EngineStats,
    EngineStoppedError,
    Event,
    QueueFullError,
    SamplingParams,
    TokenLogprob,
)
from ..models import load_model
from . import contract

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class LoadGauges:
    """The PyTorch runtime's load signals as Triton custom metrics (same names, same `model` label), so
    autoscaling rules read either runtime. Refreshed by a thread: Triton scrapes no callback."""

    GAUGES: ClassVar[dict[str, tuple[str, Callable[[EngineStats], float]]]] = {
        "chatmodel_num_requests_waiting": ("Requests queued, not yet running.", lambda s: s.waiting),
        "chatmodel_num_requests_running": ("Requests in the running batch.", lambda s: s.running),
        "chatmodel_kv_cache_usage_perc": ("KV-cache tokens in use over capacity.", lambda s: s.kv_usage),
    }

    def __init__(self, engine: Engine, model: str, interval: float = 0.25):
        self.engine, self.interval = engine, interval
        self.families = [
            pb_utils.MetricFamily(name=n, description=d, kind=pb_utils.MetricFamily.GAUGE)
            for n, (d, _) in self.GAUGES.items()
        ]
        self.metrics = [f.Metric(labels={"model": model}) for f in self.families]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatmodel-gauges", daemon=True)
        self._thread.start()

    def update(self, stats: EngineStats) -> None:
        for metric, (_, value) in zip(self.metrics, self.GAUGES.values(), strict=True):
            metric.set(float(value(stats)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.update(self.engine.stats())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _scalar(request: Any, tensor: contract.Tensor, default: Any) -> Any:
    t = pb_utils.get_input_tensor_by_name(request, tensor.name)
    if t is None:
        return default
    value = t.as_numpy().reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value.item()


def _strings(request: Any, tensor: contract.Tensor) -> tuple[str, ...]:
    t = pb_utils.get_input_tensor_by_name(request, tensor.name)
    if t is None:
        return ()
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in t.as_numpy().reshape(-1))


def _string(tensor: contract.Tensor, text: str) -> Any:
    return pb_utils.Tensor(tensor.name, np.array([text.encode()], dtype=np.object_))


def _response(
    text: str,
    finish_reason: str | None = None,
    completion_tokens: int = 0,
    logprobs: list[TokenLogprob] | None = None,
) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            _string(contract.TEXT_OUTPUT, text),
            _string(contract.FINISH_REASON, finish_reason or ""),
            pb_utils.Tensor(contract.COMPLETION_TOKENS.name, np.array([completion_tokens], dtype=np.int32)),
            _string(contract.LOGPROBS, contract.logprobs_json(logprobs)),
        ]
    )


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.loaded = load_model(
            p["model_source"], dtype=p.get("dtype", "auto"), device=p.get("device", "auto")
        )
        self.engine = Engine(
            self.loaded,
            max_batch_size=int(p.get("max_batch_size", 32)),
            max_waiting_requests=int(p.get("max_waiting_requests", 64)),
            max_kv_tokens=int(p.get("max_kv_tokens", 131072)),
        ).start()
        self.gauges = LoadGauges(self.engine, p.get("served_model_name") or config["name"])

    def _prompt(self, request: Any) -> list[int]:
        ids = pb_utils.get_input_tensor_by_name(request, contract.INPUT_IDS.name)
        if ids is not None:
            return [int(t) for t in ids.as_numpy().reshape(-1)]
        text = _scalar(request, contract.TEXT_INPUT, None)
        if text is None:
            raise ValueError(f"send {contract.TEXT_INPUT.name} or {contract.INPUT_IDS.name}")
        tokenizer = self.loaded.tokenizer
        return list(tokenizer.encode(text, add_special_tokens=False) or [tokenizer.eos_token_id])

    def _params(self, request: Any, prompt_len: int) -> SamplingParams:
        room = self.loaded.context_length - prompt_len
        max_tokens = int(_scalar(request, contract.MAX_TOKENS, min(contract.DEFAULT_MAX_TOKENS, room)))
        if room <= 0 or not 0 < max_tokens <= room:
            raise ValueError(f"prompt of {prompt_len} tokens + max_tokens {max_tokens} exceed the context")
        seed = _scalar(request, contract.SEED, None)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=float(_scalar(request, contract.TEMPERATURE, 1.0)),
            top_p=float(_scalar(request, contract.TOP_P, 1.0)),
            seed=None if seed is None else int(seed),
            stop=_strings(request, contract.STOP),
            ignore_eos=bool(_scalar(request, contract.IGNORE_EOS, False)),
            beams=int(_scalar(request, contract.BEAM_WIDTH, 1)),
        )
        return contract.with_sampling(params, _scalar(request, contract.SAMPLING, ""))

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = self._prompt(request)
                params = self._params(request, len(prompt))
                stream = bool(_scalar(request, contract.STREAM, False))
                self._submit(prompt, params, stream, sender)
            except (ValueError, QueueFullError, EngineStoppedError) as exc:
                sender.send(_error(f"{exc.__class__.__name__}: {exc}"), flags=FINAL)
        return None  # decoupled: every response goes through the senders

    def _submit(self, prompt: list[int], params: SamplingParams, stream: bool, sender: Any) -> None:
        parts: list[str] = []
        logprobs: list[TokenLogprob] | None = None if params.logprobs is None else []
        rid: list[int] = []

        def sink(ev: Event) -> None:  # the engine thread
            if ev.finish_reason == "error":
                sender.send(_error(f"generation failed: {ev.error}"), flags=FINAL)
                return
            if ev.finish_reason is None and rid and sender.is_cancelled():
                self.engine.cancel(rid[0])  # the client went away; the engine answers with "abort"
            if stream:
                if ev.finish_reason is None and (ev.text or ev.logprobs):
                    sender.send(_response(ev.text, None, ev.completion_tokens, ev.logprobs))
                elif ev.finish_reason:
                    sender.send(
                        _response(ev.text, ev.finish_reason, ev.completion_tokens, ev.logprobs), flags=FINAL
                    )
                return
            parts.append(ev.text)
            if logprobs is not None:
                logprobs.extend(ev.logprobs or [])
            if ev.finish_reason:
                text = "".join(parts)
                sender.send(_response(text, ev.finish_reason, ev.completion_tokens, logprobs), flags=FINAL)

        rid.append(self.engine.submit(prompt, params, sink))

    def finalize(self) -> None:
        self.gauges.close()
        self.engine.stop_accepting()
        self.engine.shutdown()
