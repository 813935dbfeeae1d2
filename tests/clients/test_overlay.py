"""The Grad-CAM overlay: the book's recipe, matplotlib's jet, the photo's size."""

from __future__ import annotations

import numpy as np
import pytest

from clients.overlay import colorize, enlarge, jet_table, overlay


def test_jet_table_is_matplotlibs() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    expected = matplotlib.colormaps["jet"](np.arange(256))[:, :3]  # [256, 3]
    np.testing.assert_allclose(jet_table(), expected, atol=1e-6)


def test_colormap_extremes() -> None:
    coloured = colorize(np.array([[0.0, 1.0], [-3.0, 7.0]]))  # out-of-range values are clipped
    assert coloured.dtype == np.uint8 and coloured.shape == (2, 2, 3)
    assert coloured[0, 0].tolist() == [0, 0, 128]  # jet(0): dark blue
    assert coloured[0, 1].tolist() == [128, 0, 0]  # jet(1): dark red
    assert (
        coloured[1, 0].tolist() == coloured[0, 0].tolist()
        and coloured[1, 1].tolist() == coloured[0, 1].tolist()
    )


def test_overlay_has_the_photos_shape_and_the_heatmaps_colours() -> None:
    photo = np.zeros((60, 90, 3), dtype=np.uint8)  # [H, W, 3] black
    # On black, the sum is 0.4 * jet, rescaled to 0..255: cold is pure blue, hot pure red.
    cold = overlay(photo, np.zeros((6, 6), dtype=np.float32))
    hot = overlay(photo, np.ones((6, 6), dtype=np.float32))
    assert cold.dtype == np.uint8 and cold.shape == (60, 90, 3)
    assert np.all(cold == [0, 0, 255]) and np.all(hot == [255, 0, 0])
    heatmap = np.zeros((6, 6), dtype=np.float32)
    heatmap[:, 3:] = 1.0  # right half hot
    halves = overlay(photo, heatmap)
    left, right = halves[30, 5].tolist(), halves[30, 85].tolist()
    assert left[2] > 200 and left[0] == 0 and right[0] > 200 and right[2] == 0


def test_overlay_keeps_the_photo_visible() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    result = overlay(photo, np.full((4, 4), 0.5, dtype=np.float32)).astype(np.float64)
    assert np.corrcoef(result[..., 0].ravel(), photo[..., 0].ravel())[0, 1] > 0.9


def test_overlay_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="RGB"):
        overlay(np.zeros((8, 8), dtype=np.uint8), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="heatmap"):
        overlay(np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((1, 2, 2)))


def test_enlarge_small_images_only() -> None:
    digit = np.zeros((28, 28, 3), dtype=np.uint8)
    assert enlarge(digit).shape == (224, 224, 3)  # factor 8 = 224 / 28
    assert enlarge(np.zeros((30, 40, 3), dtype=np.uint8)).shape == (240, 320, 3)  # factor ceil(224 / 30) = 8
    photo = np.zeros((256, 300, 3), dtype=np.uint8)
    assert enlarge(photo) is photo
