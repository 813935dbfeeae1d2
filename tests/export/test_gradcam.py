"""Grad-CAM with forward ops against tf.GradientTape, on small random models (digits-like and catdog-like)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx
from keras import layers

from export.gradcam import (
    UnsupportedLayerError,
    build_gradcam,
    compare_with_reference,
    gradcam_reference,
    heatmap_from_gradients,
    last_conv_layer_name,
    split_model,
)
from training.digits import LAST_CONV_LAYER, build_model

ATOL = 1e-4


def catdog_like(head: Callable[[Any], Any], size: int = 24) -> Any:
    """Rescaling -> conv -> pool -> conv `last` -> `head`, on RGB images."""
    image = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255)(image)
    x = layers.Conv2D(8, 3, activation="relu")(x)  # [N,22,22,8]
    x = layers.MaxPooling2D(2)(x)  # [N,11,11,8]
    x = layers.Conv2D(12, 3, activation="relu", name="last")(x)  # [N,9,9,12]
    return keras.Model(image, head(x))


def flatten_sigmoid(x: Any) -> Any:  # the book's cats-vs-dogs head: pool, flatten, dropout, dense, sigmoid
    x = layers.MaxPooling2D(2)(x)  # [N,4,4,12]: odd 9x9 map, last row/column unpooled
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(16, activation="relu")(x)
    return layers.Dense(1, activation="sigmoid")(x)


def gap_softmax(x: Any) -> Any:  # a transfer-learning head
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(16)(x)
    x = layers.Activation("relu")(x)
    return layers.Dense(2, activation="softmax")(x)


def gmp_tanh(x: Any) -> Any:
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(16, activation="tanh")(x)
    x = layers.Dense(3)(x)
    return layers.Softmax()(x)


def batchnorm_relu(x: Any) -> Any:
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    return layers.Dense(2, activation="softmax")(x)


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32)
    images[:2, : shape[1] // 2] = 0  # flat regions: ties inside max-pool windows
    return images


def test_digits_model_matches_gradient_tape() -> None:
    keras.utils.set_random_seed(1)
    model = build_model(dropout=0.3)
    images = random_images((12, 28, 28, 1))
    figures = compare_with_reference(model, LAST_CONV_LAYER, images)
    assert figures["probabilities_max_abs_diff"] <= 1e-6
    assert figures["heatmap_max_abs_diff"] <= ATOL
    _, heatmap = build_gradcam(model, LAST_CONV_LAYER)(tf.constant(images))
    heatmap = heatmap.numpy()
    assert heatmap.shape == (12, 3, 3)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    peaks = heatmap.max(axis=(1, 2))
    assert np.all((peaks == 0) | np.isclose(peaks, 1.0))
    assert np.any(peaks > 0)


@pytest.mark.parametrize("head", [flatten_sigmoid, gap_softmax, gmp_tanh, batchnorm_relu])
def test_catdog_like_heads_match_gradient_tape(head: Callable[[Any], Any]) -> None:
    keras.utils.set_random_seed(2)
    model = catdog_like(head)
    images = random_images((6, 24, 24, 3), seed=3)
    figures = compare_with_reference(model, "last", images)
    assert figures["heatmap_max_abs_diff"] <= ATOL
    assert figures["probabilities_max_abs_diff"] <= 1e-6
    _, heatmap = gradcam_reference(model, "last", images)
    assert heatmap.shape == (6, 9, 9)
    assert np.any(heatmap > 0)


def test_heatmap_is_zero_not_nan_when_nothing_is_positive() -> None:
    features = tf.ones((2, 3, 3, 4))  # [N,h,w,C]
    gradients = tf.concat([-tf.ones((1, 3, 3, 4)), tf.zeros((1, 3, 3, 4))], axis=0)
    heatmap = heatmap_from_gradients(features, gradients).numpy()
    assert heatmap.shape == (2, 3, 3)
    np.testing.assert_array_equal(heatmap, 0.0)


def test_heatmap_is_normalised_per_image() -> None:
    features = tf.reshape(tf.range(18, dtype=tf.float32), (2, 3, 3, 1))
    heatmap = heatmap_from_gradients(features, tf.ones((2, 3, 3, 1))).numpy()
    np.testing.assert_allclose(heatmap.max(axis=(1, 2)), [1.0, 1.0])
    np.testing.assert_allclose(heatmap[0].ravel(), np.arange(9) / 8)


def test_unsupported_head_layer_is_named() -> None:
    model = catdog_like(
        lambda x: layers.Dense(2, activation="softmax")(layers.Flatten()(layers.AveragePooling2D(2)(x)))
    )
    with pytest.raises(UnsupportedLayerError, match="AveragePooling2D"):
        split_model(model, "last")


def test_head_must_be_a_chain() -> None:
    image = keras.Input((8, 8, 1))
    features = layers.Conv2D(4, 3, activation="relu", name="last")(image)
    flat = layers.Flatten()(features)
    mixed = layers.Add()([layers.Dense(4)(flat), layers.Dense(4)(flat)])
    model = keras.Model(image, layers.Dense(2, activation="softmax")(mixed))
    with pytest.raises(ValueError, match="chain"):
        split_model(model, "last")


def test_last_conv_layer_name() -> None:
    assert last_conv_layer_name(build_model()) == LAST_CONV_LAYER


@pytest.mark.slow
def test_max_pool_head_converts_to_onnx(tmp_path: Path) -> None:
    """The hand-written backward pass (max-pool masks included) converts with tf2onnx and matches TF."""
    keras.utils.set_random_seed(4)
    model = catdog_like(flatten_sigmoid)
    explain_fn = build_gradcam(model, "last")
    spec = (tf.TensorSpec([None, 24, 24, 3], tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def explain(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, heatmap = explain_fn(image)
        return {"probabilities": probabilities, "heatmap": heatmap}

    path = tmp_path / "explain.onnx"
    tf2onnx.convert.from_function(explain, input_signature=spec, opset=17, output_path=str(path))
    images = random_images((5, 24, 24, 3), seed=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    heatmap, probabilities = session.run(["heatmap", "probabilities"], {"image": images})
    ref_probabilities, ref_heatmap = gradcam_reference(model, "last", images)
    np.testing.assert_allclose(probabilities, ref_probabilities, atol=1e-5)
    np.testing.assert_allclose(heatmap, ref_heatmap, atol=ATOL)
