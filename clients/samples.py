"""`ml-client sample`: a real example input for each served model, so a first `predict` works as written.

The examples come from the test sets under the data folder (`$DATA_DIR`, else `../shared/data` beside
the repository, the layout of `../shared/data/README.md`): an MNIST test digit, a cats-vs-dogs test
photo, a Rotten Tomatoes review. Where that folder does not hold them (a user who has not downloaded
the data), a generated stand-in is written instead and `Sample.generated` says so: a digit drawn with
Pillow's font, a synthetic picture, a sentence. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DATA_DIR_ENV = "DATA_DIR"
MODELS = ("digits", "catdog", "sentiment")
DEFAULT_OUTPUT = {"digits": "digit.png", "catdog": "photo.jpg", "sentiment": "review.txt"}
MNIST_IMAGES = Path("mnist/t10k-images-idx3-ubyte.gz")
MNIST_LABELS = Path("mnist/t10k-labels-idx1-ubyte.gz")
PHOTOS = Path("cats_vs_dogs/test")
REVIEWS = Path("sentiment/rotten_tomatoes.csv")
FALLBACK_REVIEW = "A gripping, funny film: the cast is wonderful and the story never lets go."


class SampleError(ValueError):
    """The example cannot be written (bad index, unwritable path); the message says why."""


@dataclass(frozen=True)
class Sample:
    """What `write_sample` wrote: the file, where the example came from, and its true label if known."""

    path: Path
    source: str  # e.g. "MNIST test digit #0 (mnist/t10k-images-idx3-ubyte.gz)"
    label: str | None
    generated: bool  # True: a stand-in, not real data (the data folder lacks the dataset)


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$DATA_DIR`, else `../shared/data` beside the repository (as training and export read it)."""
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def write_sample(model: str, output: Path, data_dir: Path, index: int = 0) -> Sample:
    """Write example number `index` of `model`'s test data to `output` (a stand-in without the data)."""
    if model not in MODELS:
        raise SampleError(f"no sample for model '{model}'; samples exist for {', '.join(MODELS)}")
    if index < 0:
        raise SampleError(f"--index must be >= 0, got {index}")
    writer = {"digits": _digit, "catdog": _photo, "sentiment": _review}[model]
    try:
        return writer(output, data_dir, index)
    except OSError as exc:
        raise SampleError(f"cannot write {output}: {exc.strerror or exc}") from exc


def _digit(output: Path, data_dir: Path, index: int) -> Sample:
    images_file, labels_file = data_dir / MNIST_IMAGES, data_dir / MNIST_LABELS
    if images_file.is_file():
        with gzip.open(images_file) as stream:
            raw = stream.read()
        count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))  # IDX header
        if index >= count:
            raise SampleError(f"--index {index}: the MNIST test set has {count} digits")
        start = 16 + index * rows * cols
        pixels = np.frombuffer(raw, np.uint8, rows * cols, start).reshape(rows, cols)  # light on dark
        label = None
        if labels_file.is_file():
            with gzip.open(labels_file) as stream:
                label = str(stream.read()[8 + index])
        Image.fromarray(pixels).save(output, format=_format(output, "PNG"))
        return Sample(output, f"MNIST test digit #{index} ({MNIST_IMAGES})", label, generated=False)
    digit = str(index % 10)
    page = Image.new("L", (28, 28), 0)  # MNIST's convention: a light digit on black
    font = ImageFont.load_default(size=22)
    ImageDraw.Draw(page).text((14, 14), digit, fill=255, font=font, anchor="mm")
    page.save(output, format=_format(output, "PNG"))
    return Sample(output, f"a '{digit}' drawn with Pillow's font (no {MNIST_IMAGES} in {data_dir})", digit, True)


def _photo(output: Path, data_dir: Path, index: int) -> Sample:
    folder = data_dir / PHOTOS
    photos = _alternating(folder)
    if photos:
        if index >= len(photos):
            raise SampleError(f"--index {index}: {folder} holds {len(photos)} photos")
        chosen = photos[index]
        output.write_bytes(chosen.read_bytes())
        label = {"cats": "cat", "dogs": "dog"}.get(chosen.parent.name)
        return Sample(output, f"test photo {chosen.relative_to(data_dir)}", label, generated=False)
    rng = np.random.default_rng(index)
    height, width = 192, 256
    y, x = np.mgrid[0:height, 0:width]  # [h, w] each
    picture = np.stack(
        [128 + 100 * np.sin(x / 23 + index), 128 + 100 * np.cos(y / 17), 96 + 0 * x], axis=-1
    )  # [h, w, 3]
    picture += rng.normal(0, 12, size=picture.shape)
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(output, format=_format(output, "JPEG"))
    return Sample(output, f"a synthetic picture (no photos under {folder})", None, generated=True)


def _alternating(folder: Path) -> list[Path]:
    """The photos of every class folder, interleaved (cat, dog, cat, ...), each class in number order."""
    classes = [sorted(d.glob("*.jpg"), key=_number) for d in sorted(folder.iterdir()) if d.is_dir()] if folder.is_dir() else []
    longest = max((len(c) for c in classes), default=0)
    return [c[i] for i in range(longest) for c in classes if i < len(c)]


def _number(path: Path) -> tuple[int, str]:
    """cat.100.jpg -> (100, name): numeric order, not 1, 10, 100."""
    parts = path.name.split(".")
    return (int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0), path.name


def _review(output: Path, data_dir: Path, index: int) -> Sample:
    reviews = data_dir / REVIEWS
    if reviews.is_file():
        with reviews.open(newline="", encoding="utf-8") as stream:
            for number, row in enumerate(csv.DictReader(stream)):
                if number == index:
                    output.write_text(row["text"].strip() + "\n", encoding="utf-8")
                    label = {"0": "negative", "1": "positive"}.get(row["label"].strip())
                    return Sample(output, f"review #{index} of {REVIEWS}", label, generated=False)
        raise SampleError(f"--index {index}: {reviews} holds {number + 1} reviews")
    output.write_text(FALLBACK_REVIEW + "\n", encoding="utf-8")
    return Sample(output, f"a sentence written for the sample (no {REVIEWS} in {data_dir})", "positive", True)


def _format(output: Path, default: str) -> str:
    """The image format the file name asks for (.png/.jpg/.jpeg/.bmp), else `default`."""
    known = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
    return known.get(output.suffix.lower(), default)
