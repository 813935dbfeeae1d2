"""Tiny ONNX stand-ins for `catdog` and `sentiment`, with the contract's signatures, built in milliseconds.

`tests/serving/fixtures.py` has the digits stand-in (`write_tiny_version`); these two add what the
clients must handle besides a float image: `image_bytes` decoded by the server, an `explain`
signature with a `heatmap`, and `text` tokenized by the server. `activations` (optional for catdog,
`add_tiny_activations` for a digits version of `write_tiny_version`) adds the contract's
`activations` signature: two feature maps, `conv1` and `pool1`, computed as `tiny_activations` says.
No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serving.manifest import (
    Manifest,
    OnnxBinding,
    Preprocess,
    SignatureManifest,
    TensorSpec,
    read_manifest,
    sha256_file,
    write_manifest,
)
from serving.text import write_vocabulary

CATDOG_SIZE = 16  # pixels per side the tiny catdog takes
HEATMAP_SIZE = 4
SENTIMENT_LENGTH = 8
SENTIMENT_VOCABULARY = ("", "[UNK]", "good", "great", "fun", "bad", "dull", "awful")
ACTIVATION_CHANNELS = 5  # channels of the tiny feature maps
ACTIVATION_LAYERS = ("conv1", "pool1")


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def catdog_graphs(weights: np.ndarray) -> tuple[onnx.GraphProto, onnx.GraphProto]:
    """image float32 [N,16,16,3] -> probabilities [N,2]; the explain graph adds heatmap [N,4,4] in 0..1.

    probabilities = softmax(mean RGB of the image / 255 @ W) (W [3, 2]): a red photo reads as one
    class, a blue one as the other. heatmap = 4x4 average brightness / 255.
    """
    size, cells = CATDOG_SIZE, HEATMAP_SIZE
    common = [
        helper.make_node("ReduceMean", ["image"], ["colour"], axes=[1, 2], keepdims=0),  # [N, 3]
        helper.make_node("Mul", ["colour", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["logits"]),  # [N, 2]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    heat = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),  # [N, 3, 16, 16]
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[size // cells] * 2, strides=[size // cells] * 2
        ),  # [N, 3, 4, 4]
        helper.make_node("ReduceMean", ["pooled"], ["brightness"], axes=[1], keepdims=0),  # [N, 4, 4]
        helper.make_node("Mul", ["brightness", "scale"], ["heatmap"]),  # [N, 4, 4] in 0..1
    ]
    initializers = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
        numpy_helper.from_array(weights.astype(np.float32), "W"),
    ]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    heatmap = helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", cells, cells])
    model = helper.make_graph(common, "tiny_catdog", [image], [probabilities], initializers)
    explain = helper.make_graph(
        common + heat, "tiny_catdog_explain", [image], [probabilities, heatmap], initializers
    )
    return model, explain


def activation_weights(channels: int) -> np.ndarray:
    """The 1x1 convolution of the tiny feature maps: float32 [channels, ACTIVATION_CHANNELS]."""
    return np.random.default_rng(channels).normal(size=(channels, ACTIVATION_CHANNELS)).astype(np.float32)


def tiny_activations(images: np.ndarray) -> dict[str, np.ndarray]:
    """What the tiny `activations` graph answers for images [N,H,W,C] (0..255), in numpy:
    conv1 = image / 255 @ W (a 1x1 convolution) [N,H,W,K]; pool1 = its 2x2 max pooling [N,H/2,W/2,K]."""
    conv1 = (images.astype(np.float32) / 255) @ activation_weights(images.shape[-1])  # [N,H,W,K]
    n, height, width, k = conv1.shape
    pool1 = conv1.reshape(n, height // 2, 2, width // 2, 2, k).max(axis=(2, 4))  # [N,H/2,W/2,K]
    return {"conv1": conv1, "pool1": pool1}


def activations_graph(height: int, width: int, channels: int) -> onnx.GraphProto:
    """image float32 [N,H,W,C] -> conv1 [N,H,W,K], pool1 [N,H/2,W/2,K] (see `tiny_activations`)."""
    kernel = activation_weights(channels).T[:, :, None, None]  # [K,C,1,1], ONNX's Conv layout
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),  # [N,C,H,W]
        helper.make_node("Conv", ["nchw", "kernel"], ["conv1_nchw"], kernel_shape=[1, 1]),  # [N,K,H,W]
        helper.make_node("MaxPool", ["conv1_nchw"], ["pool1_nchw"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["conv1_nchw"], ["conv1"], perm=[0, 2, 3, 1]),  # [N,H,W,K]
        helper.make_node("Transpose", ["pool1_nchw"], ["pool1"], perm=[0, 2, 3, 1]),  # [N,H/2,W/2,K]
    ]
    k = ACTIVATION_CHANNELS
    return helper.make_graph(
        nodes,
        "tiny_activations",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", height, width, channels])],
        [
            helper.make_tensor_value_info("conv1", TensorProto.FLOAT, ["N", height, width, k]),
            helper.make_tensor_value_info("pool1", TensorProto.FLOAT, ["N", height // 2, width // 2, k]),
        ],
        [
            numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
            numpy_helper.from_array(kernel.astype(np.float32), "kernel"),
        ],
    )


def _activations_signature(
    version_dir: Path, height: int, width: int, channels: int, preprocess: Preprocess | None
) -> SignatureManifest:
    """Write activations.onnx into `version_dir`; its `activations` signature for the manifest."""
    _save(activations_graph(height, width, channels), version_dir / "activations.onnx")
    k = ACTIVATION_CHANNELS
    return SignatureManifest(
        "tensorflow/serving/predict",
        {"image": TensorSpec("float32", (-1, height, width, channels))},
        {
            "conv1": TensorSpec("float32", (-1, height, width, k)),
            "pool1": TensorSpec("float32", (-1, height // 2, width // 2, k)),
        },
        OnnxBinding("activations.onnx", {"image": "image"}, {name: name for name in ACTIVATION_LAYERS}),
        preprocess,
    )


def add_tiny_activations(version_dir: Path) -> Path:
    """Give a version of `tests.serving.fixtures.write_tiny_version` (digits, [N,28,28,1]) the
    `activations` signature: activations.onnx and a rewritten manifest."""
    manifest = read_manifest(version_dir)
    image = manifest.signatures["serving_default"].inputs["image"]
    _, height, width, channels = image.shape
    signature = _activations_signature(version_dir, height, width, channels, None)
    write_manifest(
        version_dir,
        Manifest(
            manifest.name,
            manifest.version,
            manifest.task,
            manifest.labels,
            {**manifest.signatures, "activations": signature},
            files={**manifest.files, "activations.onnx": sha256_file(version_dir / "activations.onnx")},
        ),
    )
    return version_dir


def write_tiny_catdog(base_path: Path, version: int = 1, activations: bool = False) -> Path:
    """models/<name>/<version>/ with serving_default, predict_image_bytes and explain, as the contract says
    (and `activations`, taking `image` or `image_bytes`, when asked)."""
    version_dir = base_path / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    weights = np.array([[4.0, -4.0], [0.0, 0.0], [-4.0, 4.0]])  # red -> cat, blue -> dog
    model, explain = catdog_graphs(weights)
    _save(model, version_dir / "model.onnx")
    _save(explain, version_dir / "explain.onnx")
    image = TensorSpec("float32", (-1, CATDOG_SIZE, CATDOG_SIZE, 3))
    image_bytes = TensorSpec("string", (-1,))
    probabilities = TensorSpec("float32", (-1, 2))
    heatmap = TensorSpec("float32", (-1, HEATMAP_SIZE, HEATMAP_SIZE))
    decode = Preprocess(
        "image_bytes", "image_bytes", "image", {"height": CATDOG_SIZE, "width": CATDOG_SIZE, "channels": 3}
    )
    plain = OnnxBinding("model.onnx", {"image": "image"}, {"probabilities": "probabilities"})
    signatures = {
        "serving_default": SignatureManifest(
            "tensorflow/serving/predict", {"image": image}, {"probabilities": probabilities}, plain
        ),
        "predict_image_bytes": SignatureManifest(
            "tensorflow/serving/predict",
            {"image_bytes": image_bytes},
            {"probabilities": probabilities},
            plain,
            decode,
        ),
        "explain": SignatureManifest(
            "tensorflow/serving/predict",
            {"image": image},
            {"probabilities": probabilities, "heatmap": heatmap},
            OnnxBinding(
                "explain.onnx", {"image": "image"}, {"probabilities": "probabilities", "heatmap": "heatmap"}
            ),
            decode,
        ),
    }
    if activations:
        signatures["activations"] = _activations_signature(version_dir, CATDOG_SIZE, CATDOG_SIZE, 3, decode)
    onnx_files = ("model.onnx", "explain.onnx", *(("activations.onnx",) if activations else ()))
    files = {name: sha256_file(version_dir / name) for name in onnx_files}
    write_manifest(
        version_dir,
        Manifest(base_path.name, version, "image_classification", ("cat", "dog"), signatures, files=files),
    )
    return version_dir


def write_tiny_sentiment(base_path: Path, version: int = 1) -> Path:
    """text string [N] -> probabilities [N,2] (negative, positive): mean of 2-d word embeddings, softmax."""
    version_dir = base_path / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    write_vocabulary(version_dir / "vocabulary.txt", SENTIMENT_VOCABULARY)
    # One row per vocabulary entry: padding and [UNK] neutral, then three positive and three negative words.
    embedding = np.array(
        [[0, 0], [0, 0], [-2, 2], [-2, 2], [-1, 1], [2, -2], [1, -1], [2, -2]], dtype=np.float32
    )
    nodes = [
        helper.make_node("Gather", ["embedding", "token_ids"], ["vectors"]),  # [N, L, 2]
        helper.make_node("ReduceSum", ["vectors", "time_axis"], ["logits"], keepdims=0),  # [N, 2]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_sentiment",
        [helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["N", SENTIMENT_LENGTH])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(embedding, "embedding"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "time_axis"),
        ],
    )
    _save(graph, version_dir / "model.onnx")
    tokenize = Preprocess(
        "text", "text", "token_ids", {"vocabulary": "vocabulary.txt", "sequence_length": SENTIMENT_LENGTH}
    )
    signatures = {
        "serving_default": SignatureManifest(
            "tensorflow/serving/predict",
            {"text": TensorSpec("string", (-1,))},
            {"probabilities": TensorSpec("float32", (-1, 2))},
            OnnxBinding("model.onnx", {"token_ids": "token_ids"}, {"probabilities": "probabilities"}),
            tokenize,
        )
    }
    files = {name: sha256_file(version_dir / name) for name in ("model.onnx", "vocabulary.txt")}
    write_manifest(
        version_dir,
        Manifest(
            base_path.name, version, "text_classification", ("negative", "positive"), signatures, files=files
        ),
    )
    return version_dir
