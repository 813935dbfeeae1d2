"""`ml-visualize`: the book's three ways of seeing inside a convnet (chapter 5), on the trained Keras model.

    ml-visualize activations --model catdog photo.jpg -o activations/    # one PNG grid per conv/pool layer
    ml-visualize filters --model catdog -o filters.png [--layer NAME ...]  # what each filter responds to most
    ml-visualize heatmap --model catdog photo.jpg -o heatmap.png          # Grad-CAM overlay, offline

* **Intermediate activations**: the image goes through the model; every channel of every convolution
  and pooling layer's output is drawn as a small picture, tiled into one grid per layer, each channel
  normalised on its own (mean 128, one standard deviation = 64 grey levels), with the layer's name and
  shape as the title.
* **Filter patterns**: gradient ascent in input space. From a grey image with a little noise, the mean
  activation of one filter is raised by steps along its gradient, normalised by the gradient's RMS,
  then the image is turned back into 0..255 pixels (centred, 0.1 standard deviations per 0.5 of the
  range, clipped). All the filters of one layer are climbed together, one image each.
* **Class activation heatmap**: Grad-CAM with `tf.GradientTape` on the Keras model
  (`export.gradcam.gradcam_reference`) drawn over the photo exactly as `ml-client explain` draws the
  served heatmap (`clients.overlay`); both prepare the image as the server does, so the two pictures agree.

The Keras model is found in the training run folder (`runs/digits/best.keras`,
`runs/catdog/finetune/best.keras`), or given with `--keras FILE`. This module needs the training extra
(TensorFlow, matplotlib), unlike the server and the clients.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.grids import activation_grid
from clients.grids import normalise_channel as normalise_channel  # re-exported: the grid tests import it here
from training.common import REPO_ROOT

PROG = "ml-visualize"
RUNS_DIR = REPO_ROOT / "runs"
# Where each model's training run keeps the Keras model the served version was exported from.
KERAS_FILE = {"digits": Path("digits/best.keras"), "catdog": Path("catdog/finetune/best.keras")}
CONV_KINDS = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")
POOL_KINDS = ("MaxPooling2D", "AveragePooling2D")
FILTER_STEPS = 40  # the book climbs 40 steps
FILTER_STEP_SIZE = 4.0  # 0..255 pixel units per RMS-normalised gradient step (the book: 1 on VGG16's
# larger inputs; these small convnets need bigger steps for the pattern to outgrow the starting noise)


class VisualizeError(ValueError):
    """A model, layer or image that cannot be visualised; the message says why (exit status 2)."""


# -- the model and its input ---------------------------------------------------------------------


def load_keras_model(model: str, keras_file: Path | None, runs_dir: Path = RUNS_DIR) -> Any:
    import keras

    path = keras_file or runs_dir / KERAS_FILE.get(model, Path(model) / "best.keras")
    if not path.is_file():
        raise VisualizeError(
            f"{path} not found: train first (`python -m training {model}`) or give the model with --keras FILE"
        )
    return keras.models.load_model(path, compile=False)


def input_size(keras_model: Any) -> tuple[int, int, int]:
    _, height, width, channels = keras_model.input_shape
    if None in (height, width, channels):
        raise VisualizeError(f"{keras_model.name}: needs a fixed image input, has {keras_model.input_shape}")
    return int(height), int(width), int(channels)


def load_input(path: Path, keras_model: Any) -> np.ndarray:
    """float32 [1,H,W,C], 0..255, prepared as the server prepares it: digits as `ml-client` sends them
    (grayscale, inverted when drawn dark on light), colour photos decoded and resized as `image_bytes`."""
    from clients.images import ImageLoadError, load_image_tensor

    height, width, channels = input_size(keras_model)
    try:
        return load_image_tensor(path, height, width, channels, invert="auto" if channels == 1 else "no")
    except ImageLoadError as exc:
        raise VisualizeError(str(exc)) from exc


def feature_layers(keras_model: Any) -> list[str]:
    """Names of the convolution and pooling layers, input to output (the book's choice of layers)."""
    return [layer.name for layer in keras_model.layers if type(layer).__name__ in CONV_KINDS + POOL_KINDS]


def conv_layers(keras_model: Any) -> list[str]:
    return [layer.name for layer in keras_model.layers if type(layer).__name__ in CONV_KINDS]


def _layer(keras_model: Any, name: str) -> Any:
    try:
        return keras_model.get_layer(name)
    except ValueError:
        known = ", ".join(feature_layers(keras_model)) or "none"
        raise VisualizeError(f"{keras_model.name} has no layer {name!r}; its conv/pooling layers: {known}") from None


# -- intermediate activations --------------------------------------------------------------------


def activations(keras_model: Any, images: np.ndarray, layer_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each named layer's output for `images` [N,H,W,C]: {name: float32 [N,h,w,c]}."""
    import keras

    outputs = [_layer(keras_model, name).output for name in layer_names]
    probe = keras.Model(keras_model.inputs, outputs)
    values = probe([images], training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    return {name: np.asarray(value, dtype=np.float32) for name, value in zip(layer_names, values, strict=True)}


def save_grid(grid: np.ndarray, title: str, path: Path, cmap: str = "viridis") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # About 4 screen pixels per activation pixel for small maps, at most 20 inches wide.
    width = min(20.0, max(5.0, grid.shape[1] * 4 / 100))
    height = width * grid.shape[0] / grid.shape[1] + 0.6
    figure, axes = plt.subplots(figsize=(width, height))
    axes.imshow(grid, cmap=cmap, aspect="equal", interpolation="nearest", vmin=0, vmax=255)
    axes.set_title(title, fontsize=10)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_activations(keras_model: Any, image: np.ndarray, out: Path, layers: Sequence[str] = ()) -> list[Path]:
    """One PNG per layer in `out` (`01_conv1.png`, ...); returns the files written."""
    names = list(layers) or feature_layers(keras_model)
    if not names:
        raise VisualizeError(f"{keras_model.name} has no convolution or pooling layer")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, value) in enumerate(activations(keras_model, image, names).items(), start=1):
        maps = value[0]  # [h,w,c]
        if maps.ndim != 3:
            raise VisualizeError(f"layer {name!r} gives {list(value.shape)}, not a feature map [N,h,w,c]")
        path = out / f"{index:02d}_{name}.png"
        save_grid(activation_grid(maps), f"{name}  {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}", path)
        written.append(path)
    return written


# -- filter patterns -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterPatterns:
    """What gradient ascent made for one layer: pictures and each filter's mean activation."""

    layer: str
    filters: list[int]
    images: np.ndarray  # uint8 [F,H,W,C], deprocessed
    start_activation: np.ndarray  # float [F]: mean activation of filter i on its starting image
    end_activation: np.ndarray  # float [F]: the same after the ascent


def filter_patterns(
    keras_model: Any,
    layer_name: str,
    filters: Sequence[int],
    steps: int = FILTER_STEPS,
    step_size: float = FILTER_STEP_SIZE,
    seed: int = 0,
) -> FilterPatterns:
    """Gradient ascent for each filter of `layer_name` at once (image i climbs filter i)."""
    import keras
    import tensorflow as tf

    layer = _layer(keras_model, layer_name)
    channels = int(layer.output.shape[-1])
    bad = [f for f in filters if not 0 <= f < channels]
    if bad:
        raise VisualizeError(f"layer {layer_name!r} has {channels} filters; no filter {bad[0]}")
    extractor = keras.Model(keras_model.inputs, layer.output)
    height, width, depth = input_size(keras_model)
    rng = np.random.default_rng(seed)
    start = (128 + 20 * (rng.random((len(filters), height, width, depth)) - 0.5)).astype(np.float32)
    mask = tf.constant(np.eye(channels, dtype=np.float32)[list(filters)])  # [F,channels]: image i -> filter i

    def mean_activation(x: tf.Tensor) -> tf.Tensor:
        maps = extractor([x], training=False)  # [F,h,w,channels]
        selected = tf.reduce_sum(maps * mask[:, None, None, :], axis=-1)  # [F,h,w]
        # Leave out a border of 2 pixels as the book does: padding artefacts live there.
        if selected.shape[1] > 4 and selected.shape[2] > 4:
            selected = selected[:, 2:-2, 2:-2]
        return tf.reduce_mean(selected, axis=[1, 2])  # [F]

    image = tf.constant(start)  # [F,H,W,C]: grey with a little noise, 0..255
    before = mean_activation(image).numpy()
    # The ascent climbs the filter's response before its ReLU: a filter that is zero everywhere on
    # the grey start has no gradient after it, and would stay grey.
    activation = getattr(layer, "activation", None)
    try:
        if activation is not None:
            layer.activation = keras.activations.linear
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(image)
                score = tf.reduce_sum(mean_activation(image))  # image i only moves filter i
            grads = tape.gradient(score, image)  # [F,H,W,C]
            rms = tf.sqrt(tf.reduce_mean(tf.square(grads), axis=[1, 2, 3], keepdims=True)) + 1e-5
            image = image + step_size * grads / rms
    finally:
        if activation is not None:
            layer.activation = activation
    after = mean_activation(image).numpy()
    return FilterPatterns(layer_name, list(filters), deprocess(image.numpy()), before, after)


def deprocess(images: np.ndarray) -> np.ndarray:
    """float [F,H,W,C] -> uint8: each image centred, 0.1 std per 0.5 of the range, clipped (the book's)."""
    centred = images - images.mean(axis=(1, 2, 3), keepdims=True)
    spread = images.std(axis=(1, 2, 3), keepdims=True) + 1e-5
    return np.clip((centred / spread * 0.1 + 0.5) * 255, 0, 255).astype(np.uint8)


def default_filter_layers(keras_model: Any, count: int = 3) -> list[str]:
    """`count` convolution layers spread from the first to the last: edges, textures, parts."""
    names = conv_layers(keras_model)
    if not names:
        raise VisualizeError(f"{keras_model.name} has no convolution layer")
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def save_filter_sheet(patterns: Sequence[FilterPatterns], path: Path) -> None:
    """One row per layer, one picture per filter, titled with the layer and the filter index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(p.filters) for p in patterns)
    figure, axes = plt.subplots(
        len(patterns), columns, figsize=(1.3 * columns, 1.5 * len(patterns)), squeeze=False
    )
    for row, layer in enumerate(patterns):
        for column in range(columns):
            axis = axes[row][column]
            axis.axis("off")
            if column < len(layer.filters):
                picture = layer.images[column]
                axis.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray")
                axis.set_title(f"{layer.layer}:{layer.filters[column]}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- class activation heatmap --------------------------------------------------------------------


def gradcam_layer(model: str, keras_model: Any, keras_file: Path | None, runs_dir: Path) -> str:
    """The layer the export used: `last_conv_layer` from the run's metrics.json, else the last 4-D one."""
    folder = (keras_file or runs_dir / KERAS_FILE.get(model, Path(model) / "best.keras")).parent
    metrics = folder / "metrics.json"
    if metrics.is_file():
        name = json.loads(metrics.read_text()).get("last_conv_layer")
        if name:
            return str(name)
    for layer in reversed(keras_model.layers):
        if len(layer.output.shape) == 4:
            return str(layer.name)
    raise VisualizeError(f"{keras_model.name} has no 4-D feature map for Grad-CAM")


def heatmap(keras_model: Any, layer_name: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [K], heatmap [h,w] in 0..1) of one image [1,H,W,C] by `tf.GradientTape`."""
    from export.gradcam import gradcam_reference

    _layer(keras_model, layer_name)
    probabilities, maps = gradcam_reference(keras_model, layer_name, image)
    return probabilities[0], maps[0]


def class_names(model: str, count: int) -> list[str]:
    """The served label order: catdog's (`cat`, `dog`), else the class index (digits 0..9)."""
    if model == "catdog":
        from training.catdog import LABELS

        if len(LABELS) == count:
            return list(LABELS)
    return [str(i) for i in range(count)]


# -- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="See inside the trained convnets (the book's chapter 5).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--model", required=True, help="digits or catdog (finds the run's Keras model)")
        sub.add_argument("--keras", type=Path, help="the .keras file to use instead of the run's")
        sub.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="training runs folder (default runs/)")
        return sub

    acts = command("activations", "one PNG grid per conv/pooling layer of every channel's activation")
    acts.add_argument("image", type=Path, help="PNG/JPEG (or .npy) image")
    acts.add_argument("-o", "--output", type=Path, default=Path("activations"), help="folder (default activations/)")
    acts.add_argument("--layer", action="append", default=[], help="only this layer (repeatable)")

    filters = command("filters", "the input pattern each filter responds to most (gradient ascent)")
    filters.add_argument("-o", "--output", type=Path, default=Path("filters.png"), help="PNG sheet (default filters.png)")
    filters.add_argument("--layer", action="append", default=[], help="layer (repeatable; default: 3 conv layers first to last)")
    filters.add_argument("--filters", type=int, default=8, help="filters per layer, from index 0 (default 8)")
    filters.add_argument("--steps", type=int, default=FILTER_STEPS, help=f"ascent steps (default {FILTER_STEPS})")

    heat = command("heatmap", "Grad-CAM overlay from the Keras model (as `ml-client explain` draws the served one)")
    heat.add_argument("image", type=Path, help="PNG/JPEG image")
    heat.add_argument("-o", "--output", type=Path, default=Path("heatmap.png"), help="overlay PNG (default heatmap.png)")
    heat.add_argument("--raw", type=Path, help="also save the heatmap as .npy")
    heat.add_argument("--layer", help="Grad-CAM layer (default: the one the export used)")
    return parser


def run(args: argparse.Namespace) -> None:
    keras_model = load_keras_model(args.model, args.keras, args.runs_dir)
    if args.command == "activations":
        written = write_activations(keras_model, load_input(args.image, keras_model), args.output, args.layer)
        print(f"wrote {len(written)} activation grids to {args.output}/ ({written[0].name} ... {written[-1].name})")
    elif args.command == "filters":
        if args.filters < 1 or args.steps < 1:
            raise VisualizeError("--filters and --steps must be at least 1")
        patterns = []
        for name in args.layer or default_filter_layers(keras_model):
            channels = int(_layer(keras_model, name).output.shape[-1])
            found = filter_patterns(keras_model, name, range(min(args.filters, channels)), steps=args.steps)
            gain = float(np.mean(found.end_activation - found.start_activation))
            print(f"{name}: {len(found.filters)} filters, mean activation raised by {gain:.3g} on average")
            patterns.append(found)
        save_filter_sheet(patterns, args.output)
        print(f"wrote {args.output}")
    else:
        from clients.images import load_photo
        from clients.overlay import annotate, enlarge, overlay, save_png

        layer = args.layer or gradcam_layer(args.model, keras_model, args.keras, args.runs_dir)
        probabilities, maps = heatmap(keras_model, layer, load_input(args.image, keras_model))
        best = int(np.argmax(probabilities))
        label = class_names(args.model, len(probabilities))[best]
        caption = f"{label} {100 * probabilities[best]:.1f}%  Grad-CAM {maps.shape[0]}x{maps.shape[1]}"
        save_png(annotate(overlay(enlarge(load_photo(args.image)), maps), caption), args.output)  # as ml-client explain
        print(
            f"{args.image.name}: {label} ({probabilities[best]:.4f}); Grad-CAM of {layer} "
            f"{maps.shape[0]}x{maps.shape[1]} over the image: wrote {args.output}"
        )
        if args.raw is not None:
            np.save(args.raw, maps.astype(np.float32))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from training.common import import_tensorflow_quietly

        import_tensorflow_quietly()
        run(args)
    except VisualizeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
