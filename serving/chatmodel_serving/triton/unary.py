"""The unary companion model, `<name>-unary`: Triton's plain infer RPCs (tritonclient.http / .grpc
`infer`) refuse decoupled models, so this small non-decoupled python model forwards each request to the
decoupled one through BLS and returns its single, complete answer. It loads no weights (no torch here):
the engine runs once, in the decoupled model."""

from __future__ import annotations

import json
from typing import Any

import triton_python_backend_utils as pb_utils

from . import contract


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.target = config["parameters"]["target_model"]["string_value"]
        self.outputs = [t.name for t in contract.OUTPUTS]

    def _forward(self, request: Any) -> Any:
        # Without `stream` the decoupled model answers once, with the whole text and the final flag.
        inputs = [t for t in request.inputs() if t.name() != contract.STREAM.name]
        bls = pb_utils.InferenceRequest(
            model_name=self.target, inputs=inputs, requested_output_names=self.outputs
        )
        for response in bls.exec(decoupled=True):
            if response.has_error():
                return pb_utils.InferenceResponse(error=response.error())
            if response.output_tensors():
                return pb_utils.InferenceResponse(output_tensors=response.output_tensors())
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.target} sent no answer"))

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._forward(r) for r in requests]
