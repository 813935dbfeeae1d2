"""Files -> the tensors and pictures the CLI needs: PNG/JPEG/.npy in, numpy out.

Pixels are decoded and resized by `serving.images`, the same code the server runs for `image_bytes`,
so an image the client prepares itself equals the one the server would have prepared from the bytes.
Digits follow MNIST's convention (a light digit on a dark background); a dark digit on a light page,
as people draw them, is inverted when `invert="auto"` sees a light border.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from serving.images import ImageDecodeError, decode_image, image_size, resize_bilinear

Invert = Literal["auto", "yes", "no"]


class ImageLoadError(ValueError):
    """The file is missing, unreadable, or holds no usable image; the message names the file."""


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"cannot read {path} as a .npy array: {exc}") from exc
    if array.dtype.kind not in "uif" or array.size == 0:
        raise ImageLoadError(f"{path}: expected a numeric image array, got {array.dtype} {list(array.shape)}")
    return array


def _as_batch(array: np.ndarray, path: Path) -> np.ndarray:
    """[h,w] | [h,w,C] | [N,h,w,C] -> float32 [N,h,w,C]."""
    if array.ndim == 2:
        array = array[None, :, :, None]  # [h,w] -> [1,h,w,1]
    elif array.ndim == 3:
        array = array[None]  # [h,w,C] -> [1,h,w,C]
    elif array.ndim != 4:
        raise ImageLoadError(f"{path}: an image array has 2 to 4 dimensions, got shape {list(array.shape)}")
    return array.astype(np.float32)


def _fix_channels(batch: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """float32 [N,h,w,c] -> [N,h,w,channels]: gray <-> RGB like the server's decoder, alpha dropped."""
    have = batch.shape[-1]
    if have == channels:
        return batch
    if have == 1 and channels == 3:
        return np.repeat(batch, 3, axis=-1)
    if have in (3, 4) and channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
        return (batch[..., :3] @ weights)[..., None]
    if have == 4 and channels == 3:
        return batch[..., :3]
    raise ImageLoadError(f"{path}: cannot turn {have} channels into {channels}")


def _needs_inversion(image: np.ndarray) -> bool:
    """True when the border of a [h,w,1] image is mostly light, i.e. a dark digit on a light page."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # [2w + 2h, 1]
    return float(np.median(border)) > 127.5


def load_image_tensor(
    path: str | Path, height: int, width: int, channels: int, *, invert: Invert = "no"
) -> np.ndarray:
    """A PNG/JPEG/GIF/BMP or .npy file -> float32 [N, height, width, channels], values 0..255.

    Image files give N = 1; a .npy array may hold [h,w], [h,w,C] or a batch [N,h,w,C] and is resized
    when its size differs. `invert` ("auto" for digits) flips 0..255 so the digit is the light part.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        batch = _as_batch(_load_npy(path), path)  # [N,h,w,c]
        batch = _fix_channels(batch, channels, path)  # [N,h,w,channels]
        if batch.shape[1:3] != (height, width):
            batch = np.stack([resize_bilinear(image, height, width) for image in batch])
    else:
        try:
            image = decode_image(read_bytes(path), height, width, channels)  # [height,width,channels]
        except ImageDecodeError as exc:
            raise ImageLoadError(f"{path}: {exc.message}") from exc
        batch = image[None]  # [1,height,width,channels]
    if invert == "yes" or (invert == "auto" and channels == 1 and all(_needs_inversion(i) for i in batch)):
        batch = 255.0 - batch
    return np.ascontiguousarray(batch, dtype=np.float32)


def load_photo(path: str | Path) -> np.ndarray:
    """The file as it looks, for drawing on: uint8 [h, w, 3] at its own size (a .npy's first image)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        batch = _fix_channels(_as_batch(_load_npy(path), path), 3, path)  # [N,h,w,3]
        return np.clip(batch[0], 0, 255).astype(np.uint8)
    data = read_bytes(path)
    try:
        width, height = image_size(data)
        return decode_image(data, height, width, 3).astype(np.uint8)  # same size: no resampling
    except ImageDecodeError as exc:
        raise ImageLoadError(f"{path}: {exc.message}") from exc


def looks_grayscale(path: str | Path, tolerance: float = 8.0) -> bool:
    """True when an image file has one channel, or three that (almost) agree everywhere: a gray picture.

    Read at thumbnail size (Pillow's draft mode for JPEG), so a large photo costs little. Unreadable
    files are not gray here; decoding them fails later with its own message.
    """
    try:
        with Image.open(path) as image:
            if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
                return True
            image.draft("RGB", (64, 64))
            rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32)  # [64, 64, 3]
    except (OSError, ValueError):
        return False
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)  # [64, 64]: 0 where the pixel is gray
    return float(np.percentile(spread, 99)) <= tolerance
