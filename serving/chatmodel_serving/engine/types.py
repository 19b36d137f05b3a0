"""The engine's plain types and its interface, without torch: the API, the metrics and the Triton client
import these, and only the Engine itself (core.py) needs torch.

EngineClient is what the HTTP API drives: the in-process Engine and the Triton client (TritonBackend)
both implement it, so `chatmodel serve` serves either unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

# Temperatures below this sample as greedy (as vLLM's _SAMPLING_EPS): logits / 1e-300 are inf.
GREEDY_BELOW = 1e-5


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the client should retry later (HTTP 429)."""


class PromptTooLongError(ValueError):
    """The prompt needs more KV cache than the server holds in all (HTTP 413): it could never run."""


class EngineStoppedError(RuntimeError):
    """The engine is draining or stopped and takes no new requests (HTTP 503)."""


class AdapterError(ValueError):
    """A LoRA adapter that cannot be served here; the message names it and says why (HTTP 400)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"LoRA adapter {name!r}: {reason}")
        self.name = name


class UnknownAdapterError(LookupError):
    """No LoRA adapter of that name is loaded (HTTP 404)."""


GuideKind = Literal["json", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class Guide:
    """A constraint on the answer's text (structured outputs), as vLLM's `structured_outputs` names them:
    `json` = a JSON schema (JSON text), `json_object` = any JSON object (spec ""), `regex` = a regular
    expression, `choice` = one of a JSON list of strings, `grammar` = an EBNF grammar. Hashable: the
    engine compiles each (kind, spec) once. `param` names the request field it came from, for errors
    (`response_format.json_schema.schema`; empty = `structured_outputs.<kind>`); not part of the key."""

    kind: GuideKind
    spec: str = ""
    param: str = field(default="", compare=False)


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    beams: int = 1  # > 1 = beam search (an extension, as in vLLM); deterministic, runs unbatched
    # OpenAI's penalties (on the generated tokens) and logit_bias (token id -> added to its logit).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    # vLLM's extensions, as vLLM defines them: repetition_penalty on prompt and generated tokens (1 = off),
    # top_k (0 = off), min_p (0 = off), min_tokens (EOS and stop_token_ids masked until then) and
    # stop_token_ids (end the answer like EOS, and are not part of it).
    repetition_penalty: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None = none; k = the sampled token's logprob and the k most likely
    guide: Guide | None = None  # structured outputs: the answer must match it (engine/grammar.py)
    adapter: str | None = None  # the loaded LoRA adapter to answer with (engine/lora.py); None: the base

    def controls(self) -> list[str]:
        """The request fields (API names) of the settings above that are not at their defaults."""
        chosen = {
            "presence_penalty": self.presence_penalty != 0.0,
            "frequency_penalty": self.frequency_penalty != 0.0,
            "logit_bias": bool(self.logit_bias),
            "repetition_penalty": self.repetition_penalty != 1.0,
            "top_k": self.top_k > 0,
            "min_p": self.min_p > 0.0,
            "min_tokens": self.min_tokens > 0,
            "stop_token_ids": bool(self.stop_token_ids),
            "logprobs": self.logprobs is not None,
        }
        names = [name for name, on in chosen.items() if on]
        if self.guide is not None:  # named by its top-level field: response_format or structured_outputs
            names.append((self.guide.param or "structured_outputs").split(".")[0])
        return names


@dataclass
class TokenLogprob:
    """One generated token's log-probability and the `top` most likely (token id, logprob) there, best
    first. From the model's raw distribution, before penalties, bias and temperature (vLLM's default,
    `logprobs_mode=raw_logprobs`)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class UnsupportedParamError(ValueError):
    """A backend cannot honour a sampling field (HTTP 400 naming `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Event:
    """What a sink receives: text deltas, then one final event with finish_reason set."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    completion_tokens: int = 0
    error: str | None = None
    # With SamplingParams.logprobs: those of the tokens generated since the last event (end tokens excluded).
    logprobs: list[TokenLogprob] | None = None


Sink = Callable[[Event], None]


@dataclass
class EngineStats:
    waiting: int
    running: int
    kv_tokens: int
    kv_capacity: int
    lora_loaded: int = 0  # LoRA adapters servable (engine/lora.py)
    lora_resident: int = 0  # of those, in a slot on the device now
    lora_slots: int = 0  # --max-loras

    @property
    def kv_usage(self) -> float:
        return self.kv_tokens / self.kv_capacity if self.kv_capacity else 0.0


class EngineClient(Protocol):
    """What serves generation requests for one model. Implemented explicitly by engine.core.Engine (in
    process, its own thread) and triton.client.TritonBackend (forwarding to a Triton server).

    `submit` is called from the API's event loop; a sink may be called from another thread (the Engine's),
    so the API hands events back to its loop with call_soon_threadsafe."""

    @property
    def queue_limit(self) -> int:
        """The most sequences one request can ever have queued (more is a 400, not a 429)."""
        ...

    def start(self) -> EngineClient:
        """Start serving (a no-op where there is nothing to start); returns self."""
        ...

    def prepare(self, params: SamplingParams) -> None:
        """The blocking work a request needs before `submit` (compiling its guide), run by the API off
        its event loop; raises UnsupportedParamError (a 400) for what cannot be served."""
        ...

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> int:
        """Queue a request; its events go to `sink`. Returns the request id. Raises ValueError for an
        empty prompt, QueueFullError when full, EngineStoppedError when draining."""
        ...

    def cancel(self, request_id: int) -> None:
        """Stop generating for a request (its client went away); it ends with finish_reason 'abort'."""
        ...

    def stats(self) -> EngineStats:
        """Queue and KV-cache figures, read at scrape time."""
        ...

    def load_adapter(self, name: str, path: str) -> object:
        """Read a PEFT LoRA adapter folder and answer requests whose params.adapter is `name` with it
        (blocking file I/O); AdapterError says why not."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Stop serving an adapter (UnknownAdapterError if none of that name); running requests finish."""
        ...

    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new requests (EngineStoppedError); those in flight finish."""
        ...

    def shutdown(self) -> None:
        """Stop for good (after the HTTP server has stopped)."""
        ...
