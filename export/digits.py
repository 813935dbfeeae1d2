"""Digits export spec: `image` float32 [N,28,28,1] (0..255) in; probabilities, Grad-CAM and activations out.

SavedModel signatures (stock TensorFlow Serving serves the folder as is), each with its ONNX graph:

* `serving_default` (`model.onnx`): `image` -> `probabilities` [N,10]
* `explain` (`explain.onnx`): `image` -> `probabilities`, `heatmap` float32 [N,3,3] in [0,1] (Grad-CAM
  of the predicted class on `conv3`, `export.gradcam.build_gradcam`)
* `activations` (`activations.onnx`): `image` -> one output per convolution and pooling layer, named
  by the layer (`conv1` [N,26,26,32], `pool1`, `conv2`, `pool2`, `conv3` [N,3,3,64]; `export.activations`)

Checks before publishing (any failure -> nothing is published): Grad-CAM against `tf.GradientTape`,
the activations against the Keras model's own intermediate outputs, and SavedModel vs ONNX Runtime
parity of every signature on real MNIST test digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.common import MissingDataError, read_metrics

if TYPE_CHECKING:
    from export.pipeline import ExportSpec

PARITY_EXAMPLES = 512
GRADCAM_EXAMPLES = 64
PROBABILITIES_ATOL = 1e-5
HEATMAP_ATOL = 1e-4


def build_spec(run_dir: Path, data_dir: Path, parity_examples: int = PARITY_EXAMPLES) -> ExportSpec:
    """The digits `ExportSpec` from `run_dir/best.keras` and the first MNIST test digits."""
    import keras
    import tensorflow as tf

    from export.activations import (
        ACTIVATIONS_ONNX,
        ACTIVATIONS_SIGNATURE,
        build_activations,
        keras_check,
        served_layers,
        tolerances,
    )
    from export.gradcam import build_gradcam, compare_with_reference
    from export.pipeline import ExportSpec, ExtraCheck, ParityCheck, Signature
    from training import digits
    from training.datasets import mnist

    model_path = run_dir / digits.BEST_MODEL
    metrics_path = run_dir / digits.METRICS_FILE
    for needed in (model_path, metrics_path):
        if not needed.is_file():
            raise MissingDataError(
                f"{needed} not found: train first with `python -m training digits --out {run_dir}`"
            )
    model = keras.models.load_model(model_path)
    metrics = read_metrics(metrics_path)
    test = mnist.load_test(data_dir).take(parity_examples)
    images = test.images.astype(np.float32)  # [n,28,28,1] real test digits, 0..255

    image_spec = tf.TensorSpec([None, 28, 28, 1], tf.float32, name=digits.INPUT_NAME)
    explain_heatmap = build_gradcam(model, digits.LAST_CONV_LAYER)
    layers = served_layers(model)
    feature_maps = build_activations(model, layers)
    activations_atol = tolerances(feature_maps, images)

    @tf.function(input_signature=[image_spec])
    def serving_default(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {digits.OUTPUT_NAME: model(image, training=False)}  # [N,10]

    @tf.function(input_signature=[image_spec])
    def explain(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, heatmap = explain_heatmap(image)  # [N,10], [N,3,3]
        return {digits.OUTPUT_NAME: probabilities, "heatmap": heatmap}

    @tf.function(input_signature=[image_spec])
    def activations(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return feature_maps(image)  # {layer: [N,h,w,c]}

    def gradcam_check() -> dict[str, Any]:
        figures = compare_with_reference(
            model, digits.LAST_CONV_LAYER, images[:GRADCAM_EXAMPLES], explain_heatmap
        )
        passed = (
            figures["heatmap_max_abs_diff"] <= HEATMAP_ATOL
            and figures["probabilities_max_abs_diff"] <= PROBABILITIES_ATOL
        )
        return {**figures, "atol": HEATMAP_ATOL, "passed": passed}

    return ExportSpec(
        name="digits",
        task="image_classification",
        labels=digits.LABELS,
        trackable=model,
        signatures=(
            Signature("serving_default", serving_default, "model.onnx"),
            Signature("explain", explain, "explain.onnx"),
            Signature(ACTIVATIONS_SIGNATURE, activations, ACTIVATIONS_ONNX),
        ),
        parity=(
            ParityCheck("serving_default", {"image": images}, {"probabilities": PROBABILITIES_ATOL}),
            ParityCheck(
                "explain",
                {"image": images},
                {"probabilities": PROBABILITIES_ATOL, "heatmap": HEATMAP_ATOL},
            ),
            ParityCheck(ACTIVATIONS_SIGNATURE, {"image": images}, activations_atol, argmax=()),
        ),
        metrics=metrics,
        extra_checks=(
            ExtraCheck("gradcam_vs_gradient_tape", gradcam_check),
            ExtraCheck(
                "activations_vs_keras",
                lambda: keras_check(model, layers, feature_maps, images, activations_atol),
            ),
        ),
    )
