"""Tiny ONNX models written with onnx.helper, and a real server process to call.

The models need no TensorFlow: a softmax regression on 28x28x1 images stands in for digits, so the
server tests run in seconds. Pipeline tests with real Keras-exported models live in tests/export.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

from serving.manifest import Manifest, OnnxBinding, SignatureManifest, TensorSpec, sha256_file, write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]


def softmax_regression(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """image float32 [N,28,28,1] (0..255) -> probabilities float32 [N,10] = softmax(x/255 @ W + b)."""
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),  # [N, 784]
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["logits_nobias"]),  # [N, 10]
        helper.make_node("Add", ["logits_nobias", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, 784], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
        numpy_helper.from_array(weights.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def slow_softmax_regression(
    weights: np.ndarray, bias: np.ndarray, width: int = 2048, layers: int = 8
) -> onnx.ModelProto:
    """The same answers as `softmax_regression`, after `layers` large MatMuls whose result is
    multiplied by zero: tens of milliseconds per call, for overload tests."""
    model = softmax_regression(weights, bias)
    graph = model.graph
    rng = np.random.default_rng(0)
    graph.initializer.append(
        numpy_helper.from_array(rng.normal(size=(784, width)).astype(np.float32), "slow_in")
    )
    graph.initializer.append(
        numpy_helper.from_array(rng.normal(size=(width, width)).astype(np.float32) / width, "slow_w")
    )
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 10), np.float32), "slow_zero"))
    nodes = [helper.make_node("MatMul", ["flat", "slow_in"], ["slow_0"])]
    for index in range(layers):
        nodes.append(helper.make_node("MatMul", [f"slow_{index}", "slow_w"], [f"slow_{index + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"slow_{layers}"], ["slow_sum"], keepdims=1))  # [1, 1]
    nodes.append(helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]))  # [1, 10] zeros
    nodes.append(helper.make_node("Add", ["logits_nobias", "slow_nothing"], ["logits_slow"]))
    body = [n for n in graph.node]
    for node in body:
        if node.op_type == "Add" and node.input[0] == "logits_nobias":
            node.input[0] = "logits_slow"
    del graph.node[:]
    graph.node.extend(body[:3] + nodes + body[3:])
    onnx.checker.check_model(model)
    return model


def write_tiny_version(base_path: Path, version: int, seed: int = 0, slow: bool = False) -> Path:
    """Publish models/<name>/<version>/ with model.onnx and a manifest, as export does."""
    rng = np.random.default_rng(seed)
    version_dir = base_path / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    build = slow_softmax_regression if slow else softmax_regression
    onnx.save(build(rng.normal(size=(784, 10)), rng.normal(size=10)), version_dir / "model.onnx")
    image = TensorSpec("float32", (-1, 28, 28, 1))
    probabilities = TensorSpec("float32", (-1, 10))
    manifest = Manifest(
        name=base_path.name,
        version=version,
        task="image_classification",
        labels=tuple(str(i) for i in range(10)),
        signatures={
            "serving_default": SignatureManifest(
                method="tensorflow/serving/predict",
                inputs={"image": image},
                outputs={"probabilities": probabilities},
                onnx=OnnxBinding("model.onnx", {"image": "image"}, {"probabilities": "probabilities"}),
            )
        },
        files={"model.onnx": sha256_file(version_dir / "model.onnx")},
    )
    write_manifest(version_dir, manifest)
    return version_dir


def reference_probabilities(version_dir: Path, images: np.ndarray) -> np.ndarray:
    """What the tiny model must answer, computed with numpy from the ONNX initializers."""
    model = onnx.load(version_dir / "model.onnx")
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    logits = images.reshape(len(images), -1) / 255 @ weights["W"] + weights["b"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    grpc_port: int
    rest_port: int
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_server(
    args: Sequence[str], log_path: Path, timeout: float = 60, wait_serving: bool = True
) -> ServerProcess:
    """Run `python -m serving ARGS --port 0 --rest_api_port 0` and wait until health says SERVING."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    handle = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--rest_api_port",
            "0",
            *args,
        ],
        cwd=REPO_ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + timeout
    grpc_port = rest_port = None
    while time.monotonic() < deadline:
        text = log_path.read_text()
        grpc_match = re.search(r"gRPC listening on [^:]+:(\d+)", text)
        rest_match = re.search(r"REST listening on [^:]+:(\d+)", text)
        if grpc_match and rest_match:
            grpc_port, rest_port = int(grpc_match[1]), int(rest_match[1])
            break
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError(f"server did not start in {timeout}s:\n{log_path.read_text()}")
    server = ServerProcess(process, grpc_port, rest_port, log_path)
    if wait_serving:
        wait_for_health(server.grpc_target, deadline)
    return server


def wait_for_health(target: str, deadline: float, want: int = health_pb2.HealthCheckResponse.SERVING) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == want:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"health of {target} never became {want}")


def write_config(path: Path, models: dict[str, Path], extra: str = "") -> Path:
    entries = "".join(
        f"  config {{\n    name: '{name}'\n    base_path: '{base}'\n    model_platform: 'tensorflow'\n{extra}  }}\n"
        for name, base in models.items()
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


def json_dumps(value: object) -> bytes:
    return json.dumps(value).encode()
