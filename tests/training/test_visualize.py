"""`ml-visualize` on a tiny convnet built here (random weights): activation grids, filter patterns by
gradient ascent, the command line. The offline-vs-served heatmap check is in tests/export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_convnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    image = keras.Input((28, 28, 1), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(image)
    x = layers.Conv2D(6, 3, activation="relu", name="conv1")(x)  # [N,26,26,6]
    x = layers.MaxPooling2D(2, name="pool1")(x)  # [N,13,13,6]
    x = layers.Conv2D(5, 3, activation="relu", name="conv2")(x)  # [N,11,11,5]
    x = layers.Flatten(name="flatten")(x)
    probabilities = layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = keras.Model(image, probabilities, name="tiny")
    path = tmp_path_factory.mktemp("tiny-convnet") / "best.keras"
    model.save(path)
    return model, path


def test_channels_are_normalised_and_tiled() -> None:
    from training.visualize import activation_grid, normalise_channel

    channel = np.arange(16, dtype=np.float32).reshape(4, 4)
    levels = normalise_channel(channel)
    assert levels.dtype == np.uint8 and abs(float(levels.mean()) - 128) < 1.5
    assert (normalise_channel(np.full((3, 3), 7.0)) == 128).all()  # a flat channel is mid-grey, not NaN
    maps = np.random.default_rng(0).normal(size=(5, 7, 20)).astype(np.float32)  # [h,w,c]
    grid = activation_grid(maps, columns=8, gap=1)
    assert grid.shape == (3 * 6 - 1, 8 * 8 - 1)  # 3 rows of 8 channels (20 -> 8, 8, 4)
    assert (grid[5, :] == 0).all() and (grid[:, 7] == 0).all()  # the gaps
    assert (grid[12:, 4 * 8 :] == 0).all()  # 4 empty cells on the last row
    assert (grid[:5, :7] == normalise_channel(maps[..., 0])).all()


def test_activations_of_every_conv_and_pooling_layer(tiny_convnet: tuple[Any, Path], tmp_path: Path) -> None:
    from training.visualize import activations, feature_layers, write_activations

    model, _ = tiny_convnet
    assert feature_layers(model) == ["conv1", "pool1", "conv2"]
    image = np.random.default_rng(1).uniform(0, 255, size=(1, 28, 28, 1)).astype(np.float32)
    values = activations(model, image, ["conv1", "conv2"])
    assert values["conv1"].shape == (1, 26, 26, 6) and values["conv2"].shape == (1, 11, 11, 5)
    assert (values["conv1"] >= 0).all()  # after the ReLU
    written = write_activations(model, image, tmp_path / "grids")
    assert [p.name for p in written] == ["01_conv1.png", "02_pool1.png", "03_conv2.png"]
    assert all(Image.open(p).size[0] >= 400 for p in written)


def test_gradient_ascent_raises_each_chosen_filter(tiny_convnet: tuple[Any, Path]) -> None:
    from training.visualize import filter_patterns

    model, _ = tiny_convnet
    found = filter_patterns(model, "conv2", [0, 2, 4], steps=10)
    assert found.images.shape == (3, 28, 28, 1) and found.images.dtype == np.uint8
    assert (found.end_activation > found.start_activation).all(), (found.start_activation, found.end_activation)
    assert model.get_layer("conv2").activation.__name__ == "relu"  # put back after the ascent
    again = filter_patterns(model, "conv2", [0, 2, 4], steps=10)
    np.testing.assert_allclose(again.end_activation, found.end_activation, rtol=1e-5)  # seeded start


def test_command_line_writes_each_picture(
    tiny_convnet: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.visualize import main

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        returncode = main(list(args))  # in-process: TensorFlow is already imported here
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), returncode, out, err)

    _, keras_file = tiny_convnet
    digit = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1))).save(digit)
    common = ["--model", "digits", "--keras", str(keras_file)]
    done = cli("filters", *common, "--filters", "2", "--steps", "3", "-o", str(tmp_path / "f.png"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "conv1: 2 filters, " + done.stdout.splitlines()[0].split(", ", 1)[1],
        "conv2: 2 filters, " + done.stdout.splitlines()[1].split(", ", 1)[1],
    ]
    assert Image.open(tmp_path / "f.png").format == "PNG"
    done = cli("heatmap", *common, str(digit), "-o", str(tmp_path / "h.png"), "--raw", str(tmp_path / "h.npy"))
    assert done.returncode == 0, done.stderr
    heat = np.load(tmp_path / "h.npy")
    assert heat.shape == (11, 11) and heat.min() >= 0 and heat.max() <= 1  # conv2, the last 4-D output
    assert Image.open(tmp_path / "h.png").size == (224 + 38, 224)  # enlarged + scale, as ml-client explain
    done = cli("activations", *common, str(digit), "--layer", "nope", "-o", str(tmp_path / "a"))
    assert done.returncode == 2
    assert "tiny has no layer 'nope'; its conv/pooling layers: conv1, pool1, conv2" in done.stderr
    done = cli("heatmap", "--model", "digits", "--runs-dir", str(tmp_path / "none"), str(digit))
    assert done.returncode == 2 and "not found: train first (`python -m training digits`)" in done.stderr


def test_console_script_is_installed() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ml-visualize")), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "activations" in done.stdout and "filters" in done.stdout
