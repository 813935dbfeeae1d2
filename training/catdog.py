"""Cats vs dogs (Deep Learning with Python, chapter 8): the book's four approaches on a small dataset.

Approaches (`--approach`, each trains, reloads its best checkpoint and reports validation and test
accuracy; `all` runs the four and writes the comparison):

1. `scratch`: a small convnet trained from scratch, with data augmentation and dropout.
2. `features`: a pretrained convolutional base run once over every photo (no augmentation); a new
   dense classifier is trained on the stored features.
3. `features-aug`: the frozen pretrained base plus a new head, trained end to end on augmented photos.
4. `finetune` (the served model): as 3 first (head trained, base frozen), then the base's top block
   is unfrozen and trained with the head at a low learning rate. BatchNormalization layers stay frozen,
   which in Keras 3 means they run in inference mode (training=False) even while fitting.

The pretrained base is configurable (`--base`): offline default MobileNet v1 alpha 0.25 with Keras's
ImageNet weights read from `DATA_DIR/weights/mobilenet_2_5_224_tf_no_top.h5`; online, `vgg16` as in the
book or another `keras.applications` base with `--weights imagenet`.

Every model takes raw RGB pixels (`image`, float32 [N,H,W,3], 0..255) and preprocesses them itself
(`Rescaling` or a fixed 1x1 convolution for Caffe-style bases); augmentation (RandomFlip,
RandomRotation, RandomZoom) lives in the tf.data pipeline only. The output layer `probabilities` is a
2-way softmax (`cat`, `dog`). The base's layers are wired into one flat functional model, so the last
convolutional feature map is a layer of the model itself (the Grad-CAM target, `last_conv_layer`).

Run folder (`runs/catdog/`): `<approach>/best.keras` (best validation loss, reloaded before the final
evaluation), `<approach>/metrics.json`, `<approach>/curves.png`; `metrics.json` (all approaches run so
far), `comparison.md` (README-ready table) and `curves.png` (validation accuracy of each approach).

    python -m training catdog [--approach scratch|features|features-aug|finetune|all]
                              [--base mobilenet|vgg16|...] [--weights PATH|imagenet|none]
                              [--image-size N] [--epochs-scale F] [--out runs/catdog]
                              [--data-dir DIR] [--dataset-dir DIR] [--download] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.common import (
    REPO_ROOT,
    MissingDataError,
    Stopwatch,
    classification_metrics,
    configure_cpu,
    plot_curves,
    read_metrics,
    resolve_data_dir,
    set_seed,
    write_metrics,
)
from training.datasets import cats_vs_dogs

LABELS = cats_vs_dogs.LABELS  # ("cat", "dog")
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
SCRATCH_LAST_CONV = "conv5"
APPROACHES: tuple[str, ...] = ("scratch", "features", "features-aug", "finetune")
SERVED_APPROACH = "finetune"
DEFAULT_OUT = REPO_ROOT / "runs" / "catdog"
BEST_MODEL = "best.keras"
METRICS_FILE = "metrics.json"
COMPARISON_FILE = "comparison.md"
CURVES_FILE = "curves.png"
TARGET_ACCURACY = 0.90  # fine-tuned model on the test split
MOBILENET_WEIGHTS = Path("weights") / "mobilenet_2_5_224_tf_no_top.h5"


@dataclass(frozen=True)
class Base:
    """A `keras.applications` convolutional base and how to use it."""

    name: str
    constructor: str  # attribute of keras.applications
    preprocessing: str  # "tf": [-1, 1]; "caffe": BGR minus ImageNet means; "torch": ImageNet mean/std; "none"
    top_block: str  # first layer of the block unfrozen for fine-tuning
    image_size: int = 224
    kwargs: tuple[tuple[str, Any], ...] = ()


BASES: dict[str, Base] = {
    "mobilenet": Base("mobilenet", "MobileNet", "tf", "conv_dw_13", kwargs=(("alpha", 0.25),)),
    "mobilenet_v2": Base("mobilenet_v2", "MobileNetV2", "tf", "block_16_expand"),
    "vgg16": Base("vgg16", "VGG16", "caffe", "block5_conv1", image_size=180),
    "resnet50": Base("resnet50", "ResNet50", "caffe", "conv5_block3_1_conv"),
    "xception": Base("xception", "Xception", "tf", "block14_sepconv1"),
    "densenet121": Base("densenet121", "DenseNet121", "torch", "conv5_block16_1_conv"),
    "efficientnet_b0": Base("efficientnet_b0", "EfficientNetB0", "none", "block7a_expand_conv"),
}
DEFAULT_BASE = "mobilenet"
_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
_IMAGENET_STD_RGB = (58.393, 57.12, 57.375)


@dataclass(frozen=True)
class Schedule:
    """Epochs and learning rates of one approach (stage 2 is fine-tuning's unfrozen phase)."""

    epochs: int
    learning_rate: float
    batch_size: int = 32
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    early_stopping_patience: int | None = None


SCHEDULES: dict[str, Schedule] = {
    # From scratch needs many epochs; on 1,200 photos and 2 cores, 40 is where it plateaus.
    "scratch": Schedule(epochs=40, learning_rate=1e-3, early_stopping_patience=10),
    "features": Schedule(epochs=30, learning_rate=1e-3, early_stopping_patience=10),
    "features-aug": Schedule(epochs=20, learning_rate=1e-3, early_stopping_patience=8),
    "finetune": Schedule(epochs=10, learning_rate=1e-3, fine_tune_epochs=15, fine_tune_learning_rate=1e-5),
}


@dataclass(frozen=True)
class TrainConfig:
    approaches: tuple[str, ...]
    base: Base
    weights: str | None  # path, "imagenet", or None (random init, for tests)
    data_dir: Path
    dataset_dir: Path | None = None
    download: bool = False
    out: Path = DEFAULT_OUT
    image_size: int | None = None  # default: the base's (pretrained) or 160 (scratch)
    scratch_image_size: int = 160
    epochs_scale: float = 1.0
    limit: int | None = None  # photos per split, for quick runs and tests
    seed: int = 1337
    threads: int | None = None
    verbose: int = 2

    def schedule(self, approach: str) -> Schedule:
        base = SCHEDULES[approach]
        scale = lambda n: max(1, round(n * self.epochs_scale)) if n else 0  # noqa: E731
        return replace(base, epochs=scale(base.epochs), fine_tune_epochs=scale(base.fine_tune_epochs))

    def input_size(self, approach: str) -> int:
        if approach == "scratch":
            return self.scratch_image_size
        return self.image_size or self.base.image_size


# --- models -------------------------------------------------------------------------------------


def build_augmentation(seed: int) -> Any:
    """The book's augmentation: horizontal flips, rotations up to +-36 degrees, zoom up to 20%."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.1, seed=seed + 1),
            layers.RandomZoom(0.2, seed=seed + 2),
        ],
        name="augmentation",
    )


def build_scratch_model(image_size: int = 160) -> Any:
    """The book's small convnet (half its filters, 'same' padding so any size >= 32 works) + dropout."""
    import keras
    from keras import layers

    image = keras.Input(shape=(image_size, image_size, 3), name=INPUT_NAME)  # [N,S,S,3] 0..255
    x = layers.Rescaling(1.0 / 255, name="rescale")(image)  # [N,S,S,3] in [0,1]
    for block, filters in enumerate((16, 32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)  # 160 -> 80 -> 40 -> 20 -> 10
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name=SCRATCH_LAST_CONV)(
        x
    )  # [N,S/16,S/16,128]
    x = layers.Flatten(name="flatten")(x)  # [N,(S/16)^2*128]
    x = layers.Dropout(0.5, name="dropout")(x)
    probabilities = layers.Dense(2, activation="softmax", name=OUTPUT_NAME)(x)  # [N,2]
    return keras.Model(image, probabilities, name="catdog_scratch")


def preprocessing_layer(kind: str) -> Any:
    """The base's input preprocessing as a serialisable layer: raw RGB 0..255 in, what the base expects out."""
    from keras import initializers, layers

    if kind == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")  # [-1, 1]
    if kind == "torch":
        return layers.Normalization(
            mean=list(_IMAGENET_MEAN_RGB), variance=[s * s for s in _IMAGENET_STD_RGB], name="preprocess"
        )
    if kind == "caffe":
        # RGB -> BGR and minus the ImageNet channel means, as a fixed (non-trainable) 1x1 convolution.
        flip = np.zeros((1, 1, 3, 3), dtype=np.float32)  # [1,1,in,out]
        for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
            flip[0, 0, rgb, bgr] = 1.0
        means_bgr = np.asarray(_IMAGENET_MEAN_RGB[::-1], dtype=np.float32)
        return layers.Conv2D(
            3,
            1,
            kernel_initializer=initializers.Constant(flip),
            bias_initializer=initializers.Constant(-means_bgr),
            trainable=False,
            name="preprocess",
        )
    if kind == "none":
        return layers.Identity(name="preprocess")
    raise ValueError(f"unknown preprocessing {kind!r}")


def build_base(base: Base, weights: str | None, image_size: int) -> tuple[Any, Any]:
    """(image input [N,S,S,3], base model wired onto it): the base's layers become the caller's layers."""
    import keras

    image = keras.Input(shape=(image_size, image_size, 3), name=INPUT_NAME)  # [N,S,S,3] 0..255
    x = preprocessing_layer(base.preprocessing)(image)  # [N,S,S,3] as the base expects
    constructor = getattr(keras.applications, base.constructor)
    extra = dict(base.kwargs)
    if base.preprocessing == "none" and "include_preprocessing" in constructor.__code__.co_varnames:
        extra["include_preprocessing"] = True
    conv_base = constructor(include_top=False, weights=weights, input_tensor=x, **extra)
    conv_base.trainable = False
    return image, conv_base


def last_conv_layer(model: Any) -> str:
    """Name of the layer whose output is the last convolutional feature map [N,h,w,C] (Grad-CAM target)."""
    for layer in reversed(model.layers):
        if len(layer.output.shape) == 4:
            return str(layer.name)
    raise ValueError(f"{model.name} has no 4-D feature map")


def build_head(features: Any, dropout: float = 0.5) -> Any:
    """The new classifier: global average pooling, Dense(256, relu), dropout, 2-way softmax."""
    from keras import layers

    x = layers.GlobalAveragePooling2D(name="pool")(features)  # [N,C]
    x = layers.Dense(256, activation="relu", name="dense")(x)  # [N,256]
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(2, activation="softmax", name=OUTPUT_NAME)(x)  # [N,2]


def build_transfer_model(base: Base, weights: str | None, image_size: int) -> Any:
    """Frozen pretrained base + new head, one flat model: image [N,S,S,3] 0..255 -> probabilities [N,2]."""
    import keras

    image, conv_base = build_base(base, weights, image_size)
    probabilities = build_head(conv_base.output)  # conv_base.output: [N,h,w,C]
    return keras.Model(image, probabilities, name=f"catdog_{base.name}")


def unfreeze_top_block(model: Any, first_layer: str) -> list[str]:
    """Make the layers from `first_layer` up to the head trainable, except BatchNormalization.

    Frozen BatchNormalization layers run in inference mode in Keras 3 (moving statistics, no
    updates), which is what fine-tuning on a small dataset needs. Returns the names made trainable.
    """
    from keras import layers

    names = [layer.name for layer in model.layers]
    if first_layer not in names:
        raise ValueError(f"{model.name} has no layer {first_layer!r} to start fine-tuning from")
    unfrozen: list[str] = []
    for layer in model.layers[names.index(first_layer) :]:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
            continue
        layer.trainable = True
        if layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


# --- training -----------------------------------------------------------------------------------


def _compile(model: Any, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def _callbacks(best_path: Path, patience: int | None, baseline: float | None = None) -> list[Any]:
    """Keep the epoch with the lowest validation loss (below `baseline` when given); stop early."""
    import keras

    callbacks: list[Any] = [
        keras.callbacks.ModelCheckpoint(
            best_path, monitor="val_loss", mode="min", save_best_only=True, initial_value_threshold=baseline
        )
    ]
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
    return callbacks


def _history(*histories: Any) -> dict[str, list[float]]:
    merged: dict[str, list[float]] = {}
    for history in histories:
        for key, values in history.history.items():
            if key == "learning_rate":
                continue
            merged.setdefault(key, []).extend(float(v) for v in values)
    return merged


def _evaluate(model: Any, split: cats_vs_dogs.Split) -> tuple[float, dict[str, Any]]:
    probabilities = model.predict(split.images, batch_size=64, verbose=0)  # [N,2]
    metrics = classification_metrics(split.labels, probabilities.argmax(axis=1), LABELS)
    return float(metrics["test_accuracy"]), metrics


def _load_splits(config: TrainConfig, root: Path, size: int) -> dict[str, cats_vs_dogs.Split]:
    return {
        split: cats_vs_dogs.load_split(root, split, (size, size), config.limit)
        for split in cats_vs_dogs.SPLITS
    }


def train_scratch(config: TrainConfig, root: Path, out: Path) -> dict[str, Any]:
    """Approach 1: small convnet from scratch with augmentation and dropout."""
    import keras

    schedule = config.schedule("scratch")
    size = config.input_size("scratch")
    data = _load_splits(config, root, size)
    model = build_scratch_model(size)
    _compile(model, schedule.learning_rate)
    augmentation = build_augmentation(config.seed)
    history = model.fit(
        cats_vs_dogs.make_dataset(
            data["train"].images, data["train"].labels, schedule.batch_size, augmentation, config.seed
        ),
        validation_data=cats_vs_dogs.make_dataset(data["validation"].images, data["validation"].labels, 64),
        epochs=schedule.epochs,
        callbacks=_callbacks(out / BEST_MODEL, schedule.early_stopping_patience),
        verbose=config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    best = keras.models.load_model(out / BEST_MODEL, compile=False)
    return _report(best, data, _history(history), {"image_size": size, "last_conv_layer": SCRATCH_LAST_CONV})


def train_features(config: TrainConfig, root: Path, out: Path) -> dict[str, Any]:
    """Approach 2: run the pretrained base once over every photo, train a dense classifier on the features."""
    import keras

    schedule = config.schedule("features")
    size = config.input_size("features")
    data = _load_splits(config, root, size)
    image, conv_base = build_base(config.base, config.weights, size)
    extractor = keras.Model(image, conv_base.output, name="feature_extractor")
    watch = Stopwatch()
    features = {
        name: extractor.predict(split.images, batch_size=64, verbose=0)  # [N,h,w,C], computed once
        for name, split in data.items()
    }
    extract_seconds = watch.seconds
    feature_input = keras.Input(shape=features["train"].shape[1:], name="features")  # [N,h,w,C]
    classifier = keras.Model(feature_input, build_head(feature_input), name="classifier")
    _compile(classifier, schedule.learning_rate)
    best_classifier = out / "best_classifier.keras"
    history = classifier.fit(
        features["train"],
        data["train"].labels,
        validation_data=(features["validation"], data["validation"].labels),
        batch_size=schedule.batch_size,
        epochs=schedule.epochs,
        callbacks=_callbacks(best_classifier, schedule.early_stopping_patience),
        verbose=config.verbose,
        shuffle=True,
    )
    classifier = keras.models.load_model(best_classifier, compile=False)
    # One servable model: the base's layers followed by the trained classifier's layers.
    x = conv_base.output  # [N,h,w,C]
    for layer in classifier.layers[1:]:
        x = layer(x)
    model = keras.Model(image, x, name=f"catdog_features_{config.base.name}")
    model.save(out / BEST_MODEL)
    extra = {
        "image_size": size,
        "base": config.base.name,
        "feature_shape": list(features["train"].shape[1:]),
        "feature_extraction_seconds": round(extract_seconds, 1),
        "last_conv_layer": last_conv_layer(model),
    }
    return _report(model, data, _history(history), extra)


def train_features_aug(config: TrainConfig, root: Path, out: Path) -> dict[str, Any]:
    """Approach 3: frozen base + new head trained end to end on augmented photos."""
    import keras

    schedule = config.schedule("features-aug")
    size = config.input_size("features-aug")
    data = _load_splits(config, root, size)
    model = build_transfer_model(config.base, config.weights, size)
    _compile(model, schedule.learning_rate)
    history = model.fit(
        cats_vs_dogs.make_dataset(
            data["train"].images,
            data["train"].labels,
            schedule.batch_size,
            build_augmentation(config.seed),
            config.seed,
        ),
        validation_data=cats_vs_dogs.make_dataset(data["validation"].images, data["validation"].labels, 64),
        epochs=schedule.epochs,
        callbacks=_callbacks(out / BEST_MODEL, schedule.early_stopping_patience),
        verbose=config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    best = keras.models.load_model(out / BEST_MODEL, compile=False)
    extra = {"image_size": size, "base": config.base.name, "last_conv_layer": last_conv_layer(best)}
    return _report(best, data, _history(history), extra)


def train_finetune(config: TrainConfig, root: Path, out: Path) -> dict[str, Any]:
    """Approach 4: train the head with the base frozen, then unfreeze the top block at a low learning rate."""
    import keras

    schedule = config.schedule("finetune")
    size = config.input_size("finetune")
    data = _load_splits(config, root, size)
    augmentation = build_augmentation(config.seed)
    train_data = cats_vs_dogs.make_dataset(
        data["train"].images, data["train"].labels, schedule.batch_size, augmentation, config.seed
    )
    val_data = cats_vs_dogs.make_dataset(data["validation"].images, data["validation"].labels, 64)
    model = build_transfer_model(config.base, config.weights, size)

    # Stage 1: only the new head learns (a randomly initialised head would wreck the base's features).
    _compile(model, schedule.learning_rate)
    head_path = out / "best_head.keras"
    head_history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=schedule.epochs,
        callbacks=_callbacks(head_path, schedule.early_stopping_patience),
        verbose=config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    model = keras.models.load_model(head_path, compile=False)
    head_val_accuracy, _ = _evaluate(model, data["validation"])

    # Stage 2: the top block and the head, low learning rate, BatchNormalization frozen (inference mode).
    unfrozen = unfreeze_top_block(model, config.base.top_block)
    _compile(model, schedule.fine_tune_learning_rate)
    model.save(out / BEST_MODEL)  # stage 1's best is the baseline stage 2 must beat
    baseline = float(model.evaluate(val_data, verbose=0)[0])  # validation loss
    tune_history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=schedule.fine_tune_epochs,
        callbacks=_callbacks(out / BEST_MODEL, None, baseline),
        verbose=config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    best = keras.models.load_model(out / BEST_MODEL, compile=False)
    extra = {
        "image_size": size,
        "base": config.base.name,
        "head_epochs": len(head_history.history["loss"]),
        "head_val_accuracy": head_val_accuracy,
        "unfrozen_layers": unfrozen,
        "last_conv_layer": last_conv_layer(best),
    }
    return _report(best, data, _history(head_history, tune_history), extra)


TRAINERS = {
    "scratch": train_scratch,
    "features": train_features,
    "features-aug": train_features_aug,
    "finetune": train_finetune,
}


def _report(
    model: Any,
    data: Mapping[str, cats_vs_dogs.Split],
    history: dict[str, list[float]],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Metrics of the reloaded best model on validation and test (the history is for the curves)."""
    val_accuracy, _ = _evaluate(model, data["validation"])
    test_accuracy, test_metrics = _evaluate(model, data["test"])
    val_losses = history.get("val_loss", [])
    return {
        **test_metrics,
        "validation_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "n_train": len(data["train"]),
        "n_validation": len(data["validation"]),
        "epochs": len(history.get("loss", [])),
        "best_epoch": int(np.argmin(val_losses)) + 1 if val_losses else 0,
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "history": history,
        **extra,
    }


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the selected approaches; write per-approach and combined metrics, table and curves."""
    configure_cpu(config.threads)
    root = cats_vs_dogs.locate(config.data_dir, config.dataset_dir, config.download)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    combined_path = out / METRICS_FILE
    combined = read_metrics(combined_path) if combined_path.is_file() else {}
    approaches = dict(combined.get("approaches", {}))
    for approach in config.approaches:
        set_seed(config.seed)
        folder = out / approach
        folder.mkdir(parents=True, exist_ok=True)
        watch = Stopwatch()
        print(f"catdog/{approach}: training on {root} ({config.schedule(approach)})", flush=True)
        metrics = TRAINERS[approach](config, root, folder)
        history = metrics.pop("history")
        metrics.update(
            {
                "model": "catdog",
                "approach": approach,
                "seconds": round(watch.seconds, 1),
                "schedule": config.schedule(approach).__dict__,
                "dataset": str(root),
                "seed": config.seed,
                "labels": list(LABELS),
            }
        )
        write_metrics(folder / METRICS_FILE, metrics)
        (folder / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        head_epochs = metrics.get("head_epochs")
        plot_curves(
            history,
            folder / CURVES_FILE,
            f"catdog {approach}: test accuracy {metrics['test_accuracy']:.3f}",
            monitor="val_loss",  # what the checkpoint keeps (`_callbacks`)
            stages=[(int(head_epochs), "top block unfrozen")] if head_epochs and approach == "finetune" else [],
        )
        approaches[approach] = metrics
        print(
            f"catdog/{approach}: validation accuracy {metrics['validation_accuracy']:.4f}, "
            f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['epochs']} epochs, {metrics['seconds']:.0f} s",
            flush=True,
        )
        write_comparison(out, approaches)
    return approaches


def comparison_table(approaches: Mapping[str, Mapping[str, Any]]) -> str:
    """README-ready markdown table of the approaches run so far, in the book's order."""
    titles = {
        "scratch": "1. small convnet from scratch, augmentation + dropout",
        "features": "2. pretrained base, features extracted once, dense classifier",
        "features-aug": "3. frozen pretrained base + head, end to end with augmentation",
        "finetune": "4. fine-tuned top block (served)",
    }
    rows = [
        "| approach | input | validation accuracy | test accuracy | epochs (best) | trainable / total params | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for approach in APPROACHES:
        if approach not in approaches:
            continue
        m = approaches[approach]
        base = f", {m['base']}" if m.get("base") else ""
        rows.append(
            f"| {titles[approach]} | {m['image_size']} px{base} | {m['validation_accuracy']:.3f} | "
            f"{m['test_accuracy']:.3f} | {m['epochs']} ({m['best_epoch']}) | "
            f"{m['trainable_params']:,} / {m['params']:,} | "
            f"{m['seconds']:.0f} s |"
        )
    return "\n".join(rows) + "\n"


def write_comparison(out: Path, approaches: Mapping[str, Mapping[str, Any]]) -> None:
    """`metrics.json` (all approaches), `comparison.md` and `curves.png` (validation accuracy per approach)."""
    served = approaches.get(SERVED_APPROACH)
    write_metrics(
        out / METRICS_FILE,
        {
            "model": "catdog",
            "labels": list(LABELS),
            "served_approach": SERVED_APPROACH,
            "target_accuracy": TARGET_ACCURACY,
            "test_accuracy": served["test_accuracy"] if served else None,
            "approaches": dict(approaches),
        },
    )
    (out / COMPARISON_FILE).write_text(comparison_table(approaches))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4))
    drawn = []
    for approach in APPROACHES:
        history_file = out / approach / "history.json"
        if approach in approaches and history_file.is_file():
            values = json.loads(history_file.read_text()).get("val_accuracy", [])
            (line,) = axis.plot(range(1, len(values) + 1), values, marker="o", markersize=2, label=approach)
            head_epochs = approaches[approach].get("head_epochs")
            if approach == "finetune" and head_epochs:
                axis.axvline(int(head_epochs) + 0.5, color=line.get_color(), linestyle=":", label="finetune: top block unfrozen")
            drawn.append(approach)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    # The title names what is drawn: the approaches of this run folder that have a history.
    axis.set_title(f"cats vs dogs, validation accuracy: {', '.join(drawn) or 'no approach trained yet'}")
    fig.tight_layout()
    fig.savefig(out / CURVES_FILE, dpi=100)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------------


def default_weights(base: Base, data_dir: Path) -> str:
    """Offline MobileNet weights from DATA_DIR when present, else Keras's ImageNet download."""
    local = data_dir / MOBILENET_WEIGHTS
    if base.name == "mobilenet" and local.is_file():
        return str(local)
    return "imagenet"


def parse_args(argv: Sequence[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training catdog", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--approach",
        choices=[*APPROACHES, "all"],
        default=SERVED_APPROACH,
        help=f"which of the book's approaches to train (default {SERVED_APPROACH}, the served one; all: each in turn)",
    )
    parser.add_argument(
        "--base", choices=sorted(BASES), default=DEFAULT_BASE, help="pretrained convolutional base"
    )
    parser.add_argument(
        "--weights",
        help="base weights: a .h5 path, 'imagenet' (download) or 'none' (random; tests). "
        f"Default: DATA_DIR/{MOBILENET_WEIGHTS} for mobilenet when present, else imagenet",
    )
    parser.add_argument(
        "--image-size", type=int, help="input size of the pretrained approaches (default: the base's)"
    )
    parser.add_argument(
        "--scratch-image-size", type=int, default=160, help="input size of the convnet trained from scratch (default 160)"
    )
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every schedule's epochs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run folder (default: runs/catdog)")
    parser.add_argument(
        "--data-dir", help="folder holding cats_vs_dogs/ (default: $DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--dataset-dir", type=Path, help="a folder with the book's layout, used instead")
    parser.add_argument("--download", action="store_true", help="download and split PetImages when missing")
    parser.add_argument("--limit", type=int, help="use only N photos per split (quick runs)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    parser.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: all cores)")
    args = parser.parse_args(list(argv))
    if args.epochs_scale <= 0:
        parser.error("--epochs-scale must be positive")
    data_dir = resolve_data_dir(args.data_dir)
    base = BASES[args.base]
    weights = args.weights or default_weights(base, data_dir)
    return TrainConfig(
        approaches=APPROACHES if args.approach == "all" else (args.approach,),
        base=base,
        weights=None if weights.lower() == "none" else weights,
        data_dir=data_dir,
        dataset_dir=args.dataset_dir,
        download=args.download,
        out=args.out,
        image_size=args.image_size,
        scratch_image_size=args.scratch_image_size,
        epochs_scale=args.epochs_scale,
        limit=args.limit,
        seed=args.seed,
        threads=args.threads,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        approaches = train(config)
    except MissingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(comparison_table(approaches), flush=True)
    served = approaches.get(SERVED_APPROACH)
    if served is not None:
        status = "meets" if served["test_accuracy"] >= TARGET_ACCURACY else "MISSES"
        print(
            f"catdog: fine-tuned test accuracy {served['test_accuracy']:.4f} {status} the {TARGET_ACCURACY} target"
        )
    return 0
