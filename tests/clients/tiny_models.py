"""Tiny ONNX stand-ins for `catdog` and `sentiment`, with the contract's signatures, built in milliseconds.

`tests/serving/fixtures.py` has the digits stand-in (`write_tiny_version`); these two add what the
clients must handle besides a float image: `image_bytes` decoded by the server, an `explain`
signature with a `heatmap`, and `text` tokenized by the server. No TensorFlow.
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
    sha256_file,
    write_manifest,
)
from serving.text import write_vocabulary

CATDOG_SIZE = 16  # pixels per side the tiny catdog takes
HEATMAP_SIZE = 4
SENTIMENT_LENGTH = 8
SENTIMENT_VOCABULARY = ("", "[UNK]", "good", "great", "fun", "bad", "dull", "awful")


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


def write_tiny_catdog(base_path: Path, version: int = 1) -> Path:
    """models/<name>/<version>/ with serving_default, predict_image_bytes and explain, as the contract says."""
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
    files = {name: sha256_file(version_dir / name) for name in ("model.onnx", "explain.onnx")}
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
