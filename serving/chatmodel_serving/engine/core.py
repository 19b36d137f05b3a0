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

This module is the loop and the batch's KV layout; its parts live beside it: scheduler.py (admission),
sequence.py (detokenisation, stop strings), grammar.py (structured outputs), sampler.py, prefix_cache.py,
beam.py and kvcache.py.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any

import torch
from transformers.cache_utils import Cache

from ..models import LoadedModel
from . import kvcache
from .beam import beam_search
from .grammar import Grammars, param_of
from .prefix_cache import LayerKV, PrefixCache
from .sampler import sample_step
from .scheduler import Budget, admit
from .sequence import Request, Sequence
from .types import (
    EngineClient,
    EngineStats,
    EngineStoppedError,
    Event,
    QueueFullError,
    SamplingParams,
    Sink,
    UnsupportedParamError,
)

log = logging.getLogger("chatmodel.engine")


class Engine(EngineClient):
    """The in-process engine: one thread owns the model (module docstring)."""

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
        self.grammars = Grammars(self.tokenizer, int(self.model.config.vocab_size))
        self._waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._rows: list[Sequence] = []
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

    def prepare(self, params: SamplingParams) -> None:
        """Compile the request's guide (cached; bounded in time), raising GuideError for a bad one."""
        self._grammar(params)

    def _grammar(self, params: SamplingParams) -> Any:
        """The compiled guide (None without one); a cache hit once prepare() ran."""
        if params.guide is None:
            return None
        if params.beams > 1:
            param = param_of(params.guide)
            raise UnsupportedParamError(param, f"{param} is not supported with use_beam_search")
        return self.grammars.compile(params.guide)

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> int:
        """Queue a request; events go to `sink` from the engine thread. Returns the request id."""
        if not prompt:
            raise ValueError("the prompt is empty")
        grammar = self._grammar(params)  # compiled before queueing: the engine thread never waits on it
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError("the server is draining and takes no new requests")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(params.seed % 2**64)  # any int64
            req = Request(next(self._ids), prompt, params, sink, generator=gen, grammar=grammar)
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

    def _admit(self) -> list[Request]:
        """Take waiting requests for one prefill group (called with the lock held)."""
        kv_used = sum(s.length for s in self._rows)
        budget = Budget(self.max_batch_size, self.max_prefill_tokens, self.max_kv_tokens)
        return admit(self._waiting, len(self._rows), kv_used, budget)

    def _fail_all(self, exc: BaseException, admitted: list[Request]) -> None:
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

    def _prefill(self, reqs: list[Request]) -> None:
        if reqs[0].params.beams > 1:
            r = reqs[0]
            pad = self.eos_token_for_padding
            beam_search(self.model, self.tokenizer, self.device, r, self.eos_ids, pad, self.context_length)
            return
        seqs = [Sequence(r, self.tokenizer, self.eos_ids) for r in reqs]
        for seq in seqs:
            if seq.req.grammar is not None:
                seq.matcher = self.grammars.matcher(seq.req.grammar, seq.stop_ids)
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
        step = sample_step(logits, seqs)
        for seq, tok, lp in zip(seqs, step.tokens, step.logprobs, strict=True):
            seq.add(tok, self.context_length, lp)
        self._retire_finished()

    @property
    def eos_token_for_padding(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def _stack_prefixes(self, cached: list[tuple[int, LayerKV | None]], past: int) -> LayerKV:
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
        reqs: list[Request],
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

    def _merge(self, seqs: list[Sequence], cache: Cache, mask: torch.Tensor) -> None:
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
                    torch.cat([kvcache.left_pad(ok, width), kvcache.left_pad(nk, width)], 0),
                    torch.cat([kvcache.left_pad(ov, width), kvcache.left_pad(nv, width)], 0),
                )
                for (ok, ov), (nk, nv) in zip(
                    kvcache.contents(self._cache), kvcache.contents(cache), strict=True
                )
            ],
        )
        self._mask = torch.cat([kvcache.left_pad(self._mask, width), kvcache.left_pad(mask, width)], 0)
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
        step = sample_step(out.logits[:, -1], rows)
        for seq, tok, lp in zip(rows, step.tokens, step.logprobs, strict=True):
            seq.length += 1
            seq.add(tok, self.context_length, lp)
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
