"""The tensors exchanged with the Triton model: the one place their names and types live.

Inputs follow Triton's LLM convention (the vLLM and TensorRT-LLM backends use the same names), so
`/v2/models/<name>/generate` works with plain JSON. The extras after `stop` let the OpenAI front send
exactly what the PyTorch runtime would run: token ids (the chat template applied once, in the front),
a seed, ignore_eos, beam search, and `sampling`: every other SamplingParams field (penalties, logit_bias,
vLLM's controls, logprobs, the structured-output guide) as one JSON object, so a field added to
SamplingParams reaches the engine behind Triton without a new tensor. Each response's `logprobs` carries
those of its tokens as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..engine.types import Guide, SamplingParams, TokenLogprob


@dataclass(frozen=True)
class Tensor:
    name: str
    triton_type: str  # as in config.pbtxt, e.g. TYPE_STRING
    dims: tuple[int, ...] = (1,)
    optional: bool = True

    @property
    def client_type(self) -> str:
        """The datatype string of the inference protocol (tritonclient's InferInput)."""
        t = self.triton_type.removeprefix("TYPE_")
        return {"STRING": "BYTES"}.get(t, t)


TEXT_INPUT = Tensor("text_input", "TYPE_STRING")
INPUT_IDS = Tensor("input_ids", "TYPE_INT64", (-1,))  # takes precedence over text_input
MAX_TOKENS = Tensor("max_tokens", "TYPE_INT32")
TEMPERATURE = Tensor("temperature", "TYPE_FP32")
TOP_P = Tensor("top_p", "TYPE_FP32")
STREAM = Tensor("stream", "TYPE_BOOL")
STOP = Tensor("stop", "TYPE_STRING", (-1,))
SEED = Tensor("seed", "TYPE_INT64")
IGNORE_EOS = Tensor("ignore_eos", "TYPE_BOOL")
BEAM_WIDTH = Tensor("beam_width", "TYPE_INT32")
SAMPLING = Tensor("sampling", "TYPE_STRING")  # JSON object: the SamplingParams fields without a tensor

INPUTS: tuple[Tensor, ...] = (
    TEXT_INPUT,
    INPUT_IDS,
    MAX_TOKENS,
    TEMPERATURE,
    TOP_P,
    STREAM,
    STOP,
    SEED,
    IGNORE_EOS,
    BEAM_WIDTH,
)
INPUTS += (SAMPLING,)

TEXT_OUTPUT = Tensor("text_output", "TYPE_STRING", (-1,), optional=False)
# Sent with every response; empty until the last one, so a client knows the end without Triton's
# empty-final-response flag.
FINISH_REASON = Tensor("finish_reason", "TYPE_STRING", (-1,), optional=False)
COMPLETION_TOKENS = Tensor("completion_tokens", "TYPE_INT32", (-1,), optional=False)
# JSON list of [token_id, logprob, [[id, logprob], ...]] for the response's tokens; "" when not asked.
LOGPROBS = Tensor("logprobs", "TYPE_STRING", (-1,), optional=False)
OUTPUTS = (TEXT_OUTPUT, FINISH_REASON, COMPLETION_TOKENS, LOGPROBS)

DEFAULT_MAX_TOKENS = 128  # when a Triton-native client sends none

# SamplingParams fields that have a tensor of their own (SAMPLING carries the rest).
_TENSOR_FIELDS = {"max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos", "beams"}
_SAMPLING_FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams) if f.name not in _TENSOR_FIELDS}


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def sampling_json(params: SamplingParams) -> str:
    """The SAMPLING tensor's value: the fields off their defaults, "" when none are."""
    extras: dict[str, Any] = {}
    for name, f in _SAMPLING_FIELDS.items():
        value = getattr(params, name)
        if value != _default(f):
            extras[name] = dataclasses.asdict(value) if isinstance(value, Guide) else value
    return json.dumps(extras) if extras else ""


def with_sampling(params: SamplingParams, text: str) -> SamplingParams:
    """`params` with the SAMPLING tensor's fields set (ValueError naming a field it cannot read)."""
    if not text:
        return params
    extras = json.loads(text)
    if not isinstance(extras, dict):
        raise ValueError(f"{SAMPLING.name} must be a JSON object")
    changes: dict[str, Any] = {}
    for name, value in extras.items():
        if name not in _SAMPLING_FIELDS:
            raise ValueError(f"{SAMPLING.name}: unknown field {name!r}")
        try:
            if name == "logit_bias":
                value = {int(k): float(v) for k, v in value.items()}
            elif name == "stop_token_ids":
                value = tuple(int(t) for t in value)
            elif name == "guide":
                value = Guide(**value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{SAMPLING.name}.{name}: {exc}") from None
        changes[name] = value
    return dataclasses.replace(params, **changes)


def logprobs_json(logprobs: list[TokenLogprob] | None) -> str:
    if logprobs is None:
        return ""
    return json.dumps([[lp.token_id, lp.logprob, lp.top] for lp in logprobs])


def logprobs_from(text: str) -> list[TokenLogprob] | None:
    if not text:
        return None
    return [TokenLogprob(t, lp, [(i, v) for i, v in top]) for t, lp, top in json.loads(text)]
