"""Small scripted servers on 127.0.0.1 for the client's retry and auth tests.

`ScriptedGrpc` implements the project's PredictionService and ModelService (the generated stubs)
on a real `grpc.server`; `ScriptedHttp` answers TF Serving's REST paths from an aiohttp app on its
own event loop thread; `resetting_server` accepts connections and resets them. Each server plays a
script of failures first (one per request, in order) and then answers like a one-model server
(`digits`: image float32 [N,28,28,1] -> probabilities float32 [N,10]). Every request is recorded
with the headers or metadata it carried, so tests can count attempts and see the token.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format

from serving import codec
from serving.proto import apis_pb2, apis_pb2_grpc, meta_graph_pb2, tensor_pb2

MODEL = "digits"
CLASSES = 10


def signature_defs() -> apis_pb2.SignatureDefMap:
    """digits' serving_default: image float32 [-1,28,28,1] -> probabilities float32 [-1,10]."""
    defs = apis_pb2.SignatureDefMap()
    signature = defs.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    for tensors, name, shape in (
        (signature.inputs, "image", (-1, 28, 28, 1)),
        (signature.outputs, "probabilities", (-1, CLASSES)),
    ):
        info: meta_graph_pb2.TensorInfo = tensors[name]
        info.name = name
        info.dtype = tensor_pb2.DT_FLOAT
        for size in shape:
            info.tensor_shape.dim.add(size=size)
    return defs


def probabilities(rows: int) -> np.ndarray:
    return np.full((rows, CLASSES), 1.0 / CLASSES, dtype=np.float32)  # [N, 10]


# -- gRPC ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Abort:
    """One scripted gRPC failure: the status, and trailing metadata such as grpc-retry-pushback-ms."""

    code: grpc.StatusCode
    details: str = "scripted failure"
    trailing: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0  # answered after this long (to spend the caller's deadline)


@dataclass(frozen=True)
class SeenCall:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None  # the caller's deadline as the server saw it, seconds


class ScriptedGrpc(apis_pb2_grpc.PredictionServiceServicer, apis_pb2_grpc.ModelServiceServicer):
    def __init__(self, script: list[Abort] | None = None, *, repeat: Abort | None = None) -> None:
        """`script`: failures for the first calls; `repeat`: the failure of every call after them."""
        self.script = list(script or [])
        self.repeat = repeat
        self.calls: list[SeenCall] = []
        self._lock = threading.Lock()

    def _play(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(
                SeenCall(
                    method,
                    {key: str(value) for key, value in context.invocation_metadata()},
                    context.time_remaining(),
                )
            )
            failure = self.script.pop(0) if self.script else self.repeat
        if failure is None:
            return
        if failure.delay_s:
            time.sleep(failure.delay_s)
        if failure.trailing:
            context.set_trailing_metadata(failure.trailing)
        context.abort(failure.code, failure.details)

    def Predict(self, request: apis_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        self._play("Predict", context)
        rows = codec.to_numpy(request.inputs["image"]).shape[0] if "image" in request.inputs else 1
        response = apis_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.outputs["probabilities"].CopyFrom(codec.from_numpy(probabilities(rows)))
        return response

    def GetModelMetadata(
        self, request: apis_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> Any:
        self._play("GetModelMetadata", context)
        response = apis_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 1
        response.metadata["signature_def"].Pack(signature_defs())
        return response

    def GetModelStatus(self, request: apis_pb2.GetModelStatusRequest, context: grpc.ServicerContext) -> Any:
        self._play("GetModelStatus", context)
        response = apis_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=apis_pb2.ModelVersionStatus.State.AVAILABLE)
        return response


@contextmanager
def grpc_server(servicer: ScriptedGrpc) -> Iterator[str]:
    """Serve `servicer` on a free loopback port; yields the target `127.0.0.1:<port>`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    apis_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    apis_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One scripted HTTP answer (JSON body), e.g. 503 with Retry-After."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = field(default_factory=lambda: {"error": "scripted failure"})
    delay_s: float = 0.0


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


class ScriptedHttp:
    def __init__(self, script: list[Answer] | None = None, *, repeat: Answer | None = None) -> None:
        self.script = list(script or [])
        self.repeat = repeat
        self.requests: list[SeenRequest] = []
        self.url = ""
        self._lock = threading.Lock()

    def count(self, method: str) -> int:
        return sum(1 for r in self.requests if r.method == method)

    async def handle(self, request: web.Request) -> web.Response:
        with self._lock:
            self.requests.append(SeenRequest(request.method, request.path, dict(request.headers)))
            scripted = self.script.pop(0) if self.script else self.repeat
        if scripted is not None:
            if scripted.delay_s:
                await asyncio.sleep(scripted.delay_s)
            return web.json_response(scripted.body, status=scripted.status, headers=scripted.headers)
        path = request.path
        if request.method == "POST" and path == f"/v1/models/{MODEL}:predict":
            body = await request.json()
            rows = len(body["inputs"]["image"]) if isinstance(body.get("inputs"), dict) else 1
            return web.json_response({"outputs": probabilities(rows).tolist()})
        if request.method == "GET" and path == f"/v1/models/{MODEL}/metadata":
            return web.json_response(
                {
                    "model_spec": {"name": MODEL, "version": "1"},
                    "metadata": {"signature_def": json_format.MessageToDict(signature_defs())},
                }
            )
        if request.method == "GET" and path == f"/v1/models/{MODEL}":
            return web.json_response(
                {
                    "model_version_status": [
                        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}
                    ]
                }
            )
        return web.json_response({"error": f"no route {request.method} {path}"}, status=404)


@contextmanager
def http_server(scripted: ScriptedHttp) -> Iterator[str]:
    """Serve `scripted` with aiohttp on a free loopback port, on a loop thread; yields its base URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scripted-http", daemon=True)
    thread.start()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app, access_log=None)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    try:
        asyncio.run_coroutine_threadsafe(runner.setup(), loop).result(10)
        site = web.SockSite(runner, listener)
        asyncio.run_coroutine_threadsafe(site.start(), loop).result(10)
        scripted.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        yield scripted.url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        listener.close()


@contextmanager
def resetting_server() -> Iterator[tuple[str, list[int]]]:
    """Accepts each connection and resets it (RST) at once; yields the URL and a list of accept counts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    thread = threading.Thread(target=serve, name="resetting-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()
