"""A catdog-shaped MobileNet with random weights, for the catdog bench on a clone with no published model.

The book's catdog in this repository is MobileNet v1 (alpha 0.25) at 224 px with a 2-class head
(`training/catdog.py`); this is that architecture (batch norm folded into the convolutions, ReLU6),
built with the onnx helper so no TensorFlow is needed. Same signatures as the published catdog:
`serving_default` (`image` float32 [N,224,224,3], RGB 0..255) and `predict_image_bytes`
(`image_bytes` string [N], decoded and resized by the server, see `serving.images`), both to
`probabilities` float32 [N,2]. Its answers mean nothing; its cost per image is the real model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from loadtests.peers.standin import classifier
from serving.manifest import (
    Manifest,
    OnnxBinding,
    Preprocess,
    SignatureManifest,
    TensorSpec,
    sha256_file,
    write_manifest,
)

SIZE = 224
ALPHA = 0.25
# MobileNet v1's depthwise-separable blocks: (pointwise filters at alpha 1, depthwise stride).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))


def mobilenet(seed: int = 0) -> onnx.ModelProto:
    """image [N,224,224,3] 0..255 -> /127.5 - 1 -> conv 3x3/2 -> 13 x (depthwise 3x3 + pointwise 1x1),
    ReLU6 after each -> global average pool -> dense 2 -> softmax; He-initialised random weights."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["nchw", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["x0"]),
    ]

    def conv(source: str, name: str, out: int, inputs: int, kernel: int, stride: int, group: int = 1) -> str:
        fan_in = inputs // group * kernel * kernel
        weights = (rng.normal(size=(out, inputs // group, kernel, kernel)) * np.sqrt(2 / fan_in)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weights, f"{name}_w"))
        initializers.append(numpy_helper.from_array(np.zeros(out, np.float32), f"{name}_b"))
        pad = kernel // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{name}_w", f"{name}_b"],
                [f"{name}_conv"],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
                group=group,
            )
        )
        nodes.append(helper.make_node("Clip", [f"{name}_conv", "zero", "six"], [name]))  # ReLU6
        return name

    channels = int(32 * ALPHA)
    x = conv("x0", "conv1", channels, 3, 3, 2)
    for index, (filters, stride) in enumerate(BLOCKS, start=1):
        x = conv(x, f"conv_dw_{index}", channels, channels, 3, stride, group=channels)
        out = int(filters * ALPHA)
        x = conv(x, f"conv_pw_{index}", out, channels, 1, 1)
        channels = out
    dense = (rng.normal(size=(channels, 2)) * np.sqrt(1 / channels)).astype(np.float32)
    initializers += [numpy_helper.from_array(dense, "dense_w"), numpy_helper.from_array(np.zeros(2, np.float32), "dense_b")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return classifier("catdog_standin", nodes, initializers, (SIZE, SIZE, 3), 2)


def write_catdog_standin(base_path: Path, version: int = 1, seed: int = 0) -> Path:
    """Publish `<base_path>/<version>/` (model.onnx + manifest) as export would; returns the folder."""
    version_dir = base_path / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(mobilenet(seed), version_dir / "model.onnx")
    probabilities = {"probabilities": TensorSpec("float32", (-1, 2))}
    binding = OnnxBinding("model.onnx", {"image": "image"}, {"probabilities": "probabilities"})
    decode = Preprocess(
        kind="image_bytes",
        input="image_bytes",
        output="image",
        params={"height": SIZE, "width": SIZE, "channels": 3, "resize": "bilinear"},
    )
    manifest = Manifest(
        name=base_path.name,
        version=version,
        task="image_classification",
        labels=("cat", "dog"),
        signatures={
            "serving_default": SignatureManifest(
                method="tensorflow/serving/predict",
                inputs={"image": TensorSpec("float32", (-1, SIZE, SIZE, 3))},
                outputs=probabilities,
                onnx=binding,
            ),
            "predict_image_bytes": SignatureManifest(
                method="tensorflow/serving/predict",
                inputs={"image_bytes": TensorSpec("string", (-1,))},
                outputs=probabilities,
                onnx=binding,
                preprocess=decode,
            ),
        },
        producer={"tool": "loadtests.peers.catdog_standin", "note": "stand-in: random weights, not trained"},
        files={"model.onnx": sha256_file(version_dir / "model.onnx")},
    )
    write_manifest(version_dir, manifest)
    return version_dir
