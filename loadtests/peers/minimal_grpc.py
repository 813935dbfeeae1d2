"""The floor of the peer comparison: the least a Python gRPC server can do to answer TF Serving's
`Predict` from ONNX Runtime.

One grpc.aio server, one ORT session on one intra-op thread, `np.frombuffer` on `tensor_content` in,
`tensor_content` out, ORT run right on the event loop (on 2 cores, handing each run to an engine
thread cost more CPU per request than the overlap won back). No model repository, versions,
batching, metrics, validation beyond what keeps it from crashing: whatever this server costs per
request, any real Python server costs at least as much.

    python -m loadtests.peers.minimal_grpc --model models/digits/1/model.onnx --port 0

prints `minimal gRPC listening on 127.0.0.1:PORT` once it serves; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import grpc
import numpy as np
import onnxruntime as ort

from serving.proto import apis_pb2, apis_pb2_grpc, tensor_pb2


class MinimalPredict(apis_pb2_grpc.PredictionServiceServicer):
    """`Predict` only: `image` float32 [N,28,28,1] -> `probabilities` float32 [N,10]."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    async def Predict(
        self, request: apis_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> apis_pb2.PredictResponse:
        if "image" not in request.inputs:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input 'image' is missing")
        tensor = request.inputs["image"]
        shape = [dim.size for dim in tensor.tensor_shape.dim]
        if tensor.dtype != tensor_pb2.DT_FLOAT or len(tensor.tensor_content) != 4 * int(np.prod(shape)):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "'image' must be DT_FLOAT in tensor_content"
            )
        image = np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)  # [N,28,28,1]
        (probabilities,) = self.session.run(None, {self.input_name: image})  # [N,10]
        response = apis_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        output = response.outputs["probabilities"]
        output.dtype = tensor_pb2.DT_FLOAT
        for size in probabilities.shape:
            output.tensor_shape.dim.add(size=size)
        output.tensor_content = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
        return response


def create_server(model: str, address: str, threads: int = 1) -> tuple[grpc.aio.Server, int]:
    """The server (not started) and the port it bound (`address` may end in :0)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    )
    apis_pb2_grpc.add_PredictionServiceServicer_to_server(MinimalPredict(session), server)
    port = server.add_insecure_port(address)
    return server, port


async def serve(model: str, host: str, port: int, threads: int) -> None:
    server, bound = create_server(model, f"{host}:{port}", threads)
    await server.start()
    print(f"minimal gRPC listening on {host}:{bound}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(grace=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.peers.minimal_grpc", description=__doc__)
    parser.add_argument("--model", required=True, help="an ONNX file: image [N,28,28,1] -> [N,10]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.model, args.host, args.port, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
