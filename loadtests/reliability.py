"""`make reliability`: the README's reliability figures, measured against a real server process.

Serves the fuzz campaign's tiny models (`loadtests.fuzz.models`) on 127.0.0.1 and tries, in turn:
a 33-byte gRPC request declaring 99,000 empty strings; 20,000 empty strings over REST; 8 concurrent
~28 MB JSON bodies while the gRPC health check is probed every 0.1 s with the 3 s timeout of the
Kubernetes readiness probe; 200 slowloris connections while normal requests run; a flood of idle
connections past `--rest_max_connections`. Then, on a second server with a deliberately slow model (~10 ms per
call) and a small batch queue, offered load above capacity: 64 gRPC callers for 5 s, the refusals'
and the admitted calls' latencies, and calls once the load is gone. Prints one line per figure
(time, status, RSS of the server process). Bounded: about a minute and a half, loopback only,
every socket closed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtests.fuzz.models import write_repository
from serving.launcher import ServerProcess, launch
from serving.proto import apis_pb2, apis_pb2_grpc, tensor_pb2


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    return -1


def _post(url: str, body: bytes, timeout: float = 120) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()).get("error", "")


class Probe:
    """The gRPC health check every `interval` seconds, as a readiness probe would: worst latency
    and timeouts."""

    def __init__(self, channel: grpc.Channel, interval: float = 0.1, timeout: float = 3.0) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self._interval, self._timeout = interval, timeout
        self._stop = threading.Event()
        self.worst = 0.0
        self.timeouts = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self._stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout)
            except grpc.RpcError:
                self.timeouts += 1
            self.worst = max(self.worst, time.perf_counter() - started)
            self._stop.wait(self._interval)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(server: ServerProcess, connections: int) -> None:
    pid = server.process.pid

    def rss() -> str:
        return f"RSS {_status_kb(pid, 'VmRSS') // 1024} MB"

    print(f"server up: {rss()}")
    predict_url = f"{server.rest_url}/v1/models/digits:predict"
    one_image = json.dumps({"instances": np.zeros((1, 28, 28, 1)).tolist()}).encode()
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = apis_pb2_grpc.PredictionServiceStub(channel)

        tensor = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_STRING)
        tensor.tensor_shape.dim.add(size=99_000)
        request = apis_pb2.PredictRequest()
        request.model_spec.name = "sentiment"
        request.inputs["text"].CopyFrom(tensor)
        started = time.perf_counter()
        try:
            stub.Predict(request, timeout=60)
            outcome = "OK"
        except grpc.RpcError as error:
            outcome = error.code().name
        print(
            f"{request.ByteSize()}-byte request declaring 99,000 empty strings: {outcome} in "
            f"{(time.perf_counter() - started) * 1000:.0f} ms; {rss()}"
        )

        started = time.perf_counter()
        status, _ = _post(f"{server.rest_url}/v1/models/sentiment:predict", json.dumps({"instances": [""] * 20_000}).encode())
        print(f'{{"instances": [""] * 20000}}: {status} in {(time.perf_counter() - started) * 1000:.0f} ms; {rss()}')

        big = json.dumps({"instances": np.random.default_rng(0).uniform(0, 255, (1700, 28, 28, 1)).tolist()}).encode()
        started = time.perf_counter()
        with Probe(channel) as probe, concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(lambda _: _post(predict_url, big)[0], range(8)))
        print(
            f"8 concurrent {len(big) / 1e6:.0f} MB bodies: statuses {statuses} in {time.perf_counter() - started:.1f} s; "
            f"health worst {probe.worst * 1000:.0f} ms, {probe.timeouts} timeouts; peak RSS "
            f"{_status_kb(pid, 'VmHWM') // 1024} MB, {rss()} after"
        )

    slow = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=60)
        sock.sendall(b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < 3:
        begun = time.perf_counter()
        _post(predict_url, one_image)
        latencies.append(time.perf_counter() - begun)
        for sock in slow[:20]:  # a byte now and then
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
    print(
        f"200 slowloris connections: {len(latencies)} normal requests in 3 s meanwhile, p99 "
        f"{np.percentile(latencies, 99) * 1000:.1f} ms"
    )
    started = time.perf_counter()
    closed = 0
    for sock in slow:
        try:
            closed += sock.recv(100) == b""
        except OSError:
            closed += 1
        sock.close()
    print(f"  closed by the server: {closed}/200, the last {time.perf_counter() - started:.1f} s after the 3 s of traffic")

    held: list[socket.socket] = []
    try:
        for _ in range(connections):
            held.append(socket.create_connection(("127.0.0.1", server.rest_port), timeout=5))
        refused = 0
        for sock in held[-100:]:
            with contextlib.suppress(OSError):
                refused += sock.recv(20).startswith(b"HTTP/1.1 503")
        print(f"{connections} idle connections: of the last 100, {refused} answered 503 and closed")
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            status, _ = _post(predict_url, one_image, timeout=10)
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
    print(f"a normal request afterwards: {status}; {rss()}")


def write_slow_model(base_path: Path) -> None:
    """models/slow/1: image float32 [N,28,28,1] -> probabilities [N,10] through seven large MatMuls
    (random weights: ~10 ms per one-row call on one core), with its manifest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from serving.manifest import (
        Manifest,
        OnnxBinding,
        SignatureManifest,
        TensorSpec,
        sha256_file,
        write_manifest,
    )

    rng = np.random.default_rng(0)
    sizes = [784, 2048, 2048, 2048, 2048, 2048, 2048, 10]
    initializers = [numpy_helper.from_array(np.array([-1, 784], np.int64), "flat_shape")]
    nodes = [helper.make_node("Reshape", ["image", "flat_shape"], ["layer_0"])]
    for index, (rows, columns) in enumerate(itertools.pairwise(sizes)):
        weights = (rng.normal(size=(rows, columns)) / np.sqrt(rows * 255)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weights, f"w_{index}"))
        nodes.append(helper.make_node("MatMul", [f"layer_{index}", f"w_{index}"], [f"layer_{index + 1}"]))
    nodes.append(helper.make_node("Softmax", [f"layer_{len(sizes) - 1}"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir = base_path / "1"
    version_dir.mkdir(parents=True)
    onnx.save(model, version_dir / "model.onnx")
    signature = SignatureManifest(
        method="tensorflow/serving/predict",
        inputs={"image": TensorSpec("float32", (-1, 28, 28, 1))},
        outputs={"probabilities": TensorSpec("float32", (-1, 10))},
        onnx=OnnxBinding("model.onnx", {"image": "image"}, {"probabilities": "probabilities"}),
    )
    write_manifest(
        version_dir,
        Manifest(
            name="slow",
            version=1,
            task="image_classification",
            labels=tuple(str(i) for i in range(10)),
            signatures={"serving_default": signature},
            files={"model.onnx": sha256_file(version_dir / "model.onnx")},
        ),
    )


def overload(server: ServerProcess, callers: int = 64, seconds: float = 5.0) -> None:
    """Offered load above capacity, then none: refusals must be fast, admitted calls bounded."""
    import asyncio

    from serving import codec

    request = apis_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["image"].CopyFrom(codec.from_numpy(np.zeros((1, 28, 28, 1), np.float32)))
    outcomes: dict[str, list[float]] = {}

    async def caller(stub: apis_pb2_grpc.PredictionServiceStub, until: float) -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                await stub.Predict(request, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            outcomes.setdefault(code, []).append(time.perf_counter() - started)
            if code != "OK":
                await asyncio.sleep(0.005)  # a refused caller backs off a little, as clients do

    async def drive() -> list[float]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = apis_pb2_grpc.PredictionServiceStub(channel)
            until = time.perf_counter() + seconds
            await asyncio.gather(*(caller(stub, until) for _ in range(callers)))
            after = []
            for _ in range(20):  # the load is gone: every call must pass, at the engine's pace
                started = time.perf_counter()
                await stub.Predict(request, timeout=30)
                after.append(time.perf_counter() - started)
            return after

    after = asyncio.run(drive())
    parts = []
    for code, latencies in sorted(outcomes.items()):
        p50, p99 = (np.percentile(latencies, q) * 1000 for q in (50, 99))
        parts.append(f"{code} {len(latencies)} (p50 {p50:.1f} ms, p99 {p99:.1f} ms)")
    print(f"overload, {callers} gRPC callers for {seconds:.0f} s on a ~10 ms model: " + ", ".join(parts))
    print(f"  then 20 calls one at a time: all OK, p99 {np.percentile(after, 99) * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2300, help="idle connections opened in the flood")
    parser.add_argument("--server-args", default="", help="extra server flags, space-separated")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reliability-") as folder:
        config = write_repository(Path(folder) / "models")
        server = launch(["--model_config_file", str(config), *args.server_args.split()], Path(folder) / "server.log")
        try:
            run(server, args.connections)
        finally:
            code = server.stop()
        log = server.log()
        print(f"server exit status {code}; {log.count('Traceback')} tracebacks in {len(log)} bytes of log")
        write_slow_model(Path(folder) / "slow")
        (Path(folder) / "batching.config").write_text(
            "max_batch_size { value: 8 } max_enqueued_batches { value: 2 } num_batch_threads { value: 1 }"
        )
        slow = launch(
            [
                "--model_name",
                "slow",
                "--model_base_path",
                str(Path(folder) / "slow"),
                "--enable_batching",
                "--batching_parameters_file",
                str(Path(folder) / "batching.config"),
                # One engine thread: on a small machine the other core answers refusals and health.
                "--tensorflow_intra_op_parallelism",
                "1",
            ],
            Path(folder) / "slow.log",
        )
        try:
            overload(slow)
        finally:
            slow_code = slow.stop()
        slow_log = slow.log()
        print(f"slow server exit status {slow_code}; {slow_log.count('Traceback')} tracebacks")
        ok = code == 0 == slow_code and "Traceback" not in log + slow_log
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
