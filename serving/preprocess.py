"""Server-side preprocessing for the ONNX path: what the SavedModel does in-graph with string ops.

A manifest signature may name a preprocess step (`image_bytes` or `text`). The step turns the
request's string tensor into the dense tensor the ONNX graph takes. It runs per request, before
batching, so every request in a batch has the same dense shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InvalidArgument

Preprocessor = Callable[[np.ndarray], np.ndarray]


def image_bytes_preprocessor(version_dir: Path, params: Mapping[str, Any]) -> Preprocessor:
    """Encoded JPEG/PNG bytes [N] -> float32 pixels [N, H, W, C] in 0..255, resized like the graph."""
    from serving.images import decode_image

    height, width = int(params["height"]), int(params["width"])
    channels = int(params.get("channels", 3))

    def run(images: np.ndarray) -> np.ndarray:
        if images.ndim != 1:
            raise InvalidArgument(
                f"image bytes must be a 1-D batch of strings, got shape {list(images.shape)}"
            )
        pixels = np.empty((len(images), height, width, channels), dtype=np.float32)
        for index, data in enumerate(images):
            try:
                decode_image(data, height, width, channels, out=pixels[index])  # straight into the batch
            except ValueError as exc:
                raise InvalidArgument(f"image {index}: {exc}") from exc
        return pixels

    return run


def text_preprocessor(version_dir: Path, params: Mapping[str, Any]) -> Preprocessor:
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


PREPROCESSORS: dict[str, Callable[[Path, Mapping[str, Any]], Preprocessor]] = {
    "image_bytes": image_bytes_preprocessor,
    "text": text_preprocessor,
}


def build_preprocessor(kind: str, version_dir: Path, params: Mapping[str, Any]) -> Preprocessor:
    try:
        factory = PREPROCESSORS[kind]
    except KeyError:
        raise ValueError(f"unknown preprocess kind {kind!r}; known: {sorted(PREPROCESSORS)}") from None
    return factory(version_dir, params)
