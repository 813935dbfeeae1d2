"""Samples and the plan: what the load test sends for each kind of signature."""

from __future__ import annotations

import gzip
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clients.base import Classes, Client, ExampleLike, ModelStatus, TensorLike
from clients.errors import ClientError
from loadtests.workload import Samples, build_plan, load_samples, read_idx_images


def write_idx(path: Path, images: np.ndarray) -> Path:
    """uint8 [N, rows, cols] -> IDX3 (gzipped when the name ends in .gz), as MNIST ships it."""
    header = (2051).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_data_dir(root: Path, digits: int = 6) -> Path:
    """A small folder in the layout of ../shared/data: digits, two photos, three reviews."""
    rng = np.random.default_rng(0)
    write_idx(root / "mnist/t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(digits, 28, 28)))
    for kind, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        folder = root / "cats_vs_dogs/test" / kind
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 32, 3), colour, dtype=np.uint8)).save(folder / f"{kind[:-1]}.1.jpg")
    (root / "sentiment").mkdir(parents=True, exist_ok=True)
    (root / "sentiment/rotten_tomatoes.csv").write_text('text,label\ngreat fun,1\n"dull, awful",0\nfine,1\n')
    return root


def test_read_idx_checks_the_header(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx_images(write_idx(tmp_path / "a.idx", images)), images)
    (tmp_path / "bad.idx").write_bytes(b"\x00\x00\x08\x01" + bytes(12))
    with pytest.raises(ValueError, match="magic"):
        read_idx_images(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(write_idx(tmp_path / "b.idx", images).read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx_images(tmp_path / "short.idx")


def test_load_samples_reads_each_kind_and_lists_what_is_missing(tmp_path: Path) -> None:
    samples = load_samples(write_data_dir(tmp_path / "data"), limit=4)
    assert samples.digits is not None and samples.digits.shape == (4, 28, 28)
    assert len(samples.photos) == 2 and all(p[:2] == b"\xff\xd8" for p in samples.photos)  # JPEG
    assert samples.texts == ["great fun", "dull, awful", "fine"] and not samples.missing
    empty = load_samples(tmp_path / "nothing")
    assert empty.digits is None and not empty.photos and not empty.texts and len(empty.missing) == 3


class MetadataOnly(Client):
    """Answers status and metadata from a table; the plan needs nothing else."""

    def __init__(self, signatures: Mapping[str, dict[str, Any]]) -> None:
        self.signatures = signatures

    def status(self, model: str, version: int | None = None, label: str | None = None) -> list[ModelStatus]:
        if model not in self.signatures:
            raise ClientError("NOT_FOUND", 404, f"model '{model}' is not served")
        return [ModelStatus(1, "AVAILABLE", None)]

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        return {"name": model, "version": 1, "signatures": self.signatures[model]}

    def predict(self, model: str, inputs: Mapping[str, TensorLike], **_: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def classify(self, model: str, examples: Sequence[ExampleLike], **_: Any) -> Classes:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _sig(**inputs: tuple[str, list[int]]) -> dict[str, Any]:
    return {
        "method": "tensorflow/serving/predict",
        "inputs": {k: {"dtype": d, "shape": s} for k, (d, s) in inputs.items()},
        "outputs": {"probabilities": {"dtype": "float32", "shape": [-1, 2]}},
    }


def test_plan_covers_every_signature_with_real_samples(tmp_path: Path) -> None:
    samples = load_samples(write_data_dir(tmp_path / "data"))
    client = MetadataOnly(
        {
            "digits": {
                "serving_default": _sig(image=("float32", [-1, 28, 28, 1])),
                "explain": _sig(image=("float32", [-1, 28, 28, 1])),
            },
            "catdog": {
                "serving_default": _sig(image=("float32", [-1, 16, 16, 3])),
                "predict_image_bytes": _sig(image_bytes=("string", [-1])),
                "explain": _sig(image=("float32", [-1, 16, 16, 3])),
            },
            "sentiment": {
                "serving_default": _sig(text=("string", [-1])),
                "pair": _sig(a=("string", [-1]), b=("string", [-1])),
            },
        }
    )
    calls, notes = build_plan(client, ["digits", "catdog", "sentiment", "absent"], samples)
    assert {c.name: c.weight for c in calls} == {
        "digits:explain": 1,
        "digits:serving_default": 3,
        "catdog:explain": 1,
        "catdog:predict_image_bytes": 3,
        "catdog:serving_default": 3,
        "sentiment:serving_default": 3,
    }
    assert notes == ["sentiment:pair: takes 2 inputs, skipped", "absent: not served, skipped"]
    rng = random.Random(0)
    made = {c.name: c.make_inputs(rng) for c in calls}
    digit = made["digits:serving_default"]["image"]
    assert digit.shape == (1, 28, 28, 1) and digit.dtype == np.float32
    assert any(np.array_equal(digit[0, ..., 0], d) for d in samples.digits)  # type: ignore[union-attr]
    assert made["catdog:explain"]["image_bytes"][0] in samples.photos  # explain sends the JPEG bytes
    assert made["catdog:predict_image_bytes"]["image_bytes"][0] in samples.photos
    assert made["catdog:serving_default"]["image"].shape == (1, 16, 16, 3)
    assert made["sentiment:serving_default"]["text"][0].decode() in samples.texts


def test_signatures_without_samples_are_skipped() -> None:
    client = MetadataOnly({"digits": {"serving_default": _sig(image=("float32", [-1, 28, 28, 1]))}})
    calls, notes = build_plan(client, ["digits"], Samples())
    assert calls == [] and notes == ["digits:serving_default: needs MNIST digits, skipped"]
