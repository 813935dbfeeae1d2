"""`ml-client activations`: the server's `activations` signature drawn as the book's grid, end to end.

A real server over loopback serves tiny catdog and digits versions with an `activations` signature
(`tests.clients.tiny_models`: a 1x1 convolution `conv1` and its 2x2 max pooling `pool1`, known in
numpy) and one digits version without it; `main()` runs in this process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.__main__ import choose_predict_signature, main
from clients.errors import ClientError
from clients.grids import (
    MAX_SCALE,
    TITLE_HEIGHT,
    activation_grid,
    grid_scale,
    grid_title,
    normalise_channel,
    render_grid,
    viridis_table,
)
from clients.grpc_client import GrpcClient
from clients.images import load_image_tensor
from serving.images import decode_images
from tests.clients.tiny_models import (
    ACTIVATION_CHANNELS,
    CATDOG_SIZE,
    add_tiny_activations,
    tiny_activations,
    write_tiny_catdog,
)
from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("activations-models")
    write_tiny_catdog(root / "catdog", activations=True)
    add_tiny_activations(write_tiny_version(root / "digits", 1))
    write_tiny_version(root / "plain", 1)  # a model without activations
    config = write_config(
        root / "models.config", {name: root / name for name in ("catdog", "digits", "plain")}
    )
    process = start_server(["--model_config_file", str(config)], root / "server.log")
    yield process
    process.stop()


def _flags(server: ServerProcess) -> list[str]:
    return ["--target", server.grpc_target, "--url", server.rest_url, "--timeout", "10"]


def _expected_picture(layer: str, activation: np.ndarray) -> np.ndarray:
    return render_grid(activation_grid(activation), grid_title(layer, activation))


def test_catdog_photo_bytes_give_the_layers_grid(
    server: ServerProcess, red_jpeg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The photo goes as image_bytes (the server decodes it), only the asked layer comes back."""
    out, raw = tmp_path / "grid.png", tmp_path / "pool1.npy"
    argv = [*_flags(server), "activations", "--model", "catdog", str(red_jpeg), "--layer", "pool1"]
    assert main([*argv, "-o", str(out), "--raw", str(raw)]) == 0
    served = np.load(raw)  # [8,8,K]
    image = decode_images([red_jpeg.read_bytes()], CATDOG_SIZE, CATDOG_SIZE, 3)  # the server's decoding
    np.testing.assert_allclose(served, tiny_activations(image)["pool1"][0], atol=1e-5)
    picture = np.asarray(Image.open(out).convert("RGB"))
    grid_width = ACTIVATION_CHANNELS * (CATDOG_SIZE // 2 + 1) - 1  # one row of 5 maps, 1-pixel gaps
    scale = min(MAX_SCALE, 1024 // grid_width)
    assert picture.shape[0] == TITLE_HEIGHT + (CATDOG_SIZE // 2) * scale
    assert picture.shape[1] >= grid_width * scale
    assert (picture == _expected_picture("pool1", served)).all()
    assert (picture[:TITLE_HEIGHT] != 255).any()  # the title is written
    assert f"pool1 8x8x{ACTIVATION_CHANNELS}" in capsys.readouterr().out


def test_digits_over_rest_draws_every_channel(server: ServerProcess, digit_png: Path, tmp_path: Path) -> None:
    out, raw = tmp_path / "conv1.png", tmp_path / "conv1.npy"
    argv = ["--rest", *_flags(server), "activations", "--model", "digits", str(digit_png), "--layer", "conv1"]
    assert main([*argv, "-o", str(out), "--raw", str(raw)]) == 0
    served = np.load(raw)  # [28,28,K]
    image = load_image_tensor(digit_png, 28, 28, 1, invert="auto")  # as ml-client prepares a digit
    np.testing.assert_allclose(served, tiny_activations(image)["conv1"][0], atol=1e-5)
    grid = activation_grid(served)
    assert grid.shape == (28, ACTIVATION_CHANNELS * 29 - 1)
    with Image.open(out) as png:
        assert png.size == (grid.shape[1] * grid_scale(grid), TITLE_HEIGHT + 28 * grid_scale(grid))


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        (
            "digits",
            ["--layer", "conv9"],
            "no layer 'conv9'; digits serves the activations of 2 layers: conv1, pool1",
        ),
        ("catdog", [], "give --layer NAME; catdog serves the activations of 2 layers: conv1, pool1"),
        ("plain", ["--layer", "conv1"], "model 'plain' has no 'activations' signature"),
    ],
)
def test_unknown_or_missing_layer_lists_the_served_layers(
    server: ServerProcess,
    digit_png: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "never.png"
    assert (
        main([*_flags(server), "activations", "--model", model, str(digit_png), *extra, "-o", str(out)]) == 2
    )
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_server_refuses_an_unknown_layer_listing_its_outputs(server: ServerProcess) -> None:
    """The same mistake through the library: INVALID_ARGUMENT naming the signature's outputs."""
    image = np.zeros((1, 28, 28, 1), np.float32)
    with GrpcClient(server.grpc_target, timeout=10) as client, pytest.raises(ClientError) as caught:
        client.predict("digits", {"image": image}, signature="activations", output_filter=["conv9"])
    assert caught.value.code == "INVALID_ARGUMENT"
    assert "['conv1', 'pool1']" in caught.value.message


def test_predict_does_not_pick_the_activations_or_explain_bytes_signature(red_jpeg: Path) -> None:
    def sig(inputs: dict[str, str], outputs: list[str]) -> dict[str, object]:
        return {
            "inputs": {name: {"dtype": dtype, "shape": [-1]} for name, dtype in inputs.items()},
            "outputs": {name: {"dtype": "float32", "shape": [-1]} for name in outputs},
        }

    signatures = {
        "serving_default": sig({"image": "float32"}, ["probabilities"]),
        "activations_image_bytes": sig({"image_bytes": "string"}, ["conv1", "pool1"]),
        "explain_image_bytes": sig({"image_bytes": "string"}, ["probabilities", "heatmap"]),
        "predict_image_bytes": sig({"image_bytes": "string"}, ["probabilities"]),
    }
    assert choose_predict_signature(signatures, [str(red_jpeg)]) == "predict_image_bytes"
    del signatures["predict_image_bytes"]
    assert choose_predict_signature(signatures, [str(red_jpeg)]) == "explain_image_bytes"


def test_grid_pictures_without_matplotlib() -> None:
    """Pure pieces: each channel normalised on its own, tiles in order, viridis as matplotlib's."""
    maps = np.random.default_rng(0).normal(size=(3, 4, 18)).astype(np.float32) * np.arange(1, 19)
    grid = activation_grid(maps)  # 16 per row: 2 rows
    assert grid.shape == (2 * 4 - 1, 16 * 5 - 1) and grid.dtype == np.uint8
    assert (grid[4:7, 5:9] == normalise_channel(maps[..., 17])).all()  # 18th channel: row 2, column 2
    assert (grid[3, :] == 0).all() and (grid[4:, 10:] == 0).all()  # gaps, and the unused tiles
    picture = render_grid(grid, "conv1  3x4x18")
    scale = grid_scale(grid)
    assert picture.shape == (TITLE_HEIGHT + 7 * scale, 79 * scale, 3)
    with pytest.raises(ValueError, match=r"feature map \[h,w,c\]"):
        activation_grid(np.zeros((3, 4)))
    matplotlib = pytest.importorskip("matplotlib")
    reference = matplotlib.colormaps["viridis"](np.arange(256))[:, :3]
    assert np.abs(viridis_table() - reference).max() < 0.011


def test_clients_import_neither_tensorflow_nor_matplotlib() -> None:
    code = (
        "import sys, clients.__main__, clients.grids; "
        "bad = [m for m in ('tensorflow', 'matplotlib', 'training') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
