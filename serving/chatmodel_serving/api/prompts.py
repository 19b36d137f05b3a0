"""From an OpenAI request to the engine's input: token ids of the prompt(s) and SamplingParams."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..engine.types import SamplingParams
from .protocol import ApiError, ChatCompletionRequest, CompletionRequest, SamplingFields
from .state import ServedModel
from .tools import ToolPlan, supports_tools, template_inputs

if TYPE_CHECKING:
    from typing_extensions import TypeIs

PromptList = list[str] | list[int] | list[list[int]]  # CompletionRequest.prompt, but one string


def _texts(p: PromptList) -> TypeIs[list[str]]:
    return all(isinstance(x, str) for x in p)


def _token_ids(p: list[int] | list[list[int]]) -> TypeIs[list[int]]:
    return all(isinstance(x, int) for x in p)


def chat_prompt(served: ServedModel, req: ChatCompletionRequest, plan: ToolPlan | None = None) -> list[int]:
    tokenizer = served.loaded.tokenizer
    if getattr(tokenizer, "chat_template", None) is None:
        raise ApiError(400, f"model {served.name!r} has no chat template; use /v1/completions", param="model")
    # Tools and past calls go through the template where it takes them, else the fallback prompt (tools.py).
    messages, tools = template_inputs(req, plan or ToolPlan(), supports_tools(tokenizer))
    try:
        ids = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except Exception as exc:  # the template's own checks (role order, ...) are client errors
        raise ApiError(
            400, f"messages do not fit the model's chat template: {exc}", param="messages"
        ) from None
    return list(ids)


def completion_prompts(served: ServedModel, req: CompletionRequest) -> list[list[int]]:
    p = req.prompt
    tokenizer = served.loaded.tokenizer

    def encode(text: str) -> list[int]:
        # Text can encode to no token at all (found by the fuzzer): start from end-of-text then.
        return tokenizer.encode(text, add_special_tokens=False) or [tokenizer.eos_token_id]

    if isinstance(p, str):
        return [encode(p)]
    if _texts(p):
        return [encode(s) for s in p]
    prompts: list[list[int]] = [p] if _token_ids(p) else p
    vocab = served.loaded.model.config.vocab_size
    for ids in prompts:
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"token ids must lie in [0, {vocab})", param="prompt")
    return [list(ids) for ids in prompts]


def sampling_params(
    served: ServedModel, req: SamplingFields, requested: int | None, prompt_len: int, prompt_param: str
) -> SamplingParams:
    ctx = served.loaded.context_length
    room = ctx - prompt_len
    if room <= 0:
        raise ApiError(
            413,
            f"the prompt is {prompt_len} tokens; this model's context is {ctx} tokens",
            param=prompt_param,
            code="context_length_exceeded",
        )
    max_tokens = requested if requested is not None else min(served.default_max_tokens, room)
    if max_tokens > room:
        raise ApiError(
            400,
            f"max_tokens is {max_tokens} but only {room} tokens of the {ctx}-token context "
            f"are left after the {prompt_len}-token prompt",
            param="max_tokens",
        )
    beams = req.beams()
    if beams > 1 and req.n > 1:
        raise ApiError(400, "use_beam_search returns one answer per prompt; set n to 1", param="n")
    temperature = served.default_temperature if req.temperature is None else req.temperature
    vocab = served.loaded.model.config.vocab_size
    bias = {int(k): v for k, v in (req.logit_bias or {}).items()}
    if any(t >= vocab for t in bias):
        raise ApiError(400, f"logit_bias: token ids must lie in [0, {vocab})", param="logit_bias")
    stop_ids = tuple(req.stop_token_ids or ())
    if any(t >= vocab for t in stop_ids):
        raise ApiError(400, f"stop_token_ids: token ids must lie in [0, {vocab})", param="stop_token_ids")
    if req.min_tokens > max_tokens:
        raise ApiError(
            400, f"min_tokens ({req.min_tokens}) exceeds max_tokens ({max_tokens})", param="min_tokens"
        )
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0 if beams > 1 else temperature,
        top_p=req.top_p or 1.0,
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        beams=beams,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=bias,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        top_k=max(req.top_k or 0, 0),
        min_p=req.min_p or 0.0,
        min_tokens=req.min_tokens,
        stop_token_ids=stop_ids,
        logprobs=req.logprobs_wanted(),
        guide=req.guide(),
        adapter=served.adapter,
    )
    if beams > 1 and (controls := params.controls()):
        raise ApiError(400, f"{controls[0]} is not supported with use_beam_search", param=controls[0])
    return params


def with_seed(params: SamplingParams, i: int) -> SamplingParams:
    """The i-th of n choices: its own seed, so choices differ yet the whole answer is reproducible."""
    if i == 0 or params.seed is None:
        return params
    seed = (params.seed + i + 2**63) % 2**64 - 2**63  # stays an int64 (Triton's seed tensor)
    return dataclasses.replace(params, seed=seed)
