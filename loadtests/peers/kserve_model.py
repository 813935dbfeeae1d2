"""The KServe peer: the digits ONNX file behind KServe 0.21's `kserve.ModelServer`, the way a KServe
user writes a custom predictor (a `kserve.Model` with `load` and `predict`).

Run by the KServe venv's Python (`.bench/kserve-venv`, made by `python -m loadtests.bench --peers`),
never the project's: it imports only kserve, numpy and onnxruntime.

    .bench/kserve-venv/bin/python loadtests/peers/kserve_model.py --model_file model.onnx \
        --model_name digits --grpc_port 8081 --http_port 8080 --enable_latency_logging false

gRPC requests arrive as Open Inference Protocol `inference.GRPCInferenceService/ModelInfer`; KServe
turns them into an `InferRequest` for `predict` and the returned `InferResponse` back into a
`ModelInferResponse` (binary `raw_output_contents` when the request came with raw inputs).
ONNX Runtime runs on one intra-op thread, as KServe predictors usually do (one per replica).
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class OnnxPredictor(Model):
    """`image` FP32 [N,28,28,1] -> `probabilities` FP32 [N,10] with one ORT session."""

    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model_file = model_file
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model_file, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        image = payload.inputs[0].as_numpy().astype(np.float32, copy=False)  # [N,28,28,1]
        (probabilities,) = self.session.run(None, {self.input_name: image})  # [N,10]
        output = InferOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32")
        output.set_data_from_numpy(probabilities, binary_data=True)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=payload.use_binary_outputs,
        )


if __name__ == "__main__":
    # kserve.model_server parses the server flags (--grpc_port, --http_port, --model_name, ...) at import
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_file", required=True, help="the ONNX file to serve")
    args = parser.parse_args()
    ModelServer().start([OnnxPredictor(args.model_name, args.model_file)])
