"""Tiny ONNX models written with onnx.helper, and a real server process to call.

The models need no TensorFlow: a softmax regression on 28x28x1 images stands in for digits, so the
server tests run in seconds. Pipeline tests with real Keras-exported models live in tests/export.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving.launcher import REPO_ROOT, ServerProcess, launch, write_model_config
from serving.manifest import Manifest, OnnxBinding, SignatureManifest, TensorSpec, sha256_file, write_manifest

__all__ = [
    "REPO_ROOT",
    "ServerProcess",
    "reference_probabilities",
    "slow_softmax_regression",
    "softmax_regression",
    "start_server",
    "write_config",
    "write_tiny_version",
]


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


def start_server(
    args: Sequence[str], log_path: Path, timeout: float = 60, wait_serving: bool = True
) -> ServerProcess:
    """The real server as a child process on free loopback ports (see `serving.launcher`)."""
    return launch(args, log_path, timeout=timeout, wait_serving=wait_serving)


def write_config(path: Path, models: dict[str, Path], extra: str = "") -> Path:
    return write_model_config(path, models, extra)
