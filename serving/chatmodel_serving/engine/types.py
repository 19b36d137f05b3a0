"""The engine's plain types and its interface, without torch: the API, the metrics and the Triton client
import these, and only the Engine itself (core.py) needs torch.

EngineClient is what the HTTP API drives: the in-process Engine and the Triton client (TritonBackend)
both implement it, so `chatmodel serve` serves either unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# Temperatures below this sample as greedy (as vLLM's _SAMPLING_EPS): logits / 1e-300 are inf.
GREEDY_BELOW = 1e-5


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the client should retry later (HTTP 429)."""


class EngineStoppedError(RuntimeError):
    """The engine is draining or stopped and takes no new requests (HTTP 503)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    beams: int = 1  # > 1 = beam search (an extension, as in vLLM); deterministic, runs unbatched


@dataclass
class Event:
    """What a sink receives: text deltas, then one final event with finish_reason set."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    completion_tokens: int = 0
    error: str | None = None


Sink = Callable[[Event], None]


@dataclass
class EngineStats:
    waiting: int
    running: int
    kv_tokens: int
    kv_capacity: int

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

    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new requests (EngineStoppedError); those in flight finish."""
        ...

    def shutdown(self) -> None:
        """Stop for good (after the HTTP server has stopped)."""
        ...
