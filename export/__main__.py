"""`python -m export <model> [--run runs/<model>] [--models-dir models]`: publish the next model version.

`python -m export convert --model-dir PATH --name NAME`: the same for the user's own Keras model or
SavedModel (`export/convert.py`).

Each model contributes a *spec builder* `(run_dir, data_dir) -> ExportSpec` (labels, signatures,
parity data and tolerances); `EXPORTERS` maps the model name to it as `"module:function"`, imported
lazily. The digits builder lives here; catdog and sentiment add `export/catdog.py` and
`export/sentiment.py` with a `build_spec` function.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.common import REPO_ROOT, MissingDataError, read_metrics, resolve_data_dir

SpecBuilder = Callable[[Path, Path], Any]  # (run_dir, data_dir) -> export.pipeline.ExportSpec

EXPORTERS: dict[str, str] = {
    "digits": f"{__name__}:digits_spec",
    "catdog": "export.catdog:build_spec",
    "sentiment": "export.sentiment:build_spec",
}
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
DIGITS_PARITY_EXAMPLES = 512
DIGITS_GRADCAM_EXAMPLES = 64
DIGITS_PROBABILITIES_ATOL = 1e-5
DIGITS_HEATMAP_ATOL = 1e-4


def load_builder(name: str) -> SpecBuilder:
    module_name, _, function = EXPORTERS[name].partition(":")
    return getattr(importlib.import_module(module_name), function)


def digits_spec(run_dir: Path, data_dir: Path, parity_examples: int = DIGITS_PARITY_EXAMPLES) -> Any:
    """Digits: `serving_default` (image -> probabilities) and `explain` (+ Grad-CAM heatmap [N,3,3])."""
    import keras
    import tensorflow as tf

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

    @tf.function(input_signature=[image_spec])
    def serving_default(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {digits.OUTPUT_NAME: model(image, training=False)}  # [N,10]

    @tf.function(input_signature=[image_spec])
    def explain(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, heatmap = explain_heatmap(image)  # [N,10], [N,3,3]
        return {digits.OUTPUT_NAME: probabilities, "heatmap": heatmap}

    def gradcam_check() -> dict[str, Any]:
        figures = compare_with_reference(
            model, digits.LAST_CONV_LAYER, images[:DIGITS_GRADCAM_EXAMPLES], explain_heatmap
        )
        passed = (
            figures["heatmap_max_abs_diff"] <= DIGITS_HEATMAP_ATOL
            and figures["probabilities_max_abs_diff"] <= DIGITS_PROBABILITIES_ATOL
        )
        return {**figures, "atol": DIGITS_HEATMAP_ATOL, "passed": passed}

    return ExportSpec(
        name="digits",
        task="image_classification",
        labels=digits.LABELS,
        trackable=model,
        signatures=(
            Signature("serving_default", serving_default, "model.onnx"),
            Signature("explain", explain, "explain.onnx"),
        ),
        parity=(
            ParityCheck("serving_default", {"image": images}, {"probabilities": DIGITS_PROBABILITIES_ATOL}),
            ParityCheck(
                "explain",
                {"image": images},
                {"probabilities": DIGITS_PROBABILITIES_ATOL, "heatmap": DIGITS_HEATMAP_ATOL},
            ),
        ),
        metrics=metrics,
        extra_checks=(ExtraCheck("gradcam_vs_gradient_tape", gradcam_check),),
    )


def describe(published: Any) -> str:
    """Human-readable parity figures and the published path."""
    lines = []
    for check in published.manifest.parity["checks"]:
        diffs = ", ".join(
            f"{name} {value:.2e} (atol {check['atol'][name]:.0e})"
            for name, value in check["max_abs_diff"].items()
        )
        lines.append(
            f"  parity {check['signature']} ({check['onnx_file']}, {check['n_examples']} examples, "
            f"batch sizes {check['batch_sizes']}): max |diff| {diffs}; argmax disagreements "
            f"{sum(check['argmax_disagreements'].values())}"
        )
    for name, figures in published.manifest.parity.items():
        if isinstance(figures, dict) and "heatmap_max_abs_diff" in figures:
            lines.append(f"  {name}: heatmap max |diff| {figures['heatmap_max_abs_diff']:.2e}")
    lines.append(f"published {published.manifest.name} version {published.version}: {published.path}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # the user's own model: export/convert.py
        from export.convert import main as convert

        return convert(argv[1:], DEFAULT_MODELS_DIR, describe)
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Publish the next version of a model; `python -m export convert --help`: your own "
        "Keras model or SavedModel.",
    )
    parser.add_argument("model", choices=sorted(EXPORTERS))
    parser.add_argument("--run", type=Path, help="training run folder (default: runs/<model>)")
    parser.add_argument(
        "--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="model repository (default: models)"
    )
    parser.add_argument("--data-dir", help="folder with the datasets (default: $DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)

    from training.common import configure_cpu

    configure_cpu()
    from export.pipeline import ExportError, publish

    run_dir = args.run or REPO_ROOT / "runs" / args.model
    try:
        spec = load_builder(args.model)(run_dir, resolve_data_dir(args.data_dir))
        published = publish(spec, args.models_dir)
    except (MissingDataError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(published), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
