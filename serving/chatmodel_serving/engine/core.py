"""The generation engine: continuous batching on a Hugging Face causal LM, shared by the HTTP server
and the Triton backend.

One thread owns the model. Each step is one forward pass over a packed sequence of tokens (no padding):
the decode token of every running row, then chunks of the prompts being prefilled, up to
`max_prefill_tokens` prompt tokens a step, so a long prompt never stalls the running answers for long
(chunked prefill). Waiting requests join between steps while a row is free and the KV pool can hold them;
rows that finish leave. Each row samples with its own settings and hands text deltas to its request's sink.
A row may answer with a LoRA adapter (lora.py): each adapter's tokens are grouped (prefill chunks ordered by
adapter) and its delta is applied to them in the same forward pass as the base model's rows.

KV layout: a pool (kvcache.py) where each running row owns a slot and its position p sits in column p, so
joining and leaving copy nobody else's cache; attention.py writes and reads it inside the model's
attention layers. The pool's memory (slots x columns) stays within `max_kv_tokens`: admission waits for
room, and when the rows' growth would pass it, the newest row is preempted (its cache dropped; it resumes
later by recomputing its tokens, as vLLM does) instead of running out of memory.

This module is the loop and the step's plan; its parts live beside it: scheduler.py (admission),
sequence.py (detokenisation, stop strings), grammar.py (structured outputs), sampler.py, prefix_cache.py,
beam.py, attention.py, kvcache.py and lora.py.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Any

import torch

from ..models import LoadedModel
from . import attention, linears, lora, prefix_cache
from .beam import beam_search
from .grammar import Grammars, param_of
from .kvcache import COLUMN_STEP, SLOT_STEP, KVPool, round_up
from .prefix_cache import PrefixCache
from .sampler import sample_step
from .scheduler import Budget, admit
from .sequence import Request, Sequence
from .types import (
    EngineClient,
    EngineStats,
    EngineStoppedError,
    Event,
    PromptTooLongError,
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
        prefix_cache_tokens: int = prefix_cache.DEFAULT_TOKENS,
        max_loras: int = 0,
        max_lora_rank: int = 64,
    ):
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.model.set_attn_implementation(attention.NAME)
        linears.pack(self.model)
        self.device = loaded.device
        self.context_length = loaded.context_length
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.max_kv_tokens = max_kv_tokens
        self.eos_ids = self._eos_ids()
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self.grammars = Grammars(self.tokenizer, int(self.model.config.vocab_size))
        self.pool = _pool_for(self.model, self.device)
        self.adapters = lora.Adapters(self.model, max_loras, max_lora_rank)
        self._waiting: collections.deque[Request] = collections.deque()
        self._preempted: collections.deque[Sequence] = collections.deque()  # resume before new requests
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._rows: list[Sequence] = []  # row i owns pool slot i
        self._kv_used = 0  # positions the running rows hold in the pool (stats() reads it)
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

    def load_adapter(self, name: str, path: str) -> lora.Adapter:
        """Read a PEFT LoRA adapter and serve it as `name` from the next step on (AdapterError: why not)."""
        return self.adapters.load(name, path)

    def unload_adapter(self, name: str) -> None:
        """Stop serving an adapter (lora.UnknownAdapterError if none of that name); requests already running
        finish with it. Its prefix-cache entries are keyed by its load id, so they are never hit again."""
        self.adapters.unload(name)

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink) -> int:
        """Queue a request; events go to `sink` from the engine thread. Returns the request id."""
        if not prompt:
            raise ValueError("the prompt is empty")
        adapter = self.adapters.get(params.adapter) if params.adapter else None  # UnknownAdapterError
        if not self._fits(1, len(prompt) + 1):
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens; this server's KV cache holds {self.max_kv_tokens} "
                "tokens in all (--max-kv-tokens)"
            )
        grammar = self._grammar(params)  # compiled before queueing: the engine thread never waits on it
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError("the server is draining and takes no new requests")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting")
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(params.seed % 2**64)  # any int64
            req = Request(
                next(self._ids), prompt, params, sink, generator=gen, grammar=grammar, adapter=adapter
            )
            self._waiting.append(req)
            self._lock.notify()
        return req.id

    def cancel(self, request_id: int) -> None:
        """Stop generating for a request (its client went away); it ends with finish_reason 'abort'."""
        with self._lock:
            for req in self._waiting:
                if req.id == request_id:
                    req.cancelled = True
            for seq in [*self._rows, *self._preempted]:
                if seq.req.id == request_id:
                    seq.req.cancelled = True

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting) + len(self._preempted)
            a = self.adapters
            slots = (len(a.names()), len(a.resident), a.max_loras)
            return EngineStats(waiting, len(self._rows), self._kv_used, self.max_kv_tokens, *slots)

    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._rows and not self._preempted

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

    @property
    def eos_token_for_padding(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._stop and not self._waiting and not self._rows and not self._preempted:
                    self._lock.wait()
                if self._stop:
                    break
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # a bug or OOM: fail the affected requests, keep serving
                log.exception("engine step failed")
                self._fail_all(exc)
        self._fail_all(EngineStoppedError("engine stopped"))

    def _fail_all(self, exc: BaseException) -> None:
        failed = [s.req for s in self._rows] + [s.req for s in self._preempted]
        with self._lock:
            if self._stop:
                failed += list(self._waiting)
                self._waiting.clear()
            self._rows, self._kv_used = [], 0
            self._preempted.clear()
        self.pool.release()
        for req in {id(r): r for r in failed}.values():
            req.sink(Event(finish_reason="error", error=str(exc) or exc.__class__.__name__))

    # ---- one step ----

    def _step(self) -> None:
        self._drop_cancelled()
        beam = self._admit()
        if beam is not None:
            pad = self.eos_token_for_padding
            if beam.adapter is not None:  # beam search runs alone: every token is the adapter's
                self.adapters.make_resident(beam.adapter, set())
                self.adapters.step.chunks = [(beam.adapter_uid, slice(None))]
            try:
                beam_search(
                    self.model, self.tokenizer, self.device, beam, self.eos_ids, pad, self.context_length
                )
            finally:
                self.adapters.step.clear()
            return
        decode, chunks = self._schedule()
        while self._rows and not self._reserve(len(self._rows), _columns(decode, chunks)):
            if len(self._rows) == 1:  # alone and still beyond the budget: the answer ends here
                self._rows[0].finish("length")
                self._retire_finished()
                return
            self._preempt_newest()
            decode, chunks = self._schedule()
        if decode or chunks:
            self._forward(decode, chunks)
            self._retire_finished()

    def _schedule(self) -> tuple[list[Sequence], list[tuple[Sequence, int]]]:
        """This step's work: every row with one token to feed decodes; rows still prefilling take chunks of
        their prompt (first come, first served) up to the prefill budget."""
        decode = [s for s in self._rows if s.total - s.cached == 1]
        chunks = []
        left = self.max_prefill_tokens
        for s in sorted((s for s in self._rows if s.total - s.cached > 1), key=lambda s: s.req.id):
            if left <= 0:
                break
            n = min(s.total - s.cached, left)
            chunks.append((s, n))
            left -= n
        return decode, chunks

    def _shape(self, rows: int, columns: int) -> tuple[int, int]:
        """The pool's (slots, columns) to hold `rows` rows of `columns` positions: both grow in steps (so a
        copy is rare), slots only where the budget allows."""
        columns = round_up(max(columns, 1), COLUMN_STEP)
        return max(rows, min(round_up(rows, SLOT_STEP), self.max_kv_tokens // columns)), columns

    def _fits(self, rows: int, columns: int) -> bool:
        slots, cols = self._shape(rows, columns)
        return slots * cols <= self.max_kv_tokens

    def _reserve(self, rows: int, columns: int) -> bool:
        """Resize the pool to hold `rows` rows of `columns` positions; False when the budget cannot."""
        if rows <= self.pool.slots and columns <= self.pool.columns:
            return True
        if not self._fits(rows, columns):
            return False
        self.pool.resize(*self._shape(rows, columns))
        return True

    def _preempt_newest(self) -> None:
        """Drop the newest row's cache to make room; it resumes (recomputing its tokens) when there is."""
        newest = max(self._rows, key=lambda s: s.req.id)
        log.info("KV cache full: preempting request %d (%d tokens)", newest.req.id, newest.total)
        self._remove([newest.slot])
        newest.cached, newest.slot = 0, -1
        with self._lock:
            self._preempted.appendleft(newest)

    def _admit(self) -> Request | None:
        """Resume preempted rows, then admit waiting requests, while rows, the prefill budget and the pool
        allow. Returns a beam-search request to run alone, if that is what comes next."""
        left = [s.total - s.cached for s in self._rows if s.total - s.cached > 1]
        planned = min(sum(left), self.max_prefill_tokens)
        columns = max((s.total + 1 for s in self._rows), default=0)
        joining: list[Sequence] = []
        self.adapters.drop_unloaded({s.req.adapter_uid for s in [*self._rows, *self._preempted]})
        with self._lock:
            while self._preempted and len(self._rows) + len(joining) < self.max_batch_size:
                s = self._preempted[0]
                alone = not self._rows and not joining
                if not alone and not (
                    self._fits(len(self._rows) + len(joining) + 1, max(columns, s.total + 1))
                    and self._hosts([*self._rows, *joining, s], [])
                ):
                    break
                joining.append(self._preempted.popleft())
                columns, planned = max(columns, s.total + 1), planned + s.total

            def fits(batch: list[Request], req: Request) -> bool:
                rows = len(self._rows) + len(joining) + len(batch) + 1
                room = self._fits(rows, max([columns, *(len(r.prompt) + 1 for r in [*batch, req])]))
                return room and self._hosts([*self._rows, *joining], [*batch, req])

            budget = Budget(self.max_batch_size, self.max_prefill_tokens)
            reqs = admit(self._waiting, len(self._rows) + len(joining), budget, fits, planned)
        if reqs and reqs[0].params.beams > 1:
            return reqs[0]
        for r in reqs:
            seq = Sequence(r, self.tokenizer, self.eos_ids)
            if r.grammar is not None:
                seq.matcher = self.grammars.matcher(r.grammar, seq.stop_ids)
            joining.append(seq)
        pinned = {s.req.adapter_uid for s in [*self._rows, *joining]}
        for seq in joining:
            if seq.req.adapter is not None:
                self.adapters.make_resident(seq.req.adapter, pinned)
            self._join(seq)
        return None

    def _hosts(self, seqs: list[Sequence], reqs: list[Request]) -> bool:
        """Whether the LoRA slots hold the adapters of these rows and requests at once."""
        uids = {s.req.adapter_uid for s in seqs} | {r.adapter_uid for r in reqs}
        return self.adapters.can_host(uids - {0})

    def _join(self, seq: Sequence) -> None:
        """Give a row a slot, its cached prompt prefix copied in."""
        uid = seq.req.adapter_uid  # a prefix computed under one adapter is never reused under another
        n, kv = self.prefix_cache.lookup(seq.req.prompt, uid) if self.prefix_cache else (0, None)
        seq.slot, seq.cached = len(self._rows), 0
        self._reserve(seq.slot + 1, max([n + 1, *(s.total + 1 for s in [*self._rows, seq])]))
        if kv is not None:
            self.pool.write(seq.slot, kv)
            seq.cached = n
        with self._lock:
            self._rows.append(seq)

    def _forward(self, decode: list[Sequence], chunks: list[tuple[Sequence, int]]) -> None:
        """One forward pass: decode tokens (in slot order), then chunks (ordered by adapter, so an adapter's
        prompt tokens are contiguous); rows that reach their last token sample one."""
        chunks = sorted(chunks, key=lambda c: c[0].req.adapter_uid)  # stable: without adapters, unchanged
        ids: list[int] = [s.tokens(s.cached, s.total)[0] for s in decode]  # a prompt's last token too
        pos: list[int] = [s.cached for s in decode]
        for s, n in chunks:
            ids += s.tokens(s.cached, s.cached + n)
            pos += range(s.cached, s.cached + n)
        dev = self.device
        plan = attention.build_plan(
            self.pool, [(s.slot, s.cached) for s in decode], [(s.slot, s.cached, n) for s, n in chunks], dev
        )
        sampled = list(decode)
        keep = list(range(len(decode)))
        at = len(decode)
        for s, n in chunks:
            at += n
            if s.cached + n == s.total:
                sampled.append(s)
                keep.append(at - 1)
        lora_step = self.adapters.step
        lora_step.decode_mask = self.adapters.decode_mask([s.req.adapter_uid for s in decode])
        uids = [s.req.adapter_uid for s, n in chunks for _ in range(n)]
        lora_step.chunks = lora.chunk_groups(uids, len(decode))
        try:
            out = self.model(
                input_ids=torch.tensor([ids], device=dev),
                position_ids=torch.tensor([pos], device=dev),
                use_cache=False,
                plan=plan,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=dev),
            )
        finally:
            self.adapters.step.clear()
        for s in decode:
            s.cached += 1
        for s, n in chunks:
            before, s.cached = s.cached, s.cached + n
            prompt = len(s.req.prompt)
            if self.prefix_cache and before < prompt <= s.cached and prompt >= self.prefix_cache.min_tokens:
                self.prefix_cache.store(s.req.prompt, self.pool.read(s.slot, prompt), s.req.adapter_uid)
        self._kv_used = sum(s.cached for s in self._rows)
        if not sampled:
            return
        step = sample_step(out.logits[0], sampled)
        for seq, tok, lp in zip(sampled, step.tokens, step.logprobs, strict=True):
            seq.length = seq.cached
            seq.add(tok, self.context_length, lp)

    # ---- rows leaving ----

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [s for s in self._preempted if s.req.cancelled]
            for s in gone:
                self._preempted.remove(s)
        for s in gone:
            s.req.sink(Event(finish_reason="abort", completion_tokens=len(s.generated)))
        cancelled = [s for s in self._rows if s.req.cancelled]
        for s in cancelled:
            s.req.sink(Event(finish_reason="abort", completion_tokens=len(s.generated)))
        if cancelled:
            self._remove([s.slot for s in cancelled])

    def _retire_finished(self) -> None:
        done = [s.slot for s in self._rows if s.finish_reason is not None]
        if done:
            self._remove(done)

    def _remove(self, slots: list[int]) -> None:
        """Take rows out; the last row moves into each freed slot, so slots stay 0..n-1."""
        with self._lock:  # stats() and cancel() read the rows
            for slot in sorted(slots, reverse=True):
                last = self._rows.pop()
                if last.slot != slot:
                    self.pool.move(last.slot, slot, last.cached)
                    last.slot = slot
                    self._rows[slot] = last
            self._kv_used = sum(s.cached for s in self._rows)
            if not self._rows and not self._preempted:
                self.pool.release()


def _columns(decode: list[Sequence], chunks: list[tuple[Sequence, int]]) -> int:
    """Pool columns a step writes up to."""
    return max([*(s.cached + 1 for s in decode), *(s.cached + n for s, n in chunks)], default=0)


def _pool_for(model: Any, device: torch.device) -> KVPool:
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    return KVPool(cfg.num_hidden_layers, kv_heads, head_dim, model.dtype, device)
