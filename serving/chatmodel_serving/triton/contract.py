"""The tensors exchanged with the Triton model: the one place their names and types live.

Inputs follow Triton's LLM convention (the vLLM and TensorRT-LLM backends use the same names), so
`/v2/models/<name>/generate` works with plain JSON. The extras after `stop` let the OpenAI front send
exactly what the PyTorch runtime would run: token ids (the chat template applied once, in the front),
a seed, ignore_eos and beam search.
"""

from __future__ import annotations

from dataclasses import dataclass


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

INPUTS = (TEXT_INPUT, INPUT_IDS, MAX_TOKENS, TEMPERATURE, TOP_P, STREAM, STOP, SEED, IGNORE_EOS, BEAM_WIDTH)

TEXT_OUTPUT = Tensor("text_output", "TYPE_STRING", (-1,), optional=False)
# Sent with every response; empty until the last one, so a client knows the end without Triton's
# empty-final-response flag.
FINISH_REASON = Tensor("finish_reason", "TYPE_STRING", (-1,), optional=False)
COMPLETION_TOKENS = Tensor("completion_tokens", "TYPE_INT32", (-1,), optional=False)
OUTPUTS = (TEXT_OUTPUT, FINISH_REASON, COMPLETION_TOKENS)

DEFAULT_MAX_TOKENS = 128  # when a Triton-native client sends none
