"""One real server process for the client tests: tiny digits, catdog and sentiment over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.clients.tiny_models import write_tiny_catdog, write_tiny_sentiment
from tests.serving.fixtures import ServerProcess, start_server, write_config, write_tiny_version


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-models")
    write_tiny_version(root / "digits", 1)
    write_tiny_catdog(root / "catdog")
    write_tiny_sentiment(root / "sentiment")
    return root


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("client-server")
    config = write_config(
        work / "models.config", {name: models_dir / name for name in ("digits", "catdog", "sentiment")}
    )
    process = start_server(["--model_config_file", str(config)], work / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def digit_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dark '7'-ish stroke drawn on a light 56x56 page, as a person would draw it."""
    page = np.full((56, 56), 250, dtype=np.uint8)  # [h, w]
    page[10:14, 12:44] = 10  # top bar
    for row in range(14, 48):
        column = 40 - (row - 14) // 2
        page[row, column : column + 4] = 10  # diagonal
    path = tmp_path_factory.mktemp("images") / "seven.png"
    Image.fromarray(page).save(path)
    return path


@pytest.fixture(scope="session")
def red_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40x30 reddish photo: the tiny catdog calls red 'cat'."""
    rng = np.random.default_rng(1)
    photo = np.zeros((40, 30, 3), dtype=np.uint8)  # [h, w, 3]
    photo[..., 0] = 200 + rng.integers(0, 40, size=(40, 30))
    photo[..., 2] = rng.integers(0, 40, size=(40, 30))
    path = tmp_path_factory.mktemp("images") / "red.jpg"
    Image.fromarray(photo).save(path, quality=95)
    return path
