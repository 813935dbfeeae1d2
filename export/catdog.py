"""Cats vs dogs export spec: raw pixels or encoded photos in, `probabilities` and Grad-CAM out.

SavedModel signatures (stock TensorFlow Serving serves the folder as is):

* `serving_default`: `image` float32 [N,H,W,3] RGB 0..255 at the model's size -> `probabilities` [N,2]
* `predict_image_bytes`: `image_bytes` string [N], JPEG/PNG/GIF/BMP of any size, decoded and resized
  in the graph (`training.datasets.cats_vs_dogs.decode_and_resize`) -> `probabilities`
* `explain`: `image` -> `probabilities`, `heatmap` float32 [N,h,w] in [0,1] (Grad-CAM of the predicted
  class on the last convolutional feature map, `export.gradcam.build_gradcam`)
* `explain_image_bytes`: `image_bytes` -> the same (a TF signature cannot take alternative inputs)
* `activations`: `image` -> one float32 [N,h,w,c] output per served convolution layer, named by the
  layer (8 of MobileNet's 27, first to last: `export.activations.served_layers`)
* `activations_image_bytes`: `image_bytes` -> the same

`evaluate` (used by `python -m export.evaluate catdog`) needs no TensorFlow: it scores the published
ONNX model on the test photos through the server's own path (Pillow decoding + ONNX Runtime). This
module therefore imports TensorFlow and the export pipeline lazily, inside `build_spec`.

ONNX: `model.onnx` (image -> probabilities), `explain.onnx` (image -> probabilities, heatmap) and
`activations.onnx` (image -> feature maps). The `*_image_bytes` signatures, `explain` and
`activations` carry a manifest `preprocess` (`kind: "image_bytes"`) so the ONNX server decodes bytes
with `serving.images.decode_image` (Pillow) and feeds `image`.

Checks before publishing (any failure -> nothing is published):

1. `image_decoding`: `serving.images.decode_image` vs the SavedModel's in-graph decoding on every
   parity photo plus re-encoded variants (PNG, grayscale, RGBA, tiny and wide images); max |pixel
   difference| <= `DECODE_ATOL` (measured 0.0: Pillow's libjpeg-turbo with the accurate DCT and the
   numpy half-pixel bilinear resize reproduce TensorFlow's output).
2. `gradcam_vs_gradient_tape`: the forward-only Grad-CAM against `tf.GradientTape`.
3. `activations_vs_keras`: the exported feature maps against the Keras model's intermediate outputs.
4. Parity, SavedModel vs ONNX Runtime on real test photos at batch sizes 1 and 32: `serving_default`,
   `explain` and `activations` on decoded images; the `*_image_bytes` signatures through the whole
   server path (Pillow decoding + ONNX) against TensorFlow's decoding + model.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.images import decode_image, decode_images
from serving.manifest import Manifest, Preprocess
from training import catdog
from training.common import MissingDataError, read_metrics
from training.datasets import cats_vs_dogs

if TYPE_CHECKING:
    from export.evaluate import Evaluation
    from export.pipeline import ExportSpec

PARITY_PHOTOS = 96  # real test photos (half cats, half dogs) for the parity checks
GRADCAM_PHOTOS = 16
PARITY_BATCH_SIZES = (1, 32)
PROBABILITIES_ATOL = 1e-4
HEATMAP_ATOL = 1e-3
GRADCAM_HEATMAP_ATOL = 1e-4
DECODE_ATOL = 1e-3  # pixel values 0..255


def image_bytes_preprocess(height: int, width: int) -> Preprocess:
    """Server-side decoding of `image_bytes` into the `image` tensor (see `serving.images`)."""
    return Preprocess(
        kind="image_bytes",
        input="image_bytes",
        output="image",
        params={"height": height, "width": width, "channels": 3, "resize": "bilinear"},
    )


def decode_batch_graph(image_bytes: Any, height: int, width: int) -> Any:
    """TF graph: string [N] -> float32 [N,height,width,3] RGB 0..255, one photo at a time."""
    import tensorflow as tf

    return tf.map_fn(
        lambda data: cats_vs_dogs.decode_and_resize(data, height, width),
        image_bytes,
        fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32),
    )


def variant_images(photos: Sequence[Path], count: int = 6) -> list[bytes]:
    """Re-encodings of real photos that exercise the other decoding paths: PNG (RGB, RGBA, grayscale),
    grayscale JPEG, and sizes smaller than or as wide as the model input (upscaling, extreme aspect)."""
    from PIL import Image

    variants: list[bytes] = []
    for index, path in enumerate(photos[:count]):
        with Image.open(path) as photo:
            rgb = photo.convert("RGB")
        choices: list[tuple[Image.Image, str]] = [
            (rgb, "PNG"),
            (rgb.convert("RGBA"), "PNG"),
            (rgb.convert("L"), "PNG"),
            (rgb.convert("L"), "JPEG"),
            (rgb.resize((37, 23)), "JPEG"),
            (rgb.resize((600, 90)), "PNG"),
        ]
        image, fmt = choices[index % len(choices)]
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        variants.append(buffer.getvalue())
    return variants


def decoding_check(blobs: Sequence[bytes], height: int, width: int) -> dict[str, Any]:
    """Pillow + numpy (`serving.images`) vs TensorFlow's in-graph decoding: max |pixel difference|."""
    import tensorflow as tf

    worst = 0.0
    for blob in blobs:
        expected = cats_vs_dogs.decode_and_resize(tf.constant(blob), height, width).numpy()  # [H,W,3]
        actual = decode_image(blob, height, width, 3)  # [H,W,3]
        worst = max(worst, float(np.max(np.abs(actual - expected))))
    return {
        "n_images": len(blobs),
        "max_abs_pixel_diff": worst,
        "atol": DECODE_ATOL,
        "passed": worst <= DECODE_ATOL,
    }


def build_spec(
    run_dir: Path,
    data_dir: Path,
    approach: str = catdog.SERVED_APPROACH,
    dataset_dir: Path | None = None,
    parity_photos: int = PARITY_PHOTOS,
) -> ExportSpec:
    """The catdog `ExportSpec` from `run_dir/<approach>/best.keras` and the dataset's test photos."""
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

    model_path = run_dir / approach / catdog.BEST_MODEL
    metrics_path = run_dir / approach / catdog.METRICS_FILE
    for needed in (model_path, metrics_path):
        if not needed.is_file():
            raise MissingDataError(
                f"{needed} not found: train first with `python -m training catdog --approach {approach} --out {run_dir}`"
            )
    model = keras.models.load_model(model_path, compile=False)
    metrics = read_metrics(metrics_path)
    layer_name = str(metrics.get("last_conv_layer") or catdog.last_conv_layer(model))
    _, height, width, channels = model.input_shape
    if channels != 3 or height is None or width is None:
        raise MissingDataError(f"{model_path}: expected a fixed RGB input, got {model.input_shape}")
    metrics = {**metrics, "approaches": _approach_summary(run_dir)}

    root = cats_vs_dogs.locate(data_dir, dataset_dir)
    paths, labels = cats_vs_dogs.list_split(root, "test")
    # Alternate cats and dogs so any prefix holds both classes.
    order = np.argsort(np.arange(len(paths)) % max(1, int(labels.sum())), kind="stable")
    chosen = [paths[i] for i in order[:parity_photos]]
    blobs = [path.read_bytes() for path in chosen] + variant_images(chosen)
    image_bytes = np.array(blobs, dtype=object)  # string [n]
    images = decode_images(blobs, height, width, 3)  # float32 [n,H,W,3]

    image_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="image")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    explain_heatmap = build_gradcam(model, layer_name)
    layers = served_layers(model)
    feature_maps = build_activations(model, layers)
    activations_atol = tolerances(feature_maps, images)

    @tf.function(input_signature=[image_spec])
    def serving_default(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {catdog.OUTPUT_NAME: model(image, training=False)}  # [N,2]

    @tf.function(input_signature=[bytes_spec])
    def predict_image_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        image = decode_batch_graph(image_bytes, height, width)  # [N,H,W,3]
        return {catdog.OUTPUT_NAME: model(image, training=False)}  # [N,2]

    @tf.function(input_signature=[image_spec])
    def explain(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, heatmap = explain_heatmap(image)  # [N,2], [N,h,w]
        return {catdog.OUTPUT_NAME: probabilities, "heatmap": heatmap}

    @tf.function(input_signature=[bytes_spec])
    def explain_image_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, heatmap = explain_heatmap(decode_batch_graph(image_bytes, height, width))
        return {catdog.OUTPUT_NAME: probabilities, "heatmap": heatmap}

    @tf.function(input_signature=[image_spec])
    def activations(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return feature_maps(image)  # {layer: [N,h,w,c]}

    @tf.function(input_signature=[bytes_spec])
    def activations_image_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return feature_maps(decode_batch_graph(image_bytes, height, width))

    def pillow_feed(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image": decode_images(list(batch["image_bytes"]), height, width, 3)}  # the server's path

    def gradcam_check() -> dict[str, Any]:
        figures = compare_with_reference(model, layer_name, images[:GRADCAM_PHOTOS], explain_heatmap)
        passed = (
            figures["heatmap_max_abs_diff"] <= GRADCAM_HEATMAP_ATOL
            and figures["probabilities_max_abs_diff"] <= PROBABILITIES_ATOL
        )
        return {**figures, "layer": layer_name, "atol": GRADCAM_HEATMAP_ATOL, "passed": passed}

    preprocess = image_bytes_preprocess(height, width)
    both = {catdog.OUTPUT_NAME: PROBABILITIES_ATOL, "heatmap": HEATMAP_ATOL}
    return ExportSpec(
        name="catdog",
        task="image_classification",
        labels=catdog.LABELS,
        trackable=model,
        signatures=(
            Signature("serving_default", serving_default, "model.onnx"),
            Signature(
                "predict_image_bytes",
                predict_image_bytes,
                "model.onnx",
                convert=False,
                onnx_inputs={"image": "image"},
                preprocess=preprocess,
            ),
            Signature("explain", explain, "explain.onnx", preprocess=preprocess),
            Signature(
                "explain_image_bytes",
                explain_image_bytes,
                "explain.onnx",
                convert=False,
                onnx_inputs={"image": "image"},
                preprocess=preprocess,
            ),
            Signature(ACTIVATIONS_SIGNATURE, activations, ACTIVATIONS_ONNX, preprocess=preprocess),
            Signature(
                f"{ACTIVATIONS_SIGNATURE}_image_bytes",
                activations_image_bytes,
                ACTIVATIONS_ONNX,
                convert=False,
                onnx_inputs={"image": "image"},
                preprocess=preprocess,
            ),
        ),
        parity=(
            ParityCheck(
                "serving_default",
                {"image": images},
                {catdog.OUTPUT_NAME: PROBABILITIES_ATOL},
                PARITY_BATCH_SIZES,
            ),
            ParityCheck(
                "predict_image_bytes",
                {"image_bytes": image_bytes},
                {catdog.OUTPUT_NAME: PROBABILITIES_ATOL},
                PARITY_BATCH_SIZES,
                onnx_feed=pillow_feed,
            ),
            ParityCheck("explain", {"image": images}, both, PARITY_BATCH_SIZES),
            ParityCheck(
                "explain_image_bytes",
                {"image_bytes": image_bytes},
                both,
                PARITY_BATCH_SIZES,
                onnx_feed=pillow_feed,
            ),
            ParityCheck(
                ACTIVATIONS_SIGNATURE, {"image": images}, activations_atol, PARITY_BATCH_SIZES, argmax=()
            ),
            ParityCheck(
                f"{ACTIVATIONS_SIGNATURE}_image_bytes",
                {"image_bytes": image_bytes},
                activations_atol,
                PARITY_BATCH_SIZES,
                argmax=(),
                onnx_feed=pillow_feed,
            ),
        ),
        metrics=metrics,
        extra_checks=(
            ExtraCheck("image_decoding", lambda: decoding_check(blobs, height, width)),
            ExtraCheck("gradcam_vs_gradient_tape", gradcam_check),
            ExtraCheck(
                "activations_vs_keras",
                lambda: keras_check(model, layers, feature_maps, images, activations_atol),
            ),
        ),
    )


def evaluate(
    version_dir: Path, manifest: Manifest, data_dir: Path, dataset_dir: Path | None = None
) -> Evaluation:
    """Accuracy of the published ONNX model on the test photos, decoded as the server decodes bytes."""
    from export.evaluate import Evaluation, onnx_session, predict_classes

    start = time.perf_counter()
    preprocess = manifest.signatures["predict_image_bytes"].preprocess
    if preprocess is None:
        raise MissingDataError(f"{version_dir}: predict_image_bytes has no image_bytes preprocess")
    height, width = int(preprocess.params["height"]), int(preprocess.params["width"])
    paths, labels = cats_vs_dogs.list_split(cats_vs_dogs.locate(data_dir, dataset_dir), "test")
    images = decode_images([path.read_bytes() for path in paths], height, width, 3)  # [N,H,W,3]
    session = onnx_session(version_dir, manifest)
    predicted = predict_classes(session, manifest, {"image": images}, batch_size=50)  # [N]
    return Evaluation(
        name=manifest.name,
        version=manifest.version,
        accuracy=float(np.mean(predicted == labels)),
        target=catdog.TARGET_ACCURACY,
        n_examples=len(labels),
        seconds=time.perf_counter() - start,
    )


def _approach_summary(run_dir: Path) -> dict[str, Any]:
    """Validation/test accuracy and wall time of every approach trained in `run_dir` (for the manifest)."""
    combined = run_dir / catdog.METRICS_FILE
    if not combined.is_file():
        return {}
    approaches = read_metrics(combined).get("approaches", {})
    keys = ("validation_accuracy", "test_accuracy", "epochs", "seconds", "image_size", "base")
    return {name: {k: m.get(k) for k in keys} for name, m in approaches.items()}


def overlay_image(photo: bytes, heatmap: np.ndarray, alpha: float = 0.4, max_side: int = 256) -> Any:
    """The book's Grad-CAM picture: `heatmap` [h,w] in [0,1] through the jet colormap, resized onto the photo.

    Returns a Pillow RGB image of the photo (longer side at most `max_side`) with the coloured heatmap
    blended in at `alpha`.
    """
    import matplotlib
    from PIL import Image

    with Image.open(io.BytesIO(photo)) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((max_side, max_side))
    jet = matplotlib.colormaps["jet"](np.arange(256))[:, :3]  # [256,3] in [0,1]
    colored = (jet[np.uint8(np.clip(heatmap, 0, 1) * 255)] * 255).astype(np.uint8)  # [h,w,3]
    colored_image = Image.fromarray(colored).resize(picture.size, Image.Resampling.BILINEAR)
    blended = np.asarray(colored_image, np.float32) * alpha + np.asarray(picture, np.float32) * (1 - alpha)
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def write_overlay(
    version_dir: Path, photo: Path, destination: Path, max_bytes: int = 150_000
) -> dict[str, Any]:
    """Explain `photo` with the published `explain.onnx` (server path: Pillow decoding + ONNX Runtime) and
    write the photo and its overlay side by side as a PNG (palette-quantized if it would exceed `max_bytes`).
    """
    import onnxruntime as ort
    from PIL import Image

    from serving.manifest import read_manifest

    manifest = read_manifest(version_dir)
    signature = manifest.signatures["explain"]
    params = signature.preprocess.params if signature.preprocess else {}
    data = photo.read_bytes()
    image = decode_images([data], int(params["height"]), int(params["width"]), 3)  # [1,H,W,3]
    session = ort.InferenceSession(str(version_dir / signature.onnx.file), providers=["CPUExecutionProvider"])
    names = [signature.onnx.outputs["probabilities"], signature.onnx.outputs["heatmap"]]
    probabilities, heatmap = session.run(names, {signature.onnx.inputs["image"]: image})  # [1,2], [1,h,w]
    overlay = overlay_image(data, heatmap[0])
    with Image.open(photo) as opened:
        original = opened.convert("RGB")
    original.thumbnail(overlay.size)
    sheet = Image.new("RGB", (overlay.width * 2 + 4, overlay.height), "white")
    sheet.paste(original, (0, 0))
    sheet.paste(overlay, (overlay.width + 4, 0))
    destination.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(destination, format="PNG", optimize=True)
    if destination.stat().st_size > max_bytes:
        sheet.quantize(colors=256).save(destination, format="PNG", optimize=True)
    label = manifest.labels[int(probabilities[0].argmax())]
    return {
        "label": label,
        "probabilities": probabilities[0].tolist(),
        "heatmap_shape": list(heatmap.shape[1:]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m export.catdog overlay PHOTO [--version-dir DIR] [--out PNG]`: the docs' Grad-CAM picture."""
    import argparse
    import sys

    from export.evaluate import newest_version
    from training.common import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m export.catdog", description=main.__doc__)
    parser.add_argument("command", choices=["overlay"])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--version-dir", type=Path, help="default: the newest version under models/catdog")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "catdog_overlay.png")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    version_dir = args.version_dir or newest_version(REPO_ROOT / "models" / "catdog")[0]
    result = write_overlay(version_dir, args.photo, args.out)
    print(
        f"{args.photo.name}: {result['label']} {result['probabilities']} -> {args.out} ({args.out.stat().st_size} bytes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
