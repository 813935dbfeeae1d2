"""Grad-CAM written with forward ops only, so tf2onnx can convert it into `explain.onnx`.

Grad-CAM (Selvaraju et al., as in keras-io's example) weighs the channels of a convolutional feature map
`A` [N,h,w,C] by the spatial mean of d(score of the predicted class)/dA and keeps the positive part:

    heatmap = relu(sum_c(mean_ij(dscore/dA)[c] * A[..., c]))    then divided by its maximum per image

`tf.GradientTape` would emit gradient kernels (ReluGrad, MaxPoolGrad, BroadcastGradientArgs, ...) that
tf2onnx cannot convert. Instead, `build_gradcam` splits the Keras model at the target layer into a
convolutional part and a *head*, runs the head layer by layer while keeping what each layer saw, and
writes the head's backward pass explicitly: transposed-kernel matmuls for Dense, comparison masks cast
to float for ReLU, the softmax Jacobian row, equality masks with upsampling for max pooling, and so on.
Nothing is tuned per model; supported head layers are listed in `SUPPORTED_HEAD_LAYERS`.

The score is the predicted class's *logit*: the input of the final softmax (or sigmoid), as in the
Grad-CAM paper and in keras-io's example, which drops the last softmax. The gradient of a saturated
softmax (p close to 1) is dominated by float32 rounding, so two correct implementations would give
visibly different heatmaps; the logit's gradient is well conditioned. A single-unit sigmoid output is
read as two classes `[1 - p, p]`: the score is `z` when `p >= 0.5` and `-z` otherwise.

`gradcam_reference` computes the same thing with `tf.GradientTape`; export checks the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

SUPPORTED_HEAD_LAYERS = (
    "Flatten",
    "Reshape",
    "Dense",
    "Activation",
    "ReLU",
    "Softmax",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "Rescaling",
    "BatchNormalization",
    "MaxPooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
)
# Layers that are the identity at inference time.
_INFERENCE_IDENTITY = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout")

ExplainFn = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


class UnsupportedLayerError(NotImplementedError):
    """The head holds a layer (or a layer setting) whose backward pass is not written here."""


@dataclass(frozen=True)
class _Step:
    """One head layer and what its backward pass needs from the forward pass."""

    layer: Any
    inputs: tf.Tensor  # what the layer received
    pre_activation: tf.Tensor | None = None  # Dense: x @ W + b, before the activation
    outputs: tf.Tensor | None = None  # after the activation


def split_model(model: Any, layer_name: str) -> tuple[Any, list[Any]]:
    """(model from the inputs to `layer_name`'s output, the head layers after it in order).

    The head must be a simple chain (each layer feeding the next one, the last one giving the output).
    """
    target = model.get_layer(layer_name)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    position = next(i for i, layer in enumerate(layers) if layer is target)
    head = layers[position + 1 :]
    previous = target.output
    for layer in head:
        if layer.input is not previous:
            raise ValueError(
                f"the head after {layer_name!r} is not a chain: {layer.name!r} does not follow it"
            )
        kind = type(layer).__name__
        if kind not in SUPPORTED_HEAD_LAYERS:
            raise UnsupportedLayerError(
                f"Grad-CAM head layer {layer.name!r} ({kind}) is not supported; "
                f"supported: {', '.join(SUPPORTED_HEAD_LAYERS)}"
            )
        previous = layer.output
    if not head or previous is not model.outputs[0]:
        raise ValueError(f"the model's output does not come from the chain of layers after {layer_name!r}")
    conv_model = keras.Model(model.inputs, target.output, name=f"{model.name}_to_{layer_name}")
    return conv_model, head


def _activation_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name).lower()


def _activate(name: str, z: tf.Tensor) -> tf.Tensor:
    if name == "relu":
        return tf.nn.relu(z)
    if name == "softmax":
        return tf.nn.softmax(z, axis=-1)
    if name == "sigmoid":
        return tf.sigmoid(z)
    if name == "tanh":
        return tf.tanh(z)
    if name == "linear":
        return z
    raise UnsupportedLayerError(f"activation {name!r} is not supported in a Grad-CAM head")


def _activation_backward(name: str, z: tf.Tensor, y: tf.Tensor, grad: tf.Tensor) -> tf.Tensor:
    """d(score)/dz from d(score)/dy, for y = activation(z)."""
    if name == "relu":
        return grad * tf.cast(z > 0, grad.dtype)  # the ReluGrad mask, as a cast comparison
    if name == "softmax":
        # Row of the softmax Jacobian: dz_i = y_i * (dy_i - sum_k dy_k * y_k)
        return y * (grad - tf.reduce_sum(grad * y, axis=-1, keepdims=True))
    if name == "sigmoid":
        return grad * y * (1.0 - y)
    if name == "tanh":
        return grad * (1.0 - y * y)
    if name == "linear":
        return grad
    raise UnsupportedLayerError(f"activation {name!r} is not supported in a Grad-CAM head")


def _check_channels_last(layer: Any) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedLayerError(f"{layer.name!r}: only channels_last is supported")


def _forward(layer: Any, x: tf.Tensor) -> _Step:
    """Run one head layer with explicit ops (inference mode), keeping what the backward pass needs."""
    kind = type(layer).__name__
    if kind == "Dense":
        z = tf.matmul(x, layer.kernel)  # [N,in] @ [in,out] -> [N,out]
        if layer.use_bias:
            z = z + layer.bias
        y = _activate(_activation_name(layer.activation), z)
        return _Step(layer, x, z, y)
    if kind == "Activation":
        return _Step(layer, x, x, _activate(_activation_name(layer.activation), x))
    if kind == "ReLU":
        if layer.max_value is not None or float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            raise UnsupportedLayerError(f"{layer.name!r}: only a plain ReLU is supported")
        return _Step(layer, x, x, tf.nn.relu(x))
    if kind == "Softmax":
        if layer.axis not in (-1, len(x.shape) - 1):
            raise UnsupportedLayerError(f"{layer.name!r}: only softmax over the last axis is supported")
        return _Step(layer, x, x, tf.nn.softmax(x, axis=-1))
    if kind in ("Flatten", "Reshape"):
        _check_channels_last(layer)
        return _Step(layer, x, outputs=layer(x))
    if kind in _INFERENCE_IDENTITY:
        return _Step(layer, x, outputs=x)
    if kind == "Rescaling":
        return _Step(layer, x, outputs=x * layer.scale + layer.offset)
    if kind == "BatchNormalization":
        return _Step(layer, x, outputs=layer(x, training=False))
    if kind == "MaxPooling2D":
        _check_channels_last(layer)
        if tuple(layer.strides) != tuple(layer.pool_size) or layer.padding != "valid":
            raise UnsupportedLayerError(
                f"{layer.name!r}: only non-overlapping 'valid' max pooling is supported"
            )
        if x.shape[1] is None or x.shape[2] is None:
            raise UnsupportedLayerError(f"{layer.name!r}: the feature map needs a static height and width")
        return _Step(layer, x, outputs=layer(x))
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        _check_channels_last(layer)
        return _Step(layer, x, outputs=layer(x))
    raise UnsupportedLayerError(f"{layer.name!r} ({kind}) is not supported in a Grad-CAM head")


def _max_pool_backward(layer: Any, x: tf.Tensor, grad: tf.Tensor) -> tf.Tensor:
    """MaxPoolGrad with forward ops: each window's gradient goes to its first maximum (row-major)."""
    pool_h, pool_w = (int(v) for v in layer.pool_size)
    height, width = int(x.shape[1]), int(x.shape[2])
    out_h, out_w = height // pool_h, width // pool_w
    pooled = tf.nn.max_pool2d(x, (pool_h, pool_w), (pool_h, pool_w), "VALID")  # [N,oh,ow,C]
    taken = tf.zeros_like(pooled, dtype=tf.bool)  # a window's maximum already received the gradient
    rows = []
    for i in range(pool_h):
        columns = []
        for j in range(pool_w):
            window_element = x[:, i : out_h * pool_h : pool_h, j : out_w * pool_w : pool_w, :]  # [N,oh,ow,C]
            hit = tf.logical_and(tf.equal(window_element, pooled), tf.logical_not(taken))
            taken = tf.logical_or(taken, hit)
            columns.append(grad * tf.cast(hit, grad.dtype))  # [N,oh,ow,C]
        rows.append(tf.stack(columns, axis=3))  # [N,oh,ow,pw,C]
    windows = tf.stack(rows, axis=2)  # [N,oh,ph,ow,pw,C]
    channels = int(x.shape[3])
    upsampled = tf.reshape(windows, [-1, out_h * pool_h, out_w * pool_w, channels])  # [N,oh*ph,ow*pw,C]
    # Rows/columns that no window covered (odd sizes) get no gradient.
    return tf.pad(upsampled, [[0, 0], [0, height - out_h * pool_h], [0, width - out_w * pool_w], [0, 0]])


def _backward(step: _Step, grad: tf.Tensor) -> tf.Tensor:
    """d(score)/d(layer input) from d(score)/d(layer output)."""
    layer, x = step.layer, step.inputs
    kind = type(layer).__name__
    if kind == "Dense":
        assert step.pre_activation is not None and step.outputs is not None
        dz = _activation_backward(_activation_name(layer.activation), step.pre_activation, step.outputs, grad)
        return tf.matmul(dz, layer.kernel, transpose_b=True)  # [N,out] @ [out,in] -> [N,in]
    if kind in ("Activation", "ReLU", "Softmax"):
        assert step.pre_activation is not None and step.outputs is not None
        name = {"ReLU": "relu", "Softmax": "softmax"}.get(kind) or _activation_name(layer.activation)
        return _activation_backward(name, step.pre_activation, step.outputs, grad)
    if kind in ("Flatten", "Reshape"):
        return tf.reshape(grad, tf.shape(x))
    if kind in _INFERENCE_IDENTITY:
        return grad
    if kind == "Rescaling":
        return grad * layer.scale
    if kind == "BatchNormalization":
        scale = tf.math.rsqrt(layer.moving_variance + layer.epsilon)  # [C]
        if layer.scale:
            scale = scale * layer.gamma
        return grad * scale
    if kind == "MaxPooling2D":
        return _max_pool_backward(layer, x, grad)
    if kind == "GlobalAveragePooling2D":
        per_pixel = tf.reshape(grad, [-1, 1, 1, int(x.shape[-1])])  # [N,1,1,C] (keepdims or not)
        area = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], grad.dtype)
        return tf.ones_like(x) * per_pixel / area  # [N,h,w,C]
    if kind == "GlobalMaxPooling2D":
        peak = tf.reduce_max(x, axis=[1, 2], keepdims=True)  # [N,1,1,C]
        hits = tf.cast(tf.equal(x, peak), grad.dtype)  # [N,h,w,C]; ties share, like reduce_max's gradient
        per_pixel = tf.reshape(grad, [-1, 1, 1, int(x.shape[-1])])  # [N,1,1,C]
        return hits * per_pixel / tf.reduce_sum(hits, axis=[1, 2], keepdims=True)
    raise UnsupportedLayerError(f"{layer.name!r} ({kind}) has no backward pass here")


def _output_activation(step: _Step) -> str | None:
    """'softmax' or 'sigmoid' when the last head layer ends with one (its input then holds the logits)."""
    kind = type(step.layer).__name__
    if kind == "Softmax":
        return "softmax"
    if kind in ("Dense", "Activation"):
        name = _activation_name(step.layer.activation)
        if name in ("softmax", "sigmoid"):
            return name
    return None


def _logits(layer: Any, x: tf.Tensor) -> tf.Tensor:
    """The last head layer without its final softmax/sigmoid (for the GradientTape reference)."""
    if type(layer).__name__ == "Dense":
        z = keras.ops.matmul(x, layer.kernel)
        return z + layer.bias if layer.use_bias else z
    return x  # Activation / Softmax layer: its input


def score_gradient(probabilities: tf.Tensor) -> tf.Tensor:
    """d(score)/d(logits): one-hot of the predicted class ([N,K]); for [N,1] sigmoid outputs, +-1."""
    if probabilities.shape[-1] == 1:
        return tf.where(probabilities >= 0.5, 1.0, -1.0)  # score = z or -z
    classes = int(probabilities.shape[-1])
    return tf.one_hot(tf.argmax(probabilities, axis=-1), classes, dtype=probabilities.dtype)  # [N,K]


def heatmap_from_gradients(features: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """relu(sum_c(mean_ij(gradients) * features)) scaled to [0,1] per image; all-zero maps stay 0.

    features, gradients: [N,h,w,C] -> heatmap [N,h,w].
    """
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)  # [N,1,1,C]
    cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))  # [N,h,w]
    peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)  # [N,1,1]
    positive = peak > 0
    return tf.where(positive, cam / tf.where(positive, peak, tf.ones_like(peak)), tf.zeros_like(cam))


def build_gradcam(model: Any, layer_name: str) -> ExplainFn:
    """A function images -> (probabilities [N,K], heatmap [N,h,w]) made of forward ops only.

    `probabilities` is the model's own output, recomputed through the explicit head.
    """
    conv_model, head = split_model(model, layer_name)

    def explain(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        features = conv_model(images, training=False)  # [N,h,w,C]
        steps: list[_Step] = []
        x = features
        for layer in head:
            step = _forward(layer, x)
            steps.append(step)
            assert step.outputs is not None
            x = step.outputs
        probabilities = x  # [N,K]
        grad = score_gradient(probabilities)  # d(score)/d(logits)
        last = steps[-1]
        if _output_activation(last) is None:
            remaining = steps  # no final softmax/sigmoid: the output itself holds the scores
        else:
            remaining = steps[:-1]
            if type(last.layer).__name__ == "Dense":
                grad = tf.matmul(grad, last.layer.kernel, transpose_b=True)  # [N,K] @ [K,in] -> [N,in]
        for step in reversed(remaining):
            grad = _backward(step, grad)
        return probabilities, heatmap_from_gradients(features, grad)  # grad: [N,h,w,C]

    return explain


def gradcam_reference(model: Any, layer_name: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM with `tf.GradientTape` (keras-io's recipe, batched): (probabilities, heatmap [N,h,w]).

    The head runs through the Keras layers themselves; only the final softmax/sigmoid is left out of
    the differentiated score, as `build_gradcam` does.
    """
    conv_model, head = split_model(model, layer_name)
    inputs = tf.convert_to_tensor(images, dtype=tf.float32)
    with tf.GradientTape() as tape:
        features = conv_model(inputs, training=False)  # [N,h,w,C]
        tape.watch(features)
        x = features
        for layer in head[:-1]:
            x = layer(x, training=False)
        probabilities = head[-1](x, training=False)  # [N,K]
        ends_in_probabilities = _output_activation(_Step(head[-1], x)) is not None
        scores = _logits(head[-1], x) if ends_in_probabilities else probabilities  # [N,K]
        # Images are independent at inference, so the gradient of the sum is each image's own gradient.
        score = tf.reduce_sum(scores * tf.stop_gradient(score_gradient(probabilities)))
    gradients = tape.gradient(score, features)  # [N,h,w,C]
    heatmap = heatmap_from_gradients(features, gradients)
    return probabilities.numpy(), heatmap.numpy()


def compare_with_reference(
    model: Any, layer_name: str, images: np.ndarray, explain: ExplainFn | None = None
) -> dict[str, float]:
    """Max |difference| of probabilities and heatmaps between `build_gradcam` and `gradcam_reference`."""
    explain = explain or build_gradcam(model, layer_name)
    probabilities, heatmap = explain(tf.convert_to_tensor(images, dtype=tf.float32))
    ref_probabilities, ref_heatmap = gradcam_reference(model, layer_name, images)
    return {
        "probabilities_max_abs_diff": float(np.max(np.abs(probabilities.numpy() - ref_probabilities))),
        "heatmap_max_abs_diff": float(np.max(np.abs(heatmap.numpy() - ref_heatmap))),
        "n_images": len(images),
    }


def last_conv_layer_name(
    model: Any, kinds: Sequence[str] = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")
) -> str:
    """Name of the model's last convolution layer (a default Grad-CAM target)."""
    for layer in reversed(model.layers):
        if type(layer).__name__ in kinds:
            return str(layer.name)
    raise ValueError(f"{model.name} has no convolution layer")
