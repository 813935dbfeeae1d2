"""Image bytes -> float32 pixel array, with Pillow and numpy only (no TensorFlow).

The server uses this for the `image_bytes` preprocessing declared in a manifest, and clients use it to
turn a file into the `image` tensor (`catdog` RGB, `digits` grayscale). It reproduces the in-graph
decoding of the exported SavedModels (`export/catdog.py`):

    JPEG: tf.io.decode_jpeg(data, channels=C, dct_method="INTEGER_ACCURATE")  # uint8 [h, w, C]
    else: tf.io.decode_image(data, channels=C, expand_animations=False)        # uint8 [h, w, C]
    tf.image.resize(image, [H, W], method="bilinear", antialias=False)         # float32 [H, W, C]

Pillow's libjpeg-turbo decodes with the accurate integer DCT, bit-identical to TensorFlow's
`INTEGER_ACCURATE` (TensorFlow's default, `INTEGER_FAST`, differs by up to 7 levels per pixel).
TensorFlow's non-antialiased bilinear resize samples with half-pixel centres; `resize_bilinear` below
computes the same arithmetic in float32. Measured on the 300 cats-vs-dogs test photos at 160x160:
0.0 max abs difference for RGB. Grayscale from a colour image can differ by 1 level (libpng's and
Pillow's RGB->L weights differ). Pillow's own `Image.resize` is not used on purpose: its bilinear
filter widens its support when downscaling (antialiasing) and would not match.

Untrusted input is checked before any pixel is decoded: the format must be one TensorFlow decodes
(JPEG, PNG, GIF, BMP) and the width and height read from the header must stay under a pixel budget,
so a small file claiming 20000x20000 pixels (a decompression bomb) is refused without allocating it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import InvalidArgument

# Formats `tf.io.decode_image` understands; anything else is refused before decoding.
FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# 8192 x 8192: far above any photo a client should send for a 160-px model, far below what would
# hurt the server (a decoded RGB image of this size is 200 MB).
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_SIDE = 16384
SUPPORTED_CHANNELS = (1, 3, 4)
_PIL_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


class ImageDecodeError(InvalidArgument, ValueError):
    """The bytes are not a decodable JPEG/PNG/GIF/BMP image, or the image is too large.

    A `ValueError` for library users and an `InvalidArgument` (gRPC INVALID_ARGUMENT, HTTP 400) for
    the server, so a bad upload is the caller's error, never a crash.
    """


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Return (width, height) from the image header without decoding pixels; refuse oversized images."""
    with _open(data, max_pixels) as image:
        return image.size


def decode_image(
    data: bytes,
    height: int,
    width: int,
    channels: int = 3,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode JPEG/PNG/GIF/BMP bytes and resize to float32 [height, width, channels], values 0..255.

    Matches the in-graph decoding described in the module docstring. Raises `ImageDecodeError` for
    empty, truncated, non-image or oversized input.
    """
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"channels must be one of {SUPPORTED_CHANNELS}, got {channels}")
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    pixels = _decode_pixels(data, channels, max_pixels)  # uint8 [h, w, C]
    return resize_bilinear(pixels, height, width)


def decode_images(
    blobs: Sequence[bytes],
    height: int,
    width: int,
    channels: int = 3,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a batch of encoded images into float32 [N, height, width, channels]."""
    batch = np.empty((len(blobs), height, width, channels), dtype=np.float32)
    for index, blob in enumerate(blobs):
        try:
            batch[index] = decode_image(blob, height, width, channels, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"image {index}: {exc.message}") from exc
    return batch


def resize_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of [h, w, C] to float32 [height, width, C], like TF's `antialias=False` resize.

    Half-pixel centres: output index i samples input coordinate (i + 0.5) * in / out - 0.5, clamped
    to the image; the two neighbours are interpolated along x first, then along y, in float32.
    """
    source = pixels.astype(np.float32, copy=False)  # [h, w, C]
    in_height, in_width = source.shape[:2]
    top, bottom, y_lerp = _interpolation_weights(in_height, height)  # [height] each
    left, right, x_lerp = _interpolation_weights(in_width, width)  # [width] each
    x_lerp = x_lerp[None, :, None]  # [1, width, 1]
    rows_top = source[top]  # [height, w, C]
    rows_bottom = source[bottom]  # [height, w, C]
    top_row = rows_top[:, left] + (rows_top[:, right] - rows_top[:, left]) * x_lerp  # [height, width, C]
    bottom_row = rows_bottom[:, left] + (rows_bottom[:, right] - rows_bottom[:, left]) * x_lerp
    result: np.ndarray = top_row + (bottom_row - top_row) * y_lerp[:, None, None]  # [height, width, C]
    return result.astype(np.float32, copy=False)


def _interpolation_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and float32 weight of the upper one, for each output position."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    lower = np.clip(floor, 0, in_size - 1).astype(np.intp)
    upper = np.clip(np.ceil(centres), 0, in_size - 1).astype(np.intp)
    lerp = (centres - floor).astype(np.float32)
    return lower, upper, lerp


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the image from its header only (Pillow opens lazily) and enforce the size budget."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageDecodeError(f"image bytes expected, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("image bytes are empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not a JPEG, PNG, GIF or BMP image ({len(data)} bytes)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"unreadable image header: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0 or width > DEFAULT_MAX_SIDE or height > DEFAULT_MAX_SIDE:
        image.close()
        raise ImageDecodeError(f"image size {width}x{height} is out of range (max side {DEFAULT_MAX_SIDE})")
    if width * height > max_pixels:
        image.close()
        raise ImageDecodeError(f"image size {width}x{height} exceeds the limit of {max_pixels} pixels")
    return image


def _decode_pixels(data: bytes, channels: int, max_pixels: int) -> np.ndarray:
    """Decode the first frame into uint8 [h, w, channels], converting colour like tf.io.decode_image."""
    with _open(data, max_pixels) as image:
        try:
            image.load()  # raises OSError on truncated data (LOAD_TRUNCATED_IMAGES stays False)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale PNG: TF scales to 8 bits; Pillow's convert() would clip instead.
                wide = np.asarray(image, dtype=np.uint32)  # [h, w]
                image = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8))
            # RGBA -> RGB drops alpha (no compositing) and L -> RGB repeats the channel, as TF does.
            converted = image.convert(_PIL_MODE[channels])
            pixels = np.asarray(converted, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # [h, w] -> [h, w, 1]
    return pixels
