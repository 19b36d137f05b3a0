"""One token per row of a batch's logits, each row with its own settings.

The order is vLLM's: the logprobs a request asks for are those of the model's raw distribution (vLLM's
default `logprobs_mode=raw_logprobs`: before bias, penalties and temperature), one log_softmax over the rows
that want them; then, on the rows that use them only, min_tokens masking, logit_bias and the penalties
(repetition, frequency, presence), after the grammar's bitmask on rows with a guide (engine/grammar.py);
greedy rows take the argmax of that; sampled rows apply temperature,
min_p, top_k and top_p, batched with per-row tensors, and draw with their own generator. A row that uses
none of these costs nothing more than before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grammar import apply_masks
from .sequence import Sequence
from .types import GREEDY_BELOW, SamplingParams, TokenLogprob

LOGPROB_FLOOR = -9999.0  # as vLLM: JSON has no -inf
NEG_INF = float("-inf")


@dataclass
class Step:
    tokens: list[int]
    logprobs: list[TokenLogprob | None]  # per row; None where the request asked for none


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """The sampled token of each row."""
    return sample_step(logits, seqs).tokens


def sample_step(logits: torch.Tensor, seqs: list[Sequence]) -> Step:
    """One token per row (and its logprobs where asked for): module docstring."""
    params = [s.req.params for s in seqs]
    dev = logits.device
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    raw_lp = torch.log_softmax(logits[_rows(want, dev)].float(), -1) if want else None
    processed = [i for i, s in enumerate(seqs) if _processed(s)]
    guided = [i for i, s in enumerate(seqs) if s.matcher is not None]
    if processed or guided:
        logits = logits.to(torch.float32, copy=True)
    if guided:  # structured outputs: what each row's grammar forbids is -inf, before anything else
        apply_masks(logits, [seqs[i].matcher for i in guided], guided)
    if processed:
        rows = _rows(processed, dev)
        logits[rows] = _process(logits[rows], [seqs[i] for i in processed])
    tokens: list[int] = logits.argmax(-1).tolist()
    hot = [i for i, p in enumerate(params) if p.temperature >= GREEDY_BELOW]  # below: greedy (~0 overflows)
    if hot:
        probs = _distribution(logits[_rows(hot, dev)].float(), [params[i] for i in hot])
        for j, i in enumerate(hot):
            tokens[i] = int(torch.multinomial(probs[j], 1, generator=seqs[i].req.generator).item())
    logprobs: list[TokenLogprob | None] = [None] * len(seqs)
    if raw_lp is not None:
        picked = torch.tensor([tokens[i] for i in want], device=dev).unsqueeze(1)
        chosen: list[float] = raw_lp.gather(1, picked).squeeze(1).tolist()
        k = max(params[i].logprobs or 0 for i in want)
        top_lp: list[list[float]] = [[] for _ in want]
        top_ids: list[list[int]] = [[] for _ in want]
        if k:
            values, ids = raw_lp.topk(min(k, raw_lp.shape[-1]), -1)
            top_lp, top_ids = values.tolist(), ids.tolist()
        for j, i in enumerate(want):
            n = params[i].logprobs or 0
            top = [(t, max(v, LOGPROB_FLOOR)) for t, v in zip(top_ids[j][:n], top_lp[j][:n], strict=True)]
            logprobs[i] = TokenLogprob(tokens[i], max(chosen[j], LOGPROB_FLOOR), top)
    return Step(tokens, logprobs)


def _rows(index: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(index, dtype=torch.long, device=device)


def _penalised(p: SamplingParams) -> bool:
    return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0


def _processed(seq: Sequence) -> bool:
    """Whether a row's logits change before the argmax / temperature."""
    p = seq.req.params
    ending_masked = len(seq.generated) < p.min_tokens and bool(seq.stop_ids)
    return _penalised(p) or bool(p.logit_bias) or ending_masked


def _process(x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """min_tokens, logit_bias and the penalties on rows of float32 logits (a copy), as vLLM applies them."""
    vocab, dev = x.shape[-1], x.device
    rows: list[int] = []
    cols: list[int] = []
    for j, s in enumerate(seqs):  # min_tokens: no end yet
        if len(s.generated) < s.req.params.min_tokens:
            ids = [t for t in s.stop_ids if 0 <= t < vocab]
            rows += [j] * len(ids)
            cols += ids
    if rows:
        x[_rows(rows, dev), _rows(cols, dev)] = NEG_INF
    rows, cols, bias = [], [], []
    for j, s in enumerate(seqs):
        for t, b in s.req.params.logit_bias.items():
            if 0 <= t < vocab:
                rows.append(j)
                cols.append(t)
                bias.append(b)
    if rows:
        x.index_put_((_rows(rows, dev), _rows(cols, dev)), torch.tensor(bias, device=dev), accumulate=True)
    pen = [j for j, s in enumerate(seqs) if _penalised(s.req.params)]
    if pen:
        x[_rows(pen, dev)] = _penalties(x[_rows(pen, dev)], [seqs[j] for j in pen])
    return x


def _penalties(x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """vLLM's: repetition_penalty over prompt and generated tokens (divides positive logits, multiplies
    negative ones); OpenAI's frequency_penalty x count and presence_penalty x (count > 0) over generated."""
    n, vocab, dev = len(seqs), x.shape[-1], x.device
    width = max(len(s.generated) for s in seqs)
    counts = torch.zeros((n, vocab), dtype=x.dtype, device=dev)
    if width:
        index = torch.zeros((n, width), dtype=torch.long)
        weight = torch.zeros((n, width), dtype=x.dtype)
        for j, s in enumerate(seqs):
            gen = [t for t in s.generated if 0 <= t < vocab]
            index[j, : len(gen)] = torch.tensor(gen, dtype=torch.long)
            weight[j, : len(gen)] = 1.0
        counts.scatter_add_(1, index.to(dev), weight.to(dev))
    params = [s.req.params for s in seqs]
    present = counts > 0
    if any(p.repetition_penalty != 1.0 for p in params):
        seen = present.clone()
        for j, s in enumerate(seqs):
            if params[j].repetition_penalty != 1.0:
                prompt = torch.tensor([t for t in s.req.prompt if 0 <= t < vocab], dtype=torch.long)
                seen[j, prompt.to(dev)] = True
        rep = torch.tensor([p.repetition_penalty for p in params], dtype=x.dtype, device=dev).unsqueeze(1)
        x = torch.where(seen, x * torch.where(x > 0, 1.0 / rep, rep), x)
    if any(p.frequency_penalty != 0.0 for p in params):
        freq = torch.tensor([p.frequency_penalty for p in params], dtype=x.dtype, device=dev).unsqueeze(1)
        x = x - freq * counts
    if any(p.presence_penalty != 0.0 for p in params):
        pres = torch.tensor([p.presence_penalty for p in params], dtype=x.dtype, device=dev).unsqueeze(1)
        x = x - pres * present
    return x


def _distribution(x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Probabilities to draw from: temperature, then min_p, top_k and top_p (vLLM's order), per row."""
    dev, vocab = x.device, x.shape[-1]
    temperature = torch.tensor([p.temperature for p in params], dtype=x.dtype, device=dev).unsqueeze(1)
    # Extreme settings (a repetition_penalty near 0, a bias on a huge logit) can overflow: keep it drawable.
    x = torch.nan_to_num(x / temperature, nan=NEG_INF, posinf=torch.finfo(x.dtype).max, neginf=NEG_INF)
    if any(p.min_p > 0.0 for p in params):
        probs = torch.softmax(x, -1)
        min_p = torch.tensor([p.min_p for p in params], dtype=x.dtype, device=dev).unsqueeze(1)
        x = x.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, NEG_INF)
    if any(p.top_k > 0 for p in params):
        ks = [min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params]
        kth = x.topk(max(ks), -1).values.gather(1, _rows([k - 1 for k in ks], dev).unsqueeze(1))
        x = x.masked_fill(x < kth, NEG_INF)
    probs = torch.softmax(x, -1)
    if any(p.top_p < 1.0 for p in params):
        top_p = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]
        sorted_probs, order = probs.sort(-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < torch.tensor(top_p, device=dev).unsqueeze(1)
        keep[:, 0] = True  # the top token, always: a denormal top_p is 0 in float32
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs * keep)
    return probs
