"""The tiny model repository the fuzz campaign serves: five models built with onnx.helper in milliseconds.

Each model stands for one kind of input the server must defend (shapes in comments):

| model | versions | signatures | inputs |
| --- | --- | --- | --- |
| `digits` | 1, 2 (label `stable` -> 1) | `serving_default` | `image` float32 [N,28,28,1] |
| `catdog` | 1 | `serving_default`, `predict_image_bytes`, `explain` | `image` float32 [N,8,8,3] or `image_bytes` string [N] |
| `sentiment` | 1 | `serving_default` | `text` string [N] (tokenized by the server) |
| `pair` | 1 | `serving_default` (no labels) | `a` float64 [N,3] and `b` int32 [N] |
| `window` | 1 | `serving_default` (no labels) | `x` float32 [N,-1]: any length by the signature, even by the graph |

The tests' own stand-ins (tests/serving/fixtures.py, tests/clients/tiny_models.py) are not imported:
this package ships, the tests do not. `onnx` comes from the `train` extra, which `make fuzz` installs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

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

PREDICT = "tensorflow/serving/predict"
CATDOG_SIZE = 8
SENTIMENT_LENGTH = 8
VOCABULARY = ("", "[UNK]", "good", "great", "fun", "bad", "dull", "awful")
DIGITS_VERSIONS = (1, 2)
STABLE_LABEL = "stable"


@dataclass(frozen=True)
class TensorInfo:
    """What the generators know of one served tensor: numpy dtype name (or "string") and shape."""

    dtype: str
    shape: tuple[int, ...]  # -1: any size (after the batch dimension, the generators pick one)
    multiple: int = 1  # what the graph needs of a -1 dimension, which no signature can say


VARIABLE_LENGTHS = (0, 1, 2, 3, 4, 6, 7, 16, 33)


def concrete_shape(info: TensorInfo, rows: int, length: int) -> tuple[int, ...]:
    """The shape of one request's tensor: `rows` rows, `length` for every -1 after the batch."""
    return (rows, *(length if d < 0 else d for d in info.shape[1:]))


@dataclass(frozen=True)
class SignatureInfo:
    inputs: dict[str, TensorInfo]
    outputs: tuple[str, ...]
    alternatives: dict[str, str]  # request input -> the input it replaces (image_bytes -> image)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[int, ...]
    labels: dict[str, int]  # version labels
    signatures: dict[str, SignatureInfo]
    classes: tuple[str, ...]  # class labels; empty: Classify is FAILED_PRECONDITION


# What the generators build valid requests from; `write_repository` publishes exactly this.
MODELS: dict[str, ModelInfo] = {
    "digits": ModelInfo(
        "digits",
        DIGITS_VERSIONS,
        {STABLE_LABEL: 1},
        {
            "serving_default": SignatureInfo(
                {"image": TensorInfo("float32", (-1, 28, 28, 1))}, ("probabilities",), {}
            )
        },
        tuple(str(i) for i in range(10)),
    ),
    "catdog": ModelInfo(
        "catdog",
        (1,),
        {},
        {
            "serving_default": SignatureInfo(
                {"image": TensorInfo("float32", (-1, CATDOG_SIZE, CATDOG_SIZE, 3))}, ("probabilities",), {}
            ),
            "predict_image_bytes": SignatureInfo(
                {"image_bytes": TensorInfo("string", (-1,))}, ("probabilities",), {}
            ),
            "explain": SignatureInfo(
                {"image": TensorInfo("float32", (-1, CATDOG_SIZE, CATDOG_SIZE, 3))},
                ("probabilities", "heatmap"),
                {"image_bytes": "image"},
            ),
        },
        ("cat", "dog"),
    ),
    "sentiment": ModelInfo(
        "sentiment",
        (1,),
        {},
        {"serving_default": SignatureInfo({"text": TensorInfo("string", (-1,))}, ("probabilities",), {})},
        ("negative", "positive"),
    ),
    "pair": ModelInfo(
        "pair",
        (1,),
        {},
        {
            "serving_default": SignatureInfo(
                {"a": TensorInfo("float64", (-1, 3)), "b": TensorInfo("int32", (-1,))}, ("total",), {}
            )
        },
        (),
    ),
    "window": ModelInfo(
        "window",
        (1,),
        {},
        {
            "serving_default": SignatureInfo(
                {"x": TensorInfo("float32", (-1, -1), multiple=2)}, ("total",), {}
            )
        },
        (),
    ),
}


def _save(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _publish(version_dir: Path, manifest: Manifest, files: tuple[str, ...]) -> None:
    hashes = {name: sha256_file(version_dir / name) for name in files}
    write_manifest(version_dir, replace(manifest, files=hashes))


def _digits(version_dir: Path, version: int) -> None:
    """image [N,28,28,1] -> probabilities [N,10] = softmax(x/255 @ W)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(version).normal(size=(784, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),  # [N, 784]
        helper.make_node("Mul", ["flat", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["logits"]),  # [N, 10]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz_digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 28, 28, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(np.array([-1, 784], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
            numpy_helper.from_array(weights, "W"),
        ],
    )
    _save(graph, version_dir / "model.onnx")
    image, probabilities = TensorSpec("float32", (-1, 28, 28, 1)), TensorSpec("float32", (-1, 10))
    binding = OnnxBinding("model.onnx", {"image": "image"}, {"probabilities": "probabilities"})
    signature = SignatureManifest(PREDICT, {"image": image}, {"probabilities": probabilities}, binding)
    labels = MODELS["digits"].classes
    manifest = Manifest("digits", version, "image_classification", labels, {"serving_default": signature})
    _publish(version_dir, manifest, ("model.onnx",))


def _catdog(version_dir: Path) -> None:
    """image [N,8,8,3] -> probabilities [N,2] from the mean colour; explain adds heatmap [N,8,8] in 0..1."""
    from onnx import TensorProto, helper, numpy_helper

    size = CATDOG_SIZE
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["colour"], axes=[1, 2], keepdims=0),  # [N, 3]
        helper.make_node("Mul", ["colour", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["logits"]),  # [N, 2]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    heat = [
        helper.make_node("ReduceMean", ["image"], ["brightness"], axes=[3], keepdims=0),  # [N, 8, 8]
        helper.make_node("Mul", ["brightness", "scale"], ["heatmap"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([[4, -4], [0, 0], [-4, 4]], dtype=np.float32), "W"),
    ]
    image_info = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])
    probabilities_info = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    heatmap_info = helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["N", size, size])
    _save(
        helper.make_graph(nodes, "fuzz_catdog", [image_info], [probabilities_info], initializers),
        version_dir / "model.onnx",
    )
    _save(
        helper.make_graph(
            nodes + heat,
            "fuzz_catdog_explain",
            [image_info],
            [probabilities_info, heatmap_info],
            initializers,
        ),
        version_dir / "explain.onnx",
    )
    image, image_bytes = TensorSpec("float32", (-1, size, size, 3)), TensorSpec("string", (-1,))
    probabilities, heatmap = TensorSpec("float32", (-1, 2)), TensorSpec("float32", (-1, size, size))
    decode = Preprocess("image_bytes", "image_bytes", "image", {"height": size, "width": size, "channels": 3})
    plain = OnnxBinding("model.onnx", {"image": "image"}, {"probabilities": "probabilities"})
    explained = OnnxBinding(
        "explain.onnx", {"image": "image"}, {"probabilities": "probabilities", "heatmap": "heatmap"}
    )
    signatures = {
        "serving_default": SignatureManifest(
            PREDICT, {"image": image}, {"probabilities": probabilities}, plain
        ),
        "predict_image_bytes": SignatureManifest(
            PREDICT, {"image_bytes": image_bytes}, {"probabilities": probabilities}, plain, decode
        ),
        "explain": SignatureManifest(
            PREDICT, {"image": image}, {"probabilities": probabilities, "heatmap": heatmap}, explained, decode
        ),
    }
    manifest = Manifest("catdog", 1, "image_classification", MODELS["catdog"].classes, signatures)
    _publish(version_dir, manifest, ("model.onnx", "explain.onnx"))


def _sentiment(version_dir: Path) -> None:
    """text [N] -> token_ids [N,8] (server side) -> probabilities [N,2] from summed 2-d embeddings."""
    from onnx import TensorProto, helper, numpy_helper

    write_vocabulary(version_dir / "vocabulary.txt", VOCABULARY)
    embedding = np.array([[0, 0], [0, 0], [-2, 2], [-2, 2], [-1, 1], [2, -2], [1, -1], [2, -2]], np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "token_ids"], ["vectors"]),  # [N, L, 2]
        helper.make_node("ReduceSum", ["vectors", "time_axis"], ["logits"], keepdims=0),  # [N, 2]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz_sentiment",
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
    signature = SignatureManifest(
        PREDICT,
        {"text": TensorSpec("string", (-1,))},
        {"probabilities": TensorSpec("float32", (-1, 2))},
        OnnxBinding("model.onnx", {"token_ids": "token_ids"}, {"probabilities": "probabilities"}),
        tokenize,
    )
    manifest = Manifest(
        "sentiment", 1, "text_classification", MODELS["sentiment"].classes, {"serving_default": signature}
    )
    _publish(version_dir, manifest, ("model.onnx", "vocabulary.txt"))


def _pair(version_dir: Path) -> None:
    """a float64 [N,3], b int32 [N] -> total float64 [N] = sum(a) + b: two inputs, two dtypes, no labels."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceSum", ["a", "axis"], ["row_sum"], keepdims=0),  # [N]
        helper.make_node("Cast", ["b"], ["b_double"], to=TensorProto.DOUBLE),  # [N]
        helper.make_node("Add", ["row_sum", "b_double"], ["total"]),  # [N]
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz_pair",
        [
            helper.make_tensor_value_info("a", TensorProto.DOUBLE, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT32, ["N"]),
        ],
        [helper.make_tensor_value_info("total", TensorProto.DOUBLE, ["N"])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")],
    )
    _save(graph, version_dir / "model.onnx")
    signature = SignatureManifest(
        PREDICT,
        {"a": TensorSpec("float64", (-1, 3)), "b": TensorSpec("int32", (-1,))},
        {"total": TensorSpec("float64", (-1,))},
        OnnxBinding("model.onnx", {"a": "a", "b": "b"}, {"total": "total"}),
    )
    _publish(
        version_dir, Manifest("pair", 1, "regression", (), {"serving_default": signature}), ("model.onnx",)
    )


def _window(version_dir: Path) -> None:
    """x float32 [N,L] -> total float32 [N]: sums of pairs. The graph reshapes to [N, L/2, 2], so an
    odd L fails inside ONNX Runtime although the signature takes any L: the server must say so as
    the client's error, not crash or answer INTERNAL."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", ["x", "pairs_shape"], ["pairs"]),  # [N, L/2, 2]
        helper.make_node("ReduceSum", ["pairs", "axes"], ["total"], keepdims=0),  # [N]
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz_window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
        [
            numpy_helper.from_array(np.array([0, -1, 2], dtype=np.int64), "pairs_shape"),
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        ],
    )
    _save(graph, version_dir / "model.onnx")
    signature = SignatureManifest(
        PREDICT,
        {"x": TensorSpec("float32", (-1, -1))},
        {"total": TensorSpec("float32", (-1,))},
        OnnxBinding("model.onnx", {"x": "x"}, {"total": "total"}),
    )
    _publish(
        version_dir, Manifest("window", 1, "regression", (), {"serving_default": signature}), ("model.onnx",)
    )


def write_repository(root: Path) -> Path:
    """Publish the five models under `root` and write `root/models.config`; returns the config path."""
    for version in DIGITS_VERSIONS:
        _digits(_folder(root / "digits" / str(version)), version)
    _catdog(_folder(root / "catdog" / "1"))
    _sentiment(_folder(root / "sentiment" / "1"))
    _pair(_folder(root / "pair" / "1"))
    _window(_folder(root / "window" / "1"))
    entries = []
    for name, info in MODELS.items():
        extra = ""
        if len(info.versions) > 1:
            extra += "    model_version_policy { all {} }\n"
        for label, version in info.labels.items():
            extra += f"    version_labels {{ key: '{label}' value: {version} }}\n"
        entries.append(
            f"  config {{\n    name: '{name}'\n    base_path: '{(root / name).resolve()}'\n"
            f"    model_platform: 'tensorflow'\n{extra}  }}\n"
        )
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(entries) + "}\n")
    return config


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
