"""`python -m export <model> [--run runs/<model>] [--models-dir models]`: publish the next model version.

`python -m export convert --model-dir PATH --name NAME`: the same for the user's own Keras model or
SavedModel (`export/convert.py`).

Each model contributes a *spec builder* `(run_dir, data_dir) -> ExportSpec` (labels, signatures,
parity data and tolerances); `EXPORTERS` maps the model name to it as `"module:function"`, imported
lazily: `export/digits.py`, `export/catdog.py` and `export/sentiment.py`, each with a `build_spec`
function. This module is only the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.common import REPO_ROOT, MissingDataError, resolve_data_dir

SpecBuilder = Callable[[Path, Path], Any]  # (run_dir, data_dir) -> export.pipeline.ExportSpec

EXPORTERS: dict[str, str] = {
    "digits": "export.digits:build_spec",
    "catdog": "export.catdog:build_spec",
    "sentiment": "export.sentiment:build_spec",
}
DEFAULT_MODELS_DIR = REPO_ROOT / "models"


def load_builder(name: str) -> SpecBuilder:
    module_name, _, function = EXPORTERS[name].partition(":")
    return getattr(importlib.import_module(module_name), function)


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
        if isinstance(figures, dict) and isinstance(figures.get("layers"), list):
            worst = max(figures["max_abs_diff"].values(), default=0.0)
            lines.append(f"  {name}: {len(figures['layers'])} layers, max |diff| {worst:.2e}")
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
