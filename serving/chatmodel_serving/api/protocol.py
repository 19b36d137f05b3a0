"""OpenAI request and response shapes (the subset we serve, plus vLLM's beam-search extension).

Unknown fields are ignored, as vLLM does, so newer clients keep working; fields we cannot honour are
refused with a 400 naming them rather than silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from ..engine.types import Guide

MAX_N = 16
MAX_STOPS = 4
MAX_LOGPROBS = 20  # OpenAI's bound for top_logprobs (chat) and logprobs (completions)
MAX_BIAS = 100.0
RAW_LOGPROBS = (
    "log-probabilities of the model's raw distribution, before logit_bias, penalties and temperature "
    "(vLLM's default, logprobs_mode=raw_logprobs)"
)
# What the validators below accept, said in the OpenAPI document too (clients and fuzzers read it).
_TEXT = {"type": "string", "minLength": 1}
_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
STOP_SCHEMA = WithJsonSchema(
    {"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "maxItems": MAX_STOPS}, {"type": "null"}]}
)
LOGIT_BIAS_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {
                "type": "object",
                "propertyNames": {"pattern": "^(0|[1-9][0-9]{0,8})$"},
                "additionalProperties": {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS},
            },
            {"type": "null"},
        ],
        "description": "token id (a decimal string) -> bias added to its logit, -100..100 (OpenAI's)",
    }
)
PROMPT_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            _TEXT,
            {"type": "array", "items": _TEXT, "minItems": 1},
            _IDS,
            {"type": "array", "items": _IDS, "minItems": 1},
        ]
    }
)


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


# OpenAI's rule for function names (also what the tool-call parser and the fallback prompt rely on).
TOOL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class FunctionCall(BaseModel):
    """A call the assistant made (history) or makes (responses): arguments are JSON text, as OpenAI's."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    # A JSON schema of type object (checked in api/tools.py, which names the tool); None = no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one function: the answer is one call of it."""

    type: Literal["function"]
    function: FunctionName


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's past calls (its content may be null)
    tool_call_id: str | None = None  # role tool: the call this is the result of

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


def _union_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "none") or "[" in part or part.startswith("constrained-")


def invalid_request(errors: Sequence[Any]) -> ApiError:
    """A 400 naming the first field pydantic refused, as a JSON path (`messages.0.content`)."""
    err: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    if err.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}".strip())
    # Drop pydantic's union-branch tags (`str`, `list[int]`, `function-after[...]`) so that the path reads
    # like the JSON; a field whose name merely starts like one (`stream`) stays.
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _union_tag(str(p))]
    param = ".".join(loc) or None
    return ApiError(400, f"{param or 'body'}: {err.get('msg', 'invalid value')}", param=param)


class StreamOptions(BaseModel):
    include_usage: bool = False


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extension, under its names: exactly one of `json` (a JSON schema, as an
    object or JSON text), `regex`, `choice`, `grammar` (EBNF, xgrammar's dialect) or `json_object`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = Field(None, min_length=1)
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    grammar: str | None = Field(None, min_length=1)
    json_object: bool | None = None
    # Accepted as vLLM's; our JSON is always compact (free whitespace lets a small model loop on newlines).
    disable_any_whitespace: bool = False

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        chosen = [self.json_, self.regex, self.choice, self.grammar, self.json_object or None]
        if sum(c is not None for c in chosen) != 1:
            raise ValueError("give exactly one of json, regex, choice, grammar, json_object")
        return self

    def guide(self) -> Guide:
        if self.json_ is not None:
            spec = self.json_ if isinstance(self.json_, str) else json.dumps(self.json_)
            return Guide("json", spec, param="structured_outputs.json")
        if self.regex is not None:
            return Guide("regex", self.regex, param="structured_outputs.regex")
        if self.choice is not None:
            return Guide("choice", json.dumps(self.choice), param="structured_outputs.choice")
        if self.grammar is not None:
            return Guide("grammar", self.grammar, param="structured_outputs.grammar")
        return Guide("json_object", param="structured_outputs.json_object")


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # every answer follows the schema either way


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: text, json_object (any JSON object) or json_schema."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        return self

    def guide(self) -> Guide | None:
        if self.type == "json_object":
            return Guide("json_object", param="response_format")
        if self.type == "json_schema" and self.json_schema is not None:
            spec = json.dumps(self.json_schema.schema_)
            return Guide("json", spec, param="response_format.json_schema.schema")
        return None


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Annotated[str | list[str] | None, STOP_SCHEMA] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI's
    # OpenAI's definitions: logit -= frequency_penalty x count + presence_penalty x (count > 0), over the
    # tokens generated so far; logit_bias adds to the logits of the token ids named.
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: Annotated[dict[str, float] | None, LOGIT_BIAS_SCHEMA] = None
    user: str | None = None
    # vLLM's extensions for beam search.
    use_beam_search: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    ignore_eos: bool = False
    # vLLM's sampling extensions, as vLLM names and defines them.
    # 1 = off; prompt + output. vLLM takes any value > 0; ours is bounded so float32 logits cannot overflow
    # (a penalty of 5e-324 is 0 in float32: every logit became inf or nan).
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0 = off
    min_p: float | None = Field(None, ge=0, le=1)
    min_tokens: int = Field(0, ge=0)  # EOS and stop_token_ids cannot end the answer before this
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    structured_outputs: StructuredOutputs | None = None  # vLLM's extension (constrained decoding)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"keys must be token ids as decimal strings, not {key!r}")
            if not -MAX_BIAS <= bias <= MAX_BIAS:
                raise ValueError(f"biases must lie in [-100, 100], not {bias} (token {key})")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def beams(self) -> int:
        if not self.use_beam_search:
            return 1
        return max(self.best_of or self.n, 2)

    def logprobs_wanted(self) -> int | None:
        """How many most likely tokens to return per generated token; None = no logprobs at all."""
        return None

    def guide(self) -> Guide | None:
        """What the answer must match (structured outputs), or None."""
        return self.structured_outputs.guide() if self.structured_outputs else None


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    # None = "auto" with tools, "none" without (OpenAI's defaults).
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # None = true (OpenAI's default)
    # Logprobs of the model's raw distribution (before penalties, bias and temperature; vLLM's default
    # `logprobs_mode=raw_logprobs`): the sampled token's, and the top_logprobs most likely.
    logprobs: bool | None = Field(None, description=RAW_LOGPROBS)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def guide(self) -> Guide | None:
        fmt = self.response_format.guide() if self.response_format else None
        if fmt is not None and self.structured_outputs is not None:
            raise ApiError(
                400, "give response_format or structured_outputs, not both", param="structured_outputs"
            )
        return fmt or super().guide()

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: Annotated[str | list[str] | list[int] | list[list[int]], PROMPT_SCHEMA]
    echo: Literal[False] = False
    suffix: None = None
    # The sampled token's logprob and those of the `logprobs` most likely (raw distribution, as chat's).
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description=RAW_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if not v or (isinstance(v, list) and any(not p and p != 0 for p in v)):
            raise ValueError("prompt must not be empty")
        return v

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprobs_wanted(self) -> int | None:
        return self.logprobs


# ---------------------------------------------------------------- responses


class ResponseModel(BaseModel):
    """A response shape. Fields named in `omitted_when_none` are left out of the JSON when None (as OpenAI
    leaves them out); every other field is always sent, null included."""

    omitted_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_nones(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in self.omitted_when_none}

    def body(self) -> dict[str, Any]:
        """The JSON object to send."""
        return self.model_dump()


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        total = prompt_tokens + completion_tokens
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=total)


class ResponseToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(ResponseModel):
    omitted_when_none = frozenset({"tool_calls"})
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the answer is only tool calls
    tool_calls: list[ResponseToolCall] | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's text as UTF-8


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]  # the most likely tokens there, best first


class ChatLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None


class TextLogprobs(ResponseModel):
    """Completions' (legacy) shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]  # the most likely tokens and the sampled one
    text_offset: list[int]  # where each token starts in the choice's text


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class TextChoice(ResponseModel):
    index: int
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: str


class _Answer(ResponseModel):
    """What every completion response and chunk carries; subclasses narrow `object` and `choices` (a
    field redeclared in a subclass keeps its place in the JSON)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Any]


class ChatCompletion(_Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Completion(_Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage


class FunctionCallDelta(ResponseModel):
    omitted_when_none = frozenset({"name"})
    name: str | None = None  # in a call's first delta only
    arguments: str  # "" in the first delta, then fragments of the JSON text


class ToolCallDelta(ResponseModel):
    """A piece of a streamed tool call, OpenAI's shape: the first has id, type and the name."""

    omitted_when_none = frozenset({"id", "type"})
    index: int  # the call's place among the choice's calls
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(ResponseModel):
    omitted_when_none = frozenset({"role", "tool_calls"})
    role: Literal["assistant"] | None = None  # in the first chunk of a choice only
    content: str | None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkOpening(ResponseModel):
    """The first streamed chunk of a chat choice: the role, no text, no finish_reason yet."""

    index: int
    delta: ChatDelta
    logprobs: None = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class TextChunkChoice(ResponseModel):
    index: int
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: str | None


class _Chunk(_Answer):
    omitted_when_none = frozenset({"usage"})
    usage: Usage | None = None  # only in the last chunk, when stream_options.include_usage is set


class ChatCompletionChunk(_Chunk):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkOpening | ChatChunkChoice]


class CompletionChunk(_Chunk):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChunkChoice]


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatmodel"
    root: str
    parent: str | None = None  # a LoRA adapter's base model (as vLLM lists adapters)
    max_model_len: int


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
