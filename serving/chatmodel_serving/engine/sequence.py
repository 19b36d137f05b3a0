"""One request inside the engine: Request (what was asked) and Sequence (its tokens so far, incremental
detokenisation and stop strings). Public, so the detokeniser can be tested with a tokenizer and no model:

    req = Request(1, prompt, SamplingParams(max_tokens=16, stop=("\\n",)), sink=events.append)
    seq = Sequence(req, tokenizer, eos_ids={eos})
    seq.add(token, context_length=8192)  # emits Events to the sink; sets seq.finish_reason at the end
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .types import Event, SamplingParams, Sink, TokenLogprob

if TYPE_CHECKING:
    import torch

    from .lora import Adapter


@dataclass
class Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    submitted: float = field(default_factory=time.monotonic)
    generator: torch.Generator | None = None  # set when params.seed is
    cancelled: bool = False
    grammar: Any = None  # the compiled grammar of params.guide (engine/grammar.py)
    adapter: Adapter | None = None  # the LoRA adapter params.adapter names (engine/lora.py); None: the base

    @property
    def adapter_uid(self) -> int:
        """The adapter's load id; 0 for the base model."""
        return self.adapter.uid if self.adapter is not None else 0


class Sequence:
    """A running request: its tokens, detokenisation state and stop checks."""

    def __init__(self, req: Request, tokenizer: Any, eos_ids: set[int]):
        self.req = req
        self.tokenizer = tokenizer
        self.eos_ids = set() if req.params.ignore_eos else eos_ids
        # What ends the answer (and is not part of it): EOS unless ignored, and stop_token_ids.
        self.stop_ids = self.eos_ids | set(req.params.stop_token_ids)
        self.pending_logprobs: list[TokenLogprob] = []  # not yet sent (their text may be held back)
        self.length = len(req.prompt)  # tokens whose KV is in the cache once the last sampled one is fed
        self.generated: list[int] = []
        self.slot = -1  # the engine's KV pool row (kvcache.py) while running
        self.cached = 0  # positions of prompt + generated whose keys/values are in the pool
        self.sent = 0  # characters of text already handed out
        # Incremental detokenisation (as vLLM's): `text` is final up to the tokens before `read`; each new
        # token decodes only generated[prefix:], so a token costs the same at the 10th and the 1000th.
        self.text = ""
        self.prefix = self.read = 0
        self.hold = max((len(s) for s in req.params.stop), default=1) - 1
        self.finish_reason: str | None = None
        self.matcher: Any = None  # structured outputs: an xgrammar GrammarMatcher (set by the engine)

    @property
    def total(self) -> int:
        """Tokens so far: the prompt and the answer."""
        return len(self.req.prompt) + len(self.generated)

    def tokens(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + generated."""
        prompt = self.req.prompt
        if end <= len(prompt):
            return prompt[start:end]
        return prompt[start:] + self.generated[max(0, start - len(prompt)) : end - len(prompt)]

    def _detokenize(self, final: bool) -> str:
        """The answer's text so far (the last characters may still change unless `final`)."""
        decode = self.tokenizer.decode
        gen = self.generated
        before: str = decode(gen[self.prefix : self.read], skip_special_tokens=True)
        after: str = decode(gen[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(gen)
            return self.text
        return self.text + after[len(before) :]

    def add(self, token: int, context_length: int, logprob: TokenLogprob | None = None) -> None:
        """Record a sampled token and emit the new text; sets finish_reason when the sequence ends."""
        params = self.req.params
        # With a guide the grammar decides when the answer is whole: it then allows only end tokens, and a
        # token it refuses (none can be sampled unless min_tokens masked them all) ends it too.
        guided_end = self.matcher is not None and (
            not self.matcher.accept_token(token) or self.matcher.is_terminated()
        )
        ended = token in self.stop_ids or guided_end
        if ended:
            self.finish_reason = "stop"
        else:
            self.generated.append(token)
            if logprob is not None:
                self.pending_logprobs.append(logprob)
        text = self._detokenize(final=ended)
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
            logprobs = None
            if params.logprobs is not None:
                logprobs, self.pending_logprobs = self.pending_logprobs, []
            self.req.sink(
                Event(
                    text=delta,
                    token_ids=[] if ended else [token],
                    finish_reason=self.finish_reason,
                    completion_tokens=len(self.generated),
                    logprobs=logprobs,
                )
            )

    def finish(self, reason: str) -> None:
        """End the answer here (the engine cannot go on with it), sending what text is left."""
        self.finish_reason = reason
        text = self._detokenize(final=True)
        delta, self.sent = text[self.sent :], len(text)
        logprobs = None
        if self.req.params.logprobs is not None:
            logprobs, self.pending_logprobs = self.pending_logprobs, []
        self.req.sink(
            Event(text=delta, finish_reason=reason, completion_tokens=len(self.generated), logprobs=logprobs)
        )
