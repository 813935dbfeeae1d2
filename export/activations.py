"""The `activations` signature: named intermediate feature maps of a convnet, served like `explain`.

`ml-visualize activations` draws every convolution and pooling layer of the Keras model offline; the
served `activations` signature lets a client ask the server for the same maps of its own image
(`ml-client activations --layer NAME`). One output per layer, named by the layer, float32 [N,h,w,c]:
the layer's output exactly as the Keras model computes it (a convolution's output before any
BatchNormalization/ReLU layer that follows it, as `ml-visualize` shows it).

Which layers: every convolution and pooling layer (`training.visualize.feature_layers`) when there
are at most `MAX_SERVED_LAYERS` of them (digits: 5), else that many spread evenly from the first to
the last (catdog's MobileNet has 27 convolutions; 8 of them keep the graph's outputs and the answers
small, from the 80x80 edges to the 5x5 parts).

The graph is its own ONNX file (`activations.onnx`, like `explain.onnx`) rather than extra outputs of
`model.onnx`: `serving_default` stays the plain classifier stock tools expect, and ONNX Runtime keeps
the feature maps alive only for the requests that ask for them.

Checks before publishing (see `export.pipeline`): the usual SavedModel vs ONNX Runtime parity of every
output, with a tolerance relative to each layer's range (`atol = ACTIVATIONS_RTOL * max(1, peak)`,
peak: the largest |activation| of that layer on the parity inputs), and `activations_vs_keras`: the
exported function against `training.visualize.activations` (the Keras model's own intermediate
outputs, what `ml-visualize` draws) on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

ACTIVATIONS_SIGNATURE = "activations"
ACTIVATIONS_ONNX = "activations.onnx"
MAX_SERVED_LAYERS = 8
# Of the layer's largest |activation|. Measured ONNX Runtime vs TensorFlow: digits' convolutions at most
# 1e-7 of it; MobileNet's depthwise convolutions up to 5e-6 (16 photos), so 1e-4 leaves a 20x margin
# and is still far below one grey level of the grids (4 standard deviations over 256 levels).
ACTIVATIONS_RTOL = 1e-4
KERAS_CHECK_EXAMPLES = 16

ActivationsFn = Callable[[Any], dict[str, Any]]  # image tensor [N,H,W,C] -> {layer: [N,h,w,c]}


def served_layers(model: Any, limit: int = MAX_SERVED_LAYERS) -> list[str]:
    """The conv/pooling layers the `activations` signature serves: all, or `limit` spread first to last."""
    from training.visualize import feature_layers

    names = feature_layers(model)
    if not names:
        raise ValueError(f"{model.name} has no convolution or pooling layer to serve activations of")
    if len(names) <= limit:
        return names
    picked = {round(i * (len(names) - 1) / (limit - 1)) for i in range(limit)}
    return [names[i] for i in sorted(picked)]


def build_activations(model: Any, layers: Sequence[str]) -> ActivationsFn:
    """A function image [N,H,W,C] -> {layer name: float32 [N,h,w,c]} from one Keras probe model."""
    import keras

    outputs = [model.get_layer(name).output for name in layers]
    for name, output in zip(layers, outputs, strict=True):
        if len(output.shape) != 4:
            raise ValueError(f"layer {name!r} gives {output.shape}, not a feature map [N,h,w,c]")
    probe = keras.Model(model.inputs, outputs, name=f"{model.name}_activations")

    def activations(image: Any) -> dict[str, Any]:
        values = probe(image, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return dict(zip(layers, values, strict=True))

    return activations


def tolerances(activations: ActivationsFn, images: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Per-layer parity tolerance: `ACTIVATIONS_RTOL` of the layer's largest |activation| (at least 1)."""
    import tensorflow as tf

    peaks: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        for name, value in activations(tf.constant(images[start : start + batch_size])).items():
            peaks[name] = max(peaks.get(name, 0.0), float(np.max(np.abs(value.numpy()))))
    return {name: ACTIVATIONS_RTOL * max(1.0, peak) for name, peak in peaks.items()}


def keras_check(
    model: Any,
    layers: Sequence[str],
    activations: ActivationsFn,
    images: np.ndarray,
    atol: Mapping[str, float],
) -> dict[str, Any]:
    """The exported function vs `training.visualize.activations` (what `ml-visualize` draws)."""
    import tensorflow as tf

    from training.visualize import activations as keras_activations

    sample = images[:KERAS_CHECK_EXAMPLES]
    expected = keras_activations(model, sample, layers)
    actual = activations(tf.constant(sample))
    worst = {name: float(np.max(np.abs(actual[name].numpy() - expected[name]))) for name in layers}
    return {
        "layers": list(layers),
        "n_images": len(sample),
        "max_abs_diff": worst,
        "atol": dict(atol),
        "passed": all(worst[name] <= atol[name] for name in layers),
    }
