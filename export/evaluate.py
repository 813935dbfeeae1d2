"""`python -m export.evaluate [--models-dir models] [MODEL ...]`: score published ONNX models on test data.

For each model, loads the newest published version's `serving_default` ONNX file with ONNX Runtime
(no TensorFlow), evaluates it on the genuine test set and prints the accuracy next to the target.
Exits 1 when a model is below its target, 2 when one cannot be evaluated.

`EVALUATORS` maps a model name to `(version_dir, manifest, data_dir) -> Evaluation`; catdog and
sentiment register theirs (as `"module:function"`, imported lazily).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.manifest import Manifest, ManifestError, read_manifest
from training.common import REPO_ROOT, MissingDataError, resolve_data_dir


@dataclass(frozen=True)
class Evaluation:
    name: str
    version: int
    accuracy: float
    target: float
    n_examples: int
    seconds: float

    @property
    def passed(self) -> bool:
        return self.accuracy >= self.target

    def line(self) -> str:
        verdict = "OK" if self.passed else "BELOW TARGET"
        return (
            f"{self.name} v{self.version}: accuracy {self.accuracy:.4f} on {self.n_examples} test examples, "
            f"target {self.target:.4f}: {verdict} ({self.seconds:.1f} s)"
        )


Evaluator = Callable[[Path, Manifest, Path], Evaluation]

EVALUATORS: dict[str, str] = {
    "digits": f"{__name__}:evaluate_digits",
    "catdog": "export.catdog:evaluate",
    "sentiment": "export.sentiment:evaluate",
}


def newest_version(model_dir: Path) -> tuple[Path, Manifest]:
    """The highest integer version folder whose manifest reads and verifies."""
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.is_dir() else [],
        key=lambda p: int(p.name),
        reverse=True,
    )
    problems: list[str] = []
    for version_dir in versions:
        try:
            return version_dir, read_manifest(version_dir)
        except ManifestError as exc:
            problems.append(str(exc))
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise MissingDataError(
        f"no loadable version under {model_dir}{detail}: run `python -m export {model_dir.name}`"
    )


def onnx_session(
    version_dir: Path, manifest: Manifest, signature: str = "serving_default"
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    binding = manifest.signatures[signature].onnx
    return ort.InferenceSession(str(version_dir / binding.file), options, providers=["CPUExecutionProvider"])


def predict_classes(
    session: ort.InferenceSession, manifest: Manifest, inputs: dict[str, np.ndarray], batch_size: int = 500
) -> np.ndarray:
    """argmax of `serving_default`'s `probabilities`, in batches; `inputs` keyed by request tensor name."""
    binding = manifest.signatures["serving_default"].onnx
    output = binding.outputs["probabilities"]
    n = len(next(iter(inputs.values())))
    classes = []
    for start in range(0, n, batch_size):
        feed = {binding.inputs[name]: values[start : start + batch_size] for name, values in inputs.items()}
        (probabilities,) = session.run([output], feed)  # [B,K]
        classes.append(probabilities.argmax(axis=-1))
    return np.concatenate(classes)


def evaluate_digits(version_dir: Path, manifest: Manifest, data_dir: Path) -> Evaluation:
    """Digits on the genuine 10k MNIST test set."""
    from training.datasets import mnist
    from training.digits import TARGET_ACCURACY

    start = time.perf_counter()
    test = mnist.load_test(data_dir)
    session = onnx_session(version_dir, manifest)
    predicted = predict_classes(session, manifest, {"image": test.images.astype(np.float32)})  # [N]
    return Evaluation(
        name=manifest.name,
        version=manifest.version,
        accuracy=float(np.mean(predicted == test.labels)),
        target=TARGET_ACCURACY,
        n_examples=len(test),
        seconds=time.perf_counter() - start,
    )


def load_evaluator(name: str) -> Evaluator:
    module_name, _, function = EVALUATORS[name].partition(":")
    return getattr(importlib.import_module(module_name), function)


def evaluate(name: str, models_dir: Path, data_dir: Path) -> Evaluation:
    """Evaluate the newest published version of `name`."""
    version_dir, manifest = newest_version(models_dir / name)
    return load_evaluator(name)(version_dir, manifest, data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help=f"default: {' '.join(EVALUATORS)} (those published)"
    )
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data-dir", help="folder with the datasets (default: $DATA_DIR or ../shared/data)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    unknown = [name for name in args.models if name not in EVALUATORS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(EVALUATORS)}")
    names = args.models or [name for name in EVALUATORS if (args.models_dir / name).is_dir()]
    if not names:
        print(f"error: no published models under {args.models_dir}", file=sys.stderr)
        return 2
    data_dir = resolve_data_dir(args.data_dir)
    status = 0
    for name in names:
        try:
            result = evaluate(name, args.models_dir, data_dir)
        except (MissingDataError, ManifestError, ImportError) as exc:
            print(f"{name}: cannot evaluate: {exc}", file=sys.stderr)
            status = 2
            continue
        print(result.line(), flush=True)
        if not result.passed:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
