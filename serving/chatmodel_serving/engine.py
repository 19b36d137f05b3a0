"""The generation engine: continuous batching on any Hugging Face causal LM, shared by the HTTP server
and the Triton backend.

One thread owns the model. Each iteration it admits waiting requests (prefilling them together as one
group, reusing cached prompt prefixes), then runs one decode step for every running sequence, samples
each with its own settings, and hands text deltas to the request's sink. Sequences join and leave the
batch between steps, so a long answer never holds a short one back.

Batch layout: one KV cache of shape [rows, heads, columns, head_dim] per layer plus a [rows, columns]
attention mask. A row's tokens need not be contiguous: masked columns (padding from merging groups of
different lengths) are skipped by attention, and position ids are given explicitly per row. New decode
tokens always go in a fresh column at the right, so no query ever sees only masked keys.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache

from . import kvcache
from .models import LoadedModel

log = logging.getLogger("chatmodel.engine")


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the client should retry later (HTTP 429)."""


class EngineStoppedError(RuntimeError):
    """The engine is draining or stopped and takes no new requests (HTTP 503)."""


# Temperatures below this sample as greedy (as vLLM's _SAMPLING_EPS): logits / 1e-300 are inf.
GREEDY_BELOW = 1e-5


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


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    submitted: float
    generator: torch.Generator | None = None
    cancelled: bool = False


class _Sequence:
    """A running request: its tokens, detokenisation state and stop checks."""

    def __init__(self, req: _Request, tokenizer: Any, eos_ids: set[int]):
        self.req = req
        self.tokenizer = tokenizer
        self.eos_ids = set() if req.params.ignore_eos else eos_ids
        self.length = len(req.prompt)  # tokens whose KV is in the cache once the last sampled one is fed
        self.generated: list[int] = []
        self.sent = 0  # characters of text already handed out
        self.hold = max((len(s) for s in req.params.stop), default=1) - 1
        self.finish_reason: str | None = None

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def add(self, token: int, context_length: int) -> None:
        """Record a sampled token and emit the new text; sets finish_reason when the sequence ends."""
        params = self.req.params
        if token in self.eos_ids:
            self.finish_reason = "stop"
        else:
            self.generated.append(token)
        text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        if params.stop:
            cut = min(
                (i for s in params.stop if (i := text.find(s, max(0, self.sent - len(s)))) >= 0), default=-1
            )
            if cut >= 0:
                text, self.finish_reason = text[:cut], "stop"
        if self.finish_reason is None and (
            len(self.generated) >= params.max_tokens or self.length + 1 >= context_length
        ):
            self.finish_reason = "length"
        end = len(text)
        if self.finish_reason is None:
            end = max(self.sent, end - self.hold)  # a stop string may still be forming
            while end > self.sent and text[end - 1] == "\ufffd":  # an incomplete UTF-8 character
                end -= 1
        delta, self.sent = text[self.sent : end], max(self.sent, end)
        if delta or self.finish_reason:
            self.req.sink(
                Event(
                    text=delta,
                    token_ids=[token] if token not in self.eos_ids else [],
                    finish_reason=self.finish_reason,
                    completion_tokens=len(self.generated),
                )
            )


class PrefixCache:
    """Keeps the KV of recent prompts so a new prompt that shares a prefix (a system prompt, the chat
    template's header, an earlier turn) prefills only what differs. Bounded by total tokens, LRU."""

    def __init__(self, max_tokens: int = 16384, min_tokens: int = 8):
        self.entries: collections.OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = (
            collections.OrderedDict()
        )
        self.max_tokens, self.min_tokens, self.tokens = max_tokens, min_tokens, 0
        self.hits = 0

    def lookup(self, prompt: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The longest cached prefix of `prompt`, leaving at least one token to compute."""
        best, best_key = 0, None
        for key in self.entries:
            n = 0
            for a, b in zip(key, prompt, strict=False):
                if a != b:
                    break
                n += 1
            n = min(n, len(prompt) - 1)
            if n > best:
                best, best_key = n, key
        if best_key is None or best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self.entries[best_key]]

    def store(self, prompt: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        key = tuple(prompt)
        if len(key) < self.min_tokens or key in self.entries:
            return
        self.entries[key] = kv
        self.tokens += len(key)
        while self.tokens > self.max_tokens and self.entries:
            old, _ = self.entries.popitem(last=False)
            self.tokens -= len(old)


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_size: int = 32,
        max_waiting_requests: int = 64,
        max_prefill_tokens: int = 1024,
        max_kv_tokens: int = 131072,
        prefix_cache_tokens: int = 16384,
    ):
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.device = loaded.device
        self.context_length = loaded.context_length
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.max_kv_tokens = max_kv_tokens
        self.eos_ids = self._eos_ids()
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self._waiting: collections.deque[_Request] = collections.deque()
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._rows: list[_Sequence] = []
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None
        self._accepting = True
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="chatmodel-engine", daemon=True)

    # ---- public API (any thread) ----

    def start(self) -> Engine:
        self._thread.start()
        return self

    @property
    def queue_limit(self) -> int:
        """The most sequences one request can ever have queued."""
        return self.max_waiting

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> int:
        """Queue a request; events go to `sink` from the engine thread. Returns the request id."""
        if not prompt:
            raise ValueError("the prompt is empty")
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError("the server is draining and takes no new requests")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(params.seed % 2**64)  # any int64
            req = _Request(next(self._ids), prompt, params, sink, time.monotonic(), gen)
            self._waiting.append(req)
            self._lock.notify()
        return req.id

    def cancel(self, request_id: int) -> None:
        """Stop generating for a request (its client went away); it ends with finish_reason 'abort'."""
        with self._lock:
            for req in self._waiting:
                if req.id == request_id:
                    req.cancelled = True
            for seq in self._rows:
                if seq.req.id == request_id:
                    seq.req.cancelled = True

    def stats(self) -> EngineStats:
        with self._lock:
            kv = sum(s.length for s in self._rows)
            return EngineStats(len(self._waiting), len(self._rows), kv, self.max_kv_tokens)

    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._rows

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def shutdown(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # ---- the engine thread ----

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config, self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._stop and not self._waiting and not self._rows:
                    self._lock.wait()
                if self._stop:
                    break
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    if admitted:
                        self._prefill(admitted)
                    if self._rows:
                        self._decode_step()
            except Exception as exc:  # a bug or OOM: fail the affected requests, keep serving
                log.exception("engine step failed")
                self._fail_all(exc, admitted)
        self._fail_all(EngineStoppedError("engine stopped"), [])

    def _admit(self) -> list[_Request]:
        """Take waiting requests for one prefill group (called with the lock held)."""
        free = self.max_batch_size - len(self._rows)
        kv_used = sum(s.length for s in self._rows)
        batch: list[_Request] = []
        tokens = 0
        while self._waiting and len(batch) < free:
            req = self._waiting[0]
            if req.cancelled:
                self._waiting.popleft()
                req.sink(Event(finish_reason="abort"))
                continue
            n = len(req.prompt)
            if batch and (tokens + n > self.max_prefill_tokens or kv_used + tokens + n > self.max_kv_tokens):
                break
            if req.params.beams > 1 and (batch or self._rows):
                break  # beam search runs alone
            batch.append(self._waiting.popleft())
            tokens += n
            if req.params.beams > 1:
                break
        return batch

    def _fail_all(self, exc: BaseException, admitted: list[_Request]) -> None:
        failed = [s.req for s in self._rows] + admitted
        with self._lock:
            if self._stop:
                failed += list(self._waiting)
                self._waiting.clear()
        self._rows, self._cache, self._mask = [], None, None
        for req in {id(r): r for r in failed}.values():
            req.sink(Event(finish_reason="error", error=str(exc) or exc.__class__.__name__))

    def _drop_cancelled(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.req.cancelled]
        if len(keep) == len(self._rows):
            return
        for s in self._rows:
            if s.req.cancelled:
                s.req.sink(Event(finish_reason="abort", completion_tokens=len(s.generated)))
        self._keep_rows(keep)

    def _sample(self, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        """One token per row: greedy rows in one argmax, sampled rows with their own generator."""
        tokens = logits.argmax(-1).tolist()
        for i, seq in enumerate(seqs):
            p = seq.req.params
            if p.temperature < GREEDY_BELOW:  # dividing by ~0 overflows the softmax: that is greedy
                continue
            probs = torch.softmax(logits[i].float() / p.temperature, -1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p
                keep[0] = True  # the top token, always: a denormal top_p is 0 in float32
                probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
            tokens[i] = int(torch.multinomial(probs, 1, generator=seq.req.generator).item())
        return tokens

    def _prefill(self, reqs: list[_Request]) -> None:
        if reqs[0].params.beams > 1:
            self._beam_search(reqs[0])
            return
        seqs = [_Sequence(r, self.tokenizer, self.eos_ids) for r in reqs]
        cached = [self.prefix_cache.lookup(r.prompt) if self.prefix_cache else (0, None) for r in reqs]
        past = max(n for n, _ in cached)
        width = max(len(r.prompt) - n for r, (n, _) in zip(reqs, cached, strict=True))
        g, dev = len(reqs), self.device
        ids = torch.full((g, width), self.eos_token_for_padding, dtype=torch.long)
        mask = torch.zeros((g, past + width), dtype=torch.long)
        pos = torch.zeros((g, width), dtype=torch.long)
        last = []
        for i, (r, (n, _)) in enumerate(zip(reqs, cached, strict=True)):
            suffix = r.prompt[n:]
            ids[i, : len(suffix)] = torch.tensor(suffix)
            mask[i, past - n : past + len(suffix)] = 1  # prefix right-aligned before the new columns
            pos[i] = torch.arange(n, n + width)
            last.append(len(suffix) - 1)
        cache = kvcache.new_cache(self._stack_prefixes(cached, past) if past else None)
        keep = torch.tensor(sorted(set(last)))
        out = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=pos.to(dev),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep.to(dev),
        )
        col = {c: j for j, c in enumerate(keep.tolist())}
        logits = out.logits[torch.arange(g), torch.tensor([col[c] for c in last])]
        if self.prefix_cache:
            self._remember_prompts(reqs, cached, cache, past)
        self._merge(seqs, cache, mask)
        for seq, tok in zip(seqs, self._sample(logits, seqs), strict=True):
            seq.add(tok, self.context_length)
        self._retire_finished()

    @property
    def eos_token_for_padding(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def _stack_prefixes(
        self, cached: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]], past: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the rows' cached prefixes right-aligned in `past` columns (zeros where masked)."""
        template = next(kv for _, kv in cached if kv is not None)
        layers = []
        for layer, (k0, v0) in enumerate(template):
            shape = (len(cached), k0.shape[1], past, k0.shape[3])
            k, v = k0.new_zeros(shape), v0.new_zeros(shape)
            for i, (n, kv) in enumerate(cached):
                if kv is not None and n:
                    k[i, :, past - n :] = kv[layer][0][0]
                    v[i, :, past - n :] = kv[layer][1][0]
            layers.append((k, v))
        return layers

    def _remember_prompts(
        self,
        reqs: list[_Request],
        cached: list[tuple[int, Any]],
        cache: Cache,
        past: int,
    ) -> None:
        assert self.prefix_cache is not None
        for i, (r, (n, _)) in enumerate(zip(reqs, cached, strict=True)):
            if n == len(r.prompt) - 1:
                continue  # nothing new to remember
            lo, hi = past - n, past + len(r.prompt) - n
            kv = [
                (k[i : i + 1, :, lo:hi].clone(), v[i : i + 1, :, lo:hi].clone())
                for k, v in kvcache.contents(cache)
            ]
            self.prefix_cache.store(r.prompt, kv)

    def _merge(self, seqs: list[_Sequence], cache: Cache, mask: torch.Tensor) -> None:
        """Add a prefilled group to the running batch, left-padding whichever is shorter."""
        mask = mask.to(self.device)
        if self._cache is None or self._mask is None or not self._rows:
            self._rows, self._cache, self._mask = seqs, cache, mask
            return
        a, b = self._mask.shape[1], mask.shape[1]
        width = max(a, b)
        kvcache.assign(
            self._cache,
            [
                (
                    torch.cat([_left_pad(ok, width), _left_pad(nk, width)], 0),
                    torch.cat([_left_pad(ov, width), _left_pad(nv, width)], 0),
                )
                for (ok, ov), (nk, nv) in zip(
                    kvcache.contents(self._cache), kvcache.contents(cache), strict=True
                )
            ],
        )
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)], 0)
        self._rows = self._rows + seqs

    def _decode_step(self) -> None:
        assert self._cache is not None and self._mask is not None
        rows = self._rows
        dev = self.device
        ids = torch.tensor([[s.last_token] for s in rows], device=dev)
        pos = torch.tensor([[s.length] for s in rows], device=dev)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], 1)
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=pos,
            past_key_values=self._cache,
            use_cache=True,
        )
        tokens = self._sample(out.logits[:, -1], rows)
        for seq, tok in zip(rows, tokens, strict=True):
            seq.length += 1
            seq.add(tok, self.context_length)
        self._retire_finished()

    def _retire_finished(self) -> None:
        keep = [i for i, s in enumerate(self._rows) if s.finish_reason is None]
        if len(keep) < len(self._rows):
            self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        with self._lock:  # stats() reads the rows
            if not keep:
                self._rows, self._cache, self._mask = [], None, None
                return
            assert self._cache is not None and self._mask is not None
            index = torch.tensor(keep, device=self.device)
            mask = self._mask.index_select(0, index)
            # Drop leading columns that no remaining row uses.
            first = int(mask.any(0).int().argmax().item())
            self._mask = mask[:, first:]
            kvcache.assign(
                self._cache,
                [
                    (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
                    for k, v in kvcache.contents(self._cache)
                ],
            )
            self._rows = [self._rows[i] for i in keep]

    def _beam_search(self, req: _Request) -> None:
        p = req.params
        ids = torch.tensor([req.prompt], device=self.device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=p.beams,
            num_return_sequences=1,
            do_sample=False,
            max_new_tokens=min(p.max_tokens, self.context_length - len(req.prompt)),
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.eos_token_for_padding,
        )
        seq = _Sequence(req, self.tokenizer, self.eos_ids)
        for tok in out[0, len(req.prompt) :].tolist():
            seq.add(tok, self.context_length)
            if seq.finish_reason:
                break
        if not seq.finish_reason:
            seq.finish_reason = "length"
            req.sink(Event(finish_reason="length", completion_tokens=len(seq.generated)))


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 of a KV tensor (or dim 1 of a mask) on the left with zeros up to `width`."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)
