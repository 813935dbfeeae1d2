"""Helpers every training module shares: data folder, seeding, CPU threads, metrics, curves.

Nothing here imports TensorFlow at import time (``export.evaluate`` reuses `resolve_data_dir` and
`classification_metrics` without TF); the functions that need TF or matplotlib import them lazily.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "DATA_DIR"


class MissingDataError(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable; the message says which and where to get it."""


def default_data_dir() -> Path:
    """`../shared/data` relative to the repository root when it exists, else `<repo>/data`."""
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def resolve_data_dir(
    flag: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The data folder: the `--data-dir` flag, else `$DATA_DIR`, else `default_data_dir()`."""
    env = os.environ if environ is None else environ
    if flag:
        return Path(flag).expanduser().resolve()
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser().resolve()
    return default_data_dir()


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and (when it is already imported or importable) Keras/TensorFlow."""
    random.seed(seed)
    np.random.seed(seed)
    import keras  # lazy: TF start-up is slow and evaluate-only callers never need it

    keras.utils.set_random_seed(seed)


# What TensorFlow's C++ side writes to stderr at import and device discovery on a machine without a
# GPU: absl's preamble, "Could not find cuda drivers", "failed call to cuInit: ... (303)", the CPU
# feature notice. Harmless, but it reads like a crash to a new user. TF 2.21 logs it through absl,
# which TF_CPP_MIN_LOG_LEVEL does not silence, so it is filtered at the file descriptor.
_NO_GPU_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc"
    r"|Could not find cuda drivers|failed call to cuInit|cpu_feature_guard\.cc|To enable the following instructions"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|oneDNN custom operations"
)


def import_tensorflow_quietly() -> list[str]:
    """Import TensorFlow and find its devices with stderr captured; on a machine where it finds no
    GPU, drop the CUDA-absence notices and pass every other line through. Returns the lines dropped.

    Called once by the training entry point before a model module imports Keras; where a GPU is
    found, everything TensorFlow said is shown unchanged.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode("utf-8", "replace").splitlines()
    dropped = [line for line in lines if not gpus and _NO_GPU_NOISE.search(line)]
    kept = [line for line in lines if line not in dropped]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    return dropped


def configure_cpu(threads: int | None = None) -> int:
    """Cap TensorFlow's thread pools (the CPU is shared); returns the intra-op thread count used.

    Must run before TensorFlow executes its first op. `threads=None` uses `$TRAIN_THREADS` or all cores.
    """
    import tensorflow as tf

    count = threads or int(os.environ.get("TRAIN_THREADS", "0")) or (os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(min(count, 2))
    except RuntimeError:
        # TF was already initialised (e.g. a second run in one pytest session): keep its settings.
        pass
    return count


def classification_metrics(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall) and confusion matrix (rows: true class, columns: predicted)."""
    n_classes = len(class_names)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # [N]
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)  # [N]
    if labels.shape != predicted.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predicted.shape[0]} predictions")
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)  # [true, predicted]
    np.add.at(confusion, (labels, predicted), 1)
    per_class_total = confusion.sum(axis=1)
    per_class = {
        name: (float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else None)
        for i, name in enumerate(class_names)
    }
    return {
        "test_accuracy": float(np.mean(labels == predicted)) if labels.size else 0.0,
        "n_test": int(labels.size),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> Path:
    """Write `metrics` as indented JSON (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_metrics(path: Path) -> dict[str, Any]:
    """Read a `metrics.json` written by `write_metrics`."""
    return dict(json.loads(path.read_text()))


def best_epoch(history: Mapping[str, Sequence[float]], monitor: str = "val_accuracy") -> int | None:
    """1-based epoch with the best `monitor` value (highest accuracy, lowest loss); None without it."""
    values = list(history.get(monitor) or ())
    if not values:
        return None
    pick = min if "loss" in monitor else max
    return values.index(pick(values)) + 1


def plot_curves(
    history: Mapping[str, Sequence[float]],
    path: Path,
    title: str,
    monitor: str = "val_accuracy",
    stages: Sequence[tuple[int, str]] = (),
) -> Path:
    """Plot loss and accuracy per epoch (training and validation) into a PNG with matplotlib's Agg.

    The best epoch by `monitor` (the one the checkpoint keeps) is marked on both panels, and each
    `(epoch, name)` in `stages` draws a dotted line after that epoch: where a two-stage run switched
    (GloVe frozen -> fine-tuned, catdog head -> top block unfrozen).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_epoch(history, monitor)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "o-"), (f"val_{metric}", "s--")):
            values = history.get(key)
            if values:
                axis.plot(range(1, len(values) + 1), values, style, label=key, markersize=3)
        if best is not None:
            axis.axvline(best, color="tab:green", alpha=0.6, linewidth=1.5, label=f"best epoch {best} ({monitor})")
            validation = history.get(f"val_{metric}")
            if validation and best <= len(validation):
                axis.plot([best], [validation[best - 1]], "*", color="tab:green", markersize=12)
        for epoch, name in stages:
            axis.axvline(epoch + 0.5, color="tab:gray", linestyle=":", linewidth=1.5, label=f"after epoch {epoch}: {name}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Stopwatch:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start
