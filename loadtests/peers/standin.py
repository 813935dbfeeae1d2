"""A digits-shaped convnet with random weights, for peer runs on a clone with no published model.

Same signature as the published `digits` (`image` float32 [N,28,28,1], 0..255 -> `probabilities`
float32 [N,10]) and about the same work per image as the book's model, so the serving overhead it
shows is realistic; its answers mean nothing, and the bench says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving.manifest import Manifest, OnnxBinding, SignatureManifest, TensorSpec, sha256_file, write_manifest


def digits_convnet(seed: int = 0) -> onnx.ModelProto:
    """image [N,28,28,1] -> /255 -> Conv 32 3x3 + ReLU -> MaxPool 2 -> Conv 64 3x3 + ReLU -> MaxPool 2
    -> Flatten -> Dense 10 -> softmax; He-initialised random weights."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.normal(size=shape) * np.sqrt(2 / fan_in)).astype(np.float32)

    initializers = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
        numpy_helper.from_array(he(32, 1, 3, 3), "conv1_w"),
        numpy_helper.from_array(np.zeros(32, np.float32), "conv1_b"),
        numpy_helper.from_array(he(64, 32, 3, 3), "conv2_w"),
        numpy_helper.from_array(np.zeros(64, np.float32), "conv2_b"),
        numpy_helper.from_array(he(10, 1600).T.copy(), "dense_w"),  # [1600, 10]
        numpy_helper.from_array(np.zeros(10, np.float32), "dense_b"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),  # [N,1,28,28]
        helper.make_node("Mul", ["nchw", "scale"], ["scaled"]),
        helper.make_node(
            "Conv", ["scaled", "conv1_w", "conv1_b"], ["conv1"], kernel_shape=[3, 3]
        ),  # [N,32,26,26]
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node(
            "MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]
        ),  # [N,32,13,13]
        helper.make_node(
            "Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"], kernel_shape=[3, 3]
        ),  # [N,64,11,11]
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),  # [N,64,5,5]
        helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),  # [N,1600]
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),  # [N,10]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return classifier("digits_standin", nodes, initializers, (28, 28, 1), 10)


def classifier(
    name: str, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], image: tuple[int, ...], classes: int
) -> onnx.ModelProto:
    """The checked model: `image` float32 [N, *image] -> `probabilities` float32 [N, classes]."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *image])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_standin(base_path: Path, version: int = 1, seed: int = 0) -> Path:
    """Publish `<base_path>/<version>/` (model.onnx + manifest) as export would; returns the folder."""
    version_dir = base_path / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(digits_convnet(seed), version_dir / "model.onnx")
    image, probabilities = TensorSpec("float32", (-1, 28, 28, 1)), TensorSpec("float32", (-1, 10))
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
        producer={"tool": "loadtests.peers.standin", "note": "stand-in: random weights, not trained"},
        files={"model.onnx": sha256_file(version_dir / "model.onnx")},
    )
    write_manifest(version_dir, manifest)
    return version_dir
