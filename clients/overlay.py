"""Grad-CAM heatmap on top of the photo, the way "Deep Learning with Python" draws it (chapter 9).

The book's recipe: scale the heatmap to 0..255, colour it with the "jet" colormap, resize the colour
heatmap to the photo with Pillow, add `0.4 * heatmap` to the photo and rescale the sum to 0..255
(`keras.utils.array_to_img` does that last step; here it is done with numpy, no TensorFlow).

The jet colormap is matplotlib's, rebuilt from its published segment data as a 256-entry table, so
matplotlib (a training-only dependency) is not needed; the tests check the table against matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# matplotlib's `_jet_data`: per channel, (x, value) breakpoints of a piecewise-linear map on [0, 1].
_JET_SEGMENTS: dict[str, tuple[tuple[float, float], ...]] = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
ALPHA = 0.4  # the book's weight of the heatmap over the photo


def jet_table(size: int = 256) -> np.ndarray:
    """float32 [size, 3] RGB in 0..1: entry i is jet at i / (size - 1), like matplotlib's lookup table."""
    positions = np.linspace(0.0, 1.0, size)  # [size]
    channels = []
    for name in ("red", "green", "blue"):
        xs, ys = zip(*_JET_SEGMENTS[name], strict=True)
        channels.append(np.interp(positions, xs, ys))
    return np.stack(channels, axis=1).astype(np.float32)  # [size, 3]


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """float heatmap [h, w] in 0..1 -> uint8 RGB [h, w, 3] through jet (values outside 0..1 clipped)."""
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be [h, w], got shape {list(heatmap.shape)}")
    levels = np.uint8(np.clip(np.nan_to_num(heatmap), 0.0, 1.0) * 255)  # [h, w] in 0..255, as the book
    return np.round(jet_table()[levels] * 255).astype(np.uint8)  # [h, w, 3]


def overlay(photo: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """uint8 RGB photo [H, W, 3] + heatmap [h, w] in 0..1 -> uint8 RGB [H, W, 3].

    The colour heatmap is resized to the photo with Pillow (bicubic, Pillow's default for RGB
    as in the book), added with weight `alpha`, and the sum rescaled to 0..255 as
    `keras.utils.array_to_img` does (subtract the minimum, divide by the maximum).
    """
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo must be RGB [H, W, 3], got shape {list(photo.shape)}")
    height, width = photo.shape[:2]
    coloured = Image.fromarray(colorize(heatmap)).resize((width, height), Image.Resampling.BICUBIC)
    superimposed = np.asarray(coloured, dtype=np.float32) * alpha + photo.astype(np.float32)  # [H, W, 3]
    superimposed -= superimposed.min()
    top = superimposed.max()
    if top > 0:
        superimposed *= 255.0 / top
    return np.round(superimposed).astype(np.uint8)


def annotate(image: np.ndarray, caption: str, bar_width: int = 14) -> np.ndarray:
    """The overlay as people read it: `caption` (the predicted label and probability) in a dark band
    across the top, and a jet colour scale (heat 1 at the top, 0 at the bottom) to the right.

    uint8 RGB [H, W, 3] -> uint8 RGB [H, W + bar_width + 24, 3].
    """
    from PIL import ImageDraw

    height, width = image.shape[:2]
    margin = 24  # room for the scale's "1" and "0"
    canvas = Image.new("RGB", (width + bar_width + margin, height), (255, 255, 255))
    picture = Image.fromarray(image)
    band = Image.new("RGBA", (width, 20), (0, 0, 0, 160))
    picture.paste(band, (0, 0), band)
    draw = ImageDraw.Draw(picture)
    draw.text((5, 4), caption, fill=(255, 255, 255))
    canvas.paste(picture, (0, 0))
    top, bottom = 14, height - 14
    levels = np.linspace(1.0, 0.0, max(bottom - top, 2))  # [rows]: 1 at the top
    column = colorize(levels[:, None])  # [rows, 1, 3]
    bar = np.repeat(column, bar_width, axis=1)  # [rows, bar_width, 3]
    canvas.paste(Image.fromarray(bar), (width + 4, top))
    scale = ImageDraw.Draw(canvas)
    scale.text((width + bar_width + 7, top - 6), "1", fill=(0, 0, 0))
    scale.text((width + bar_width + 7, bottom - 8), "0", fill=(0, 0, 0))
    return np.asarray(canvas)


def enlarge(photo: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Blow a tiny image (a 28x28 digit) up by a whole factor, nearest neighbour, so the overlay is visible."""
    factor = -(-min_side // max(1, min(photo.shape[:2])))  # ceil
    if factor <= 1:
        return photo
    return np.repeat(np.repeat(photo, factor, axis=0), factor, axis=1)  # [H*f, W*f, 3]


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write uint8 RGB [H, W, 3] as PNG (OSError when the path is not writable)."""
    Image.fromarray(image).save(path, format="PNG")
