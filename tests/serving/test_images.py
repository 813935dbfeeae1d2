"""serving.images: Pillow + numpy decoding that matches the SavedModel's in-graph decoding.

Bad inputs (empty, text, truncated JPEG, decompression bombs) must raise `ImageDecodeError`, which is
both a `ValueError` and the server's `InvalidArgument`. The parity tests compare with TensorFlow;
the server's fast `resize_image` must equal the numpy reference `resize_bilinear` exactly.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from serving.errors import InvalidArgument
from serving.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    decode_images,
    image_size,
    resize_bilinear,
    resize_image,
)
from training.common import resolve_data_dir


def encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: JPEG-compressible like a photo, uint8 [h,w,3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height RGB, with a tiny IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def jpeg_with_claimed_size(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(encode(photo_like(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# --- decoding ------------------------------------------------------------------------------------


def test_png_at_its_own_size_is_exact() -> None:
    pixels = photo_like(12, 20)
    decoded = decode_image(encode(pixels, "PNG"), 12, 20, 3)
    assert decoded.dtype == np.float32 and decoded.shape == (12, 20, 3)
    np.testing.assert_array_equal(decoded, pixels.astype(np.float32))


def test_color_conversions_follow_tensorflow() -> None:
    gray = photo_like(8, 8)[:, :, 0]
    rgb_from_gray = decode_image(encode(gray, "PNG"), 8, 8, 3)
    np.testing.assert_array_equal(rgb_from_gray, np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32))
    rgba = np.concatenate([photo_like(8, 8), np.full((8, 8, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(
        decode_image(encode(rgba, "PNG"), 8, 8, 3), rgba[:, :, :3].astype(np.float32)
    )
    assert decode_image(encode(gray, "PNG"), 28, 28, 1).shape == (28, 28, 1)


def test_resize_constant_image_stays_constant_and_in_range() -> None:
    pixels = np.full((37, 53, 3), 200, dtype=np.uint8)
    for height, width in ((160, 160), (5, 7), (1, 1), (300, 20)):
        resized = resize_bilinear(pixels, height, width)
        assert resized.shape == (height, width, 3)
        np.testing.assert_array_equal(resized, 200.0)


def test_batch_decoding_and_header_size() -> None:
    blobs = [encode(photo_like(30, 40, seed), "JPEG") for seed in range(3)]
    batch = decode_images(blobs, 16, 16, 3)
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.float32
    assert image_size(blobs[0]) == (40, 30)
    with pytest.raises(ImageDecodeError, match="image 1"):
        decode_images([blobs[0], b"not an image"], 16, 16, 3)


def test_bad_arguments_are_programming_errors() -> None:
    data = encode(photo_like(8, 8), "PNG")
    with pytest.raises(ValueError, match="channels"):
        decode_image(data, 8, 8, 2)
    with pytest.raises(ValueError, match="positive"):
        decode_image(data, 0, 8, 3)


# --- the fast resize equals the numpy reference ---------------------------------------------------


def as_image(pixels: np.ndarray) -> Image.Image:
    """uint8 [h, w, C] -> a Pillow image in mode L (C=1), RGB or RGBA."""
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [
        ((97, 131), (32, 32)),  # down
        ((13, 37), (40, 28)),  # up along y, down along x
        ((50, 50), (50, 50)),  # same size: the pixels themselves
        ((1, 1), (7, 5)),  # one pixel
        ((300, 20), (16, 160)),
        ((1000, 999), (224, 224)),  # down by more than 2x: skipped source rows
        ((256, 207), (224, 224)),  # a typical test photo
        ((3, 640), (480, 2)),
    ],
)
def test_fast_resize_is_bit_identical_to_the_reference(
    in_shape: tuple[int, int], out_shape: tuple[int, int], channels: int
) -> None:
    pixels = np.random.default_rng(sum(in_shape) + channels).integers(0, 256, (*in_shape, channels), np.uint8)
    resized = resize_image(as_image(pixels), *out_shape)
    assert resized.dtype == np.float32 and resized.shape == (*out_shape, channels)
    np.testing.assert_array_equal(resized, resize_bilinear(pixels, *out_shape))  # max abs difference 0


def test_fast_resize_writes_into_out_and_checks_it() -> None:
    pixels = photo_like(40, 30)
    batch = np.full((2, 16, 24, 3), -1.0, dtype=np.float32)
    first, second = batch[0], batch[1]
    assert resize_image(as_image(pixels), 16, 24, out=second) is second
    np.testing.assert_array_equal(batch[1], resize_bilinear(pixels, 16, 24))
    np.testing.assert_array_equal(batch[0], -1.0)
    assert decode_image(encode(pixels, "PNG"), 16, 24, 3, out=first) is first
    np.testing.assert_array_equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="out"):
        resize_image(as_image(pixels), 16, 24, out=np.empty((16, 24, 1), np.float32))
    with pytest.raises(ValueError, match="out"):
        resize_image(as_image(pixels), 16, 24, out=np.empty((16, 24, 3), np.float64))
    with pytest.raises(ValueError, match="mode"):
        resize_image(as_image(pixels).convert("P"), 16, 24)


def test_decoding_resizes_like_the_reference() -> None:
    """decode_image = the decoded pixels through `resize_bilinear`, for every channel count."""
    rgba = np.concatenate([photo_like(45, 61, seed=3), photo_like(45, 61, seed=4)[:, :, :1]], axis=2)
    for channels, mode in ((1, "L"), (3, "RGB"), (4, "RGBA")):
        data = encode(rgba, "PNG")
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert(mode)).reshape(45, 61, channels)
        np.testing.assert_array_equal(decode_image(data, 30, 70, channels), resize_bilinear(pixels, 30, 70))
    jpeg = encode(photo_like(120, 90, seed=5), "JPEG", quality=80)
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)))
    np.testing.assert_array_equal(decode_image(jpeg, 64, 64, 3), resize_bilinear(pixels, 64, 64))


def test_fast_resize_is_bit_identical_on_real_photos() -> None:
    """Every 10th cats-vs-dogs test photo, RGB and grayscale, at 224 and 160: max abs difference 0."""
    root = resolve_data_dir() / "cats_vs_dogs" / "test"
    photos = sorted(root.glob("*/*.jpg"))[::10]
    if not photos:
        pytest.skip(f"no cats-vs-dogs test photos under {root}")
    for path in photos:
        data = Path(path).read_bytes()
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # [h, w, 3]
        gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"))[:, :, None]  # [h, w, 1]
        for size in (224, 160):
            np.testing.assert_array_equal(decode_image(data, size, size, 3), resize_bilinear(rgb, size, size))
        np.testing.assert_array_equal(decode_image(data, 28, 28, 1), resize_bilinear(gray, 28, 28))


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, I am plain text, not a picture\n", "not a JPEG"),
        (b"\xff\xd8\xff", "JPEG"),  # a JPEG start marker and nothing else
    ],
)
def test_garbage_raises_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message) as caught:
        decode_image(data, 8, 8, 3)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, InvalidArgument)


def test_truncated_jpeg_raises() -> None:
    data = encode(photo_like(64, 64), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2], 32, 32, 3)


def test_non_bytes_raises() -> None:
    with pytest.raises(ImageDecodeError, match="bytes expected"):
        decode_image("a string", 8, 8, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        png_header_only(20000, 20000),  # 400 MP: a decompression bomb (Pillow refuses it too)
        png_header_only(9000, 9000),  # 81 MP: under Pillow's limit, over ours
        png_header_only(20, 70000),  # a side longer than any decoder should accept
        jpeg_with_claimed_size(30000, 30000),
    ],
)
def test_oversized_headers_are_refused_before_decoding(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageDecodeError, match=r"too large|exceeds|out of range"):
        decode_image(data, 160, 160, 3)
    assert DEFAULT_MAX_PIXELS < 9000 * 9000


def test_pixel_budget_is_configurable() -> None:
    data = encode(photo_like(40, 40), "PNG")
    with pytest.raises(ImageDecodeError, match="exceeds"):
        decode_image(data, 8, 8, 3, max_pixels=1000)
    assert decode_image(data, 8, 8, 3, max_pixels=1600).shape == (8, 8, 3)


# --- parity with TensorFlow ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_shape", "out_shape"), [((97, 131), (32, 32)), ((13, 37), (40, 28)), ((50, 50), (50, 50))]
)
def test_resize_matches_tensorflow(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> None:
    tf = pytest.importorskip("tensorflow")
    pixels = np.random.default_rng(1).integers(0, 256, (*in_shape, 3), dtype=np.uint8)
    expected = tf.image.resize(pixels, out_shape, method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(resize_bilinear(pixels, *out_shape), expected, atol=1e-3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decoding_matches_the_saved_model_graph(fmt: str) -> None:
    """Max pixel difference vs `decode_and_resize` (the exported graph): measured 0.0 for both formats."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from training.datasets.cats_vs_dogs import decode_and_resize

    for seed, shape in enumerate([(97, 131), (240, 180), (20, 300)]):
        data = encode(photo_like(*shape, seed=seed), fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        expected = decode_and_resize(tf.constant(data), 64, 64).numpy()
        np.testing.assert_allclose(decode_image(data, 64, 64, 3), expected, atol=1e-3)


def test_tensorflow_default_jpeg_dct_differs() -> None:
    """Why the graph asks for INTEGER_ACCURATE: TF's default DCT is not what Pillow decodes."""
    tf = pytest.importorskip("tensorflow")
    data = encode(photo_like(96, 96), "JPEG", quality=90)
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    accurate = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy().astype(np.int16)
    fast = tf.io.decode_jpeg(data, channels=3).numpy().astype(np.int16)
    np.testing.assert_array_equal(pillow, accurate)
    assert np.abs(pillow - fast).max() > 0
