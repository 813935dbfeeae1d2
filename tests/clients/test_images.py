"""Files -> tensors: grayscale digits (inverted when drawn dark on light), .npy arrays, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.images import ImageLoadError, load_image_tensor, load_photo


def test_dark_on_light_digit_is_inverted_like_mnist(tmp_path: Path) -> None:
    page = np.full((28, 28), 255, dtype=np.uint8)
    page[8:20, 12:16] = 0
    Image.fromarray(page).save(tmp_path / "d.png")
    auto = load_image_tensor(tmp_path / "d.png", 28, 28, 1, invert="auto")
    assert auto.shape == (1, 28, 28, 1) and auto.dtype == np.float32
    assert auto[0, 0, 0, 0] == 0.0 and auto[0, 10, 13, 0] == 255.0
    never = load_image_tensor(tmp_path / "d.png", 28, 28, 1, invert="no")
    np.testing.assert_array_equal(never, 255.0 - auto)


def test_light_on_dark_digit_is_kept_and_resized(tmp_path: Path) -> None:
    page = np.zeros((56, 56, 3), dtype=np.uint8)  # RGB file, model wants grayscale
    page[16:40, 24:32] = 255
    Image.fromarray(page).save(tmp_path / "d.png")
    image = load_image_tensor(tmp_path / "d.png", 28, 28, 1, invert="auto")
    assert image.shape == (1, 28, 28, 1)
    assert image[0, 0, 0, 0] == 0.0 and image[0, 14, 14, 0] == 255.0


@pytest.mark.parametrize(
    ("shape", "rows"), [((28, 28), 1), ((28, 28, 1), 1), ((3, 28, 28, 1), 3), ((56, 56), 1)]
)
def test_npy_arrays(tmp_path: Path, shape: tuple[int, ...], rows: int) -> None:
    np.save(tmp_path / "a.npy", np.full(shape, 7, dtype=np.uint8))
    image = load_image_tensor(tmp_path / "a.npy", 28, 28, 1)
    assert image.shape == (rows, 28, 28, 1) and image.dtype == np.float32
    assert np.allclose(image, 7.0)


def test_photo_keeps_its_size(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((30, 50, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    photo = load_photo(tmp_path / "p.png")
    assert photo.shape == (30, 50, 3) and photo.dtype == np.uint8


def test_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    np.save(tmp_path / "five_d.npy", np.zeros((1, 1, 1, 1, 1)))
    for name in ("missing.png", "text.png", "five_d.npy"):
        with pytest.raises(ImageLoadError, match=name):
            load_image_tensor(tmp_path / name, 28, 28, 1)
