"""Server-side preprocessing for the ONNX path: what the SavedModel does in-graph with string ops.

A manifest signature may name a preprocess step (`image_bytes` or `text`). The step turns the
request's string tensor into the dense tensor the ONNX graph takes. It runs per request, before
batching, so every request in a batch has the same dense shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InvalidArgument

Preprocessor = Callable[[np.ndarray], np.ndarray]

DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
DEFAULT_MAX_REQUEST_IMAGE_PIXELS = 1 << 28  # 268 M pixels: twenty 12-megapixel photos


@dataclass(frozen=True)
class PreprocessLimits:
    """Decoded pixels (from each image's header, before decoding) per image and per request."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_image_pixels: int = DEFAULT_MAX_REQUEST_IMAGE_PIXELS


def image_bytes_preprocessor(
    version_dir: Path, params: Mapping[str, Any], limits: PreprocessLimits | None = None
) -> Preprocessor:
    """Encoded JPEG/PNG bytes [N] -> float32 pixels [N, H, W, C] in 0..255, resized like the graph."""
    from serving.images import decode_image, image_size

    height, width = int(params["height"]), int(params["width"])
    channels = int(params.get("channels", 3))
    limits = limits or PreprocessLimits()

    def run(images: np.ndarray) -> np.ndarray:
        if images.ndim != 1:
            raise InvalidArgument(
                f"image bytes must be a 1-D batch of strings, got shape {list(images.shape)}"
            )
        total = 0
        for index, data in enumerate(images):  # headers only: refuse the request before decoding any
            try:
                columns, rows = image_size(data, limits.max_image_pixels)
            except ValueError as exc:
                raise InvalidArgument(f"image {index}: {exc} (--max_image_pixels)") from exc
            total += columns * rows
            if total > limits.max_request_image_pixels:
                raise InvalidArgument(
                    f"the request's images hold more than {limits.max_request_image_pixels} pixels "
                    f"(--max_request_image_pixels), counted up to image {index}"
                )
        pixels = np.empty((len(images), height, width, channels), dtype=np.float32)
        for index, data in enumerate(images):
            try:
                decode_image(data, height, width, channels, max_pixels=limits.max_image_pixels, out=pixels[index])
            except ValueError as exc:
                raise InvalidArgument(f"image {index}: {exc}") from exc
        return pixels

    return run


def text_preprocessor(
    version_dir: Path, params: Mapping[str, Any], limits: PreprocessLimits | None = None
) -> Preprocessor:
    """Raw UTF-8 text [N] -> int64 token ids [N, L], exactly as Keras's TextVectorization."""
    from serving.text import Tokenizer

    tokenizer = Tokenizer.from_params(version_dir, params)

    def run(texts: np.ndarray) -> np.ndarray:
        if texts.ndim != 1:
            raise InvalidArgument(f"text must be a 1-D batch of strings, got shape {list(texts.shape)}")
        try:
            return np.asarray(tokenizer.encode(list(texts)), dtype=np.int64)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    return run


PREPROCESSORS: dict[str, Callable[[Path, Mapping[str, Any], PreprocessLimits | None], Preprocessor]] = {
    "image_bytes": image_bytes_preprocessor,
    "text": text_preprocessor,
}


def build_preprocessor(
    kind: str, version_dir: Path, params: Mapping[str, Any], limits: PreprocessLimits | None = None
) -> Preprocessor:
    try:
        factory = PREPROCESSORS[kind]
    except KeyError:
        raise ValueError(f"unknown preprocess kind {kind!r}; known: {sorted(PREPROCESSORS)}") from None
    return factory(version_dir, params, limits)
