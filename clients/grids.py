"""Activation grids, the book's picture of a convnet layer (chapter 5): every channel of one feature map.

A layer's output for one image, float [h,w,c], becomes one grey picture per channel, each normalised
on its own (mean at 128, one standard deviation = 64 grey levels, clipped), tiled `GRID_COLUMNS` to a
row with one-pixel gaps. `ml-visualize activations` (offline, the Keras model) and `ml-client
activations` (the server's `activations` signature) both tile with these functions, so the two
pictures of the same layer hold the same pixels.

`render_grid` colours the tiles with matplotlib's "viridis" (the book's default colormap, rebuilt as a
polynomial fitted to matplotlib's table: no matplotlib in the clients; within 0.011 of it, the tests
check) and writes the layer name and shape above them with Pillow. numpy and Pillow only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GRID_COLUMNS = 16
TARGET_WIDTH = 1024  # small grids are enlarged by a whole factor up to about this many pixels wide
MAX_SCALE = 8
TITLE_HEIGHT = 24  # pixels of the title strip above the grid
TITLE_SIZE = 14
# Least-squares degree-7 fit of matplotlib's 256-entry viridis table, per channel, lowest power first.
_VIRIDIS = (
    (0.256623, 1.16178, -14.7894, 76.3146, -217.08, 326.814, -238.181, 66.4996),
    (0.00395448, 1.50367, -1.25597, 2.47064, -8.55365, 19.0038, -19.0286, 6.7629),
    (0.322928, 1.96226, -7.80398, 24.8852, -65.2504, 110.516, -100.802, 36.3069),
)


def normalise_channel(channel: np.ndarray) -> np.ndarray:
    """float [h,w] -> uint8 [h,w]: mean at 128, one standard deviation = 64 levels (flat: all 128)."""
    centred = channel - channel.mean()
    spread = channel.std()
    scaled = centred / spread * 64 + 128 if spread > 1e-8 else np.full_like(channel, 128.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def activation_grid(activation: np.ndarray, columns: int = GRID_COLUMNS, gap: int = 1) -> np.ndarray:
    """float [h,w,c] -> uint8 [rows*(h+gap)-gap, cols*(w+gap)-gap]: every channel, row by row (gaps 0)."""
    if activation.ndim != 3:
        raise ValueError(
            f"an activation grid needs a feature map [h,w,c], got shape {list(activation.shape)}"
        )
    height, width, count = activation.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap), dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        grid[top : top + height, left : left + width] = normalise_channel(activation[..., index])
    return grid


def viridis_table(size: int = 256) -> np.ndarray:
    """float32 [size, 3] RGB in 0..1: entry i is viridis at i / (size - 1)."""
    positions = np.linspace(0.0, 1.0, size)  # [size]
    channels = [np.polynomial.polynomial.polyval(positions, coefficients) for coefficients in _VIRIDIS]
    return np.clip(np.stack(channels, axis=1), 0.0, 1.0).astype(np.float32)  # [size, 3]


def grid_scale(grid: np.ndarray) -> int:
    """The whole enlargement factor `render_grid` uses: small maps grow to about `TARGET_WIDTH` pixels."""
    return max(1, min(MAX_SCALE, TARGET_WIDTH // max(1, grid.shape[1])))


def render_grid(grid: np.ndarray, title: str) -> np.ndarray:
    """uint8 grid [H,W] -> uint8 RGB picture: the grid in viridis, enlarged `grid_scale(grid)` times
    (nearest neighbour), under a white strip `TITLE_HEIGHT` pixels high holding `title`. The picture is
    as wide as the grid, or as the title when that is wider (the grid then sits centred)."""
    if grid.ndim != 2 or grid.dtype != np.uint8:
        raise ValueError(f"grid must be uint8 [H,W], got {grid.dtype} {list(grid.shape)}")
    scale = grid_scale(grid)
    coloured = np.round(viridis_table()[grid] * 255).astype(np.uint8)  # [H,W,3]
    coloured = np.repeat(np.repeat(coloured, scale, axis=0), scale, axis=1)  # [H*s,W*s,3]
    font = ImageFont.load_default(size=TITLE_SIZE)  # FreeType when Pillow has it, else a bitmap font
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), title, font=font)
    width = max(coloured.shape[1], math.ceil(right - left) + 8)
    picture = Image.new("RGB", (width, TITLE_HEIGHT + coloured.shape[0]), "white")
    picture.paste(Image.fromarray(coloured), ((width - coloured.shape[1]) // 2, TITLE_HEIGHT))
    origin = ((width - (right - left)) / 2 - left, (TITLE_HEIGHT - (bottom - top)) / 2 - top)
    ImageDraw.Draw(picture).text(origin, title, fill="black", font=font)
    return np.asarray(picture)


def grid_title(layer: str, activation: np.ndarray) -> str:
    """The book's title of a layer's grid: its name and the feature map's shape, `conv1  26x26x32`."""
    height, width, channels = activation.shape
    return f"{layer}  {height}x{width}x{channels}"


def save_activation_png(layer: str, activation: np.ndarray, path: str | Path) -> tuple[int, int]:
    """Write the titled grid of one layer's feature map [h,w,c] as PNG; returns its (width, height)."""
    picture = render_grid(activation_grid(activation), grid_title(layer, activation))
    Image.fromarray(picture).save(path, format="PNG", optimize=True)
    return picture.shape[1], picture.shape[0]
