"""What the load test sends: real samples, and one weighted call per served model and signature.

Samples come from the development data (`DATA_DIR`, default `../shared/data`) or any folder with the
same layout: MNIST test digits (`mnist/t10k-images-idx3-ubyte.gz`), cats-vs-dogs test photos
(`cats_vs_dogs/test/{cats,dogs}/*.jpg`, sent as JPEG bytes) and movie-review snippets
(`sentiment/rotten_tomatoes.csv`). The plan is read from the server's metadata, as the CLI does: a
signature taking `*_bytes` gets photo bytes, one taking text gets reviews, a float image [N,H,W,1]
gets a digit, [N,H,W,3] a decoded photo. Nothing here imports Locust, so the driver can check a
plan before it starts a run.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.base import Client
from clients.errors import ClientError
from serving.images import decode_image, resize_bilinear

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("digits", "catdog", "sentiment")
EXPLAIN_SIGNATURE = "explain"
MNIST_IMAGES = Path("mnist/t10k-images-idx3-ubyte.gz")
PHOTO_DIRS = (Path("cats_vs_dogs/test/cats"), Path("cats_vs_dogs/test/dogs"))
REVIEWS = Path("sentiment/rotten_tomatoes.csv")
DECODED_PHOTOS = 32  # photos decoded once for float-image signatures (each is H*W*3 float32)


def default_data_dir(repo_root: Path | None = None) -> Path:
    """$DATA_DIR, else ../shared/data next to the repository."""
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"])
    root = repo_root or Path(__file__).resolve().parents[1]
    return (root.parent / "shared" / "data").resolve()


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 file (gzipped or not) -> uint8 [N, rows, cols]; checks the magic number and the size."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 16 or int.from_bytes(data[:4], "big") != 2051:
        raise ValueError(f"{path}: not an IDX3 image file (magic number 2051)")
    count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + count * rows * cols:
        raise ValueError(f"{path}: {len(data) - 16} pixel bytes, header says {count}x{rows}x{cols}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)


@dataclass
class Samples:
    digits: np.ndarray | None = None  # uint8 [K, 28, 28], light digit on dark (MNIST)
    photos: list[bytes] = field(default_factory=list)  # JPEG files as sent on the wire
    texts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what the data folder lacks, for messages

    def __post_init__(self) -> None:
        self._decoded: dict[tuple[int, int], np.ndarray] = {}

    def decoded_photos(self, height: int, width: int) -> np.ndarray:
        """float32 [M, height, width, 3]: the first photos decoded as the server would (cached)."""
        key = (height, width)
        if key not in self._decoded:
            self._decoded[key] = np.stack(
                [decode_image(p, height, width, 3) for p in self.photos[:DECODED_PHOTOS]]
            )
        return self._decoded[key]


def load_samples(data_dir: Path, limit: int = 2000) -> Samples:
    """Read up to `limit` samples of each kind; what is absent is listed in `missing`, not raised."""
    samples = Samples()
    mnist = data_dir / MNIST_IMAGES
    if mnist.is_file():
        samples.digits = read_idx_images(mnist)[:limit]
    else:
        samples.missing.append(str(mnist))
    photo_paths = sorted(
        p for d in PHOTO_DIRS if (data_dir / d).is_dir() for p in (data_dir / d).glob("*.jp*g")
    )
    if photo_paths:
        # Interleave cats and dogs so a small limit still holds both classes.
        chosen = sorted(
            photo_paths, key=lambda p: (int("".join(c for c in p.stem if c.isdigit()) or 0), p.name)
        )
        samples.photos = [p.read_bytes() for p in chosen[:limit]]
    else:
        samples.missing.append(str(data_dir / "cats_vs_dogs/test/{cats,dogs}/*.jpg"))
    reviews = data_dir / REVIEWS
    if reviews.is_file():
        with reviews.open(newline="", encoding="utf-8") as handle:
            samples.texts = [row["text"] for row in csv.DictReader(handle) if row.get("text")][:limit]
    else:
        samples.missing.append(str(reviews))
    return samples


Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Call:
    """One kind of request: `make_inputs(rng)` draws a fresh sample for every request (batch of 1)."""

    model: str
    signature: str
    weight: int
    make_inputs: Callable[[random.Random], Inputs]

    @property
    def name(self) -> str:
        return f"{self.model}:{self.signature}"


def _strings(values: Sequence[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)  # [N]
    array[:] = list(values)
    return array


def _call_for(
    model: str, name: str, signature: dict[str, Any], model_takes_bytes: bool, samples: Samples
) -> Call | str:
    """The Call for one signature, or why there is none."""
    inputs = signature["inputs"]
    if len(inputs) != 1:
        return f"takes {len(inputs)} inputs"
    ((input_name, spec),) = inputs.items()
    weight = 1 if name == EXPLAIN_SIGNATURE else 3
    shape = spec["shape"]
    wants_bytes = spec["dtype"] == "string" and input_name.endswith("bytes")
    send_bytes_instead = name == EXPLAIN_SIGNATURE and input_name == "image" and model_takes_bytes
    if wants_bytes or (send_bytes_instead and len(shape) == 4 and shape[-1] == 3):
        if not samples.photos:
            return "needs photos"
        photos, key = samples.photos, "image_bytes" if send_bytes_instead else input_name
        return Call(model, name, weight, lambda rng: {key: _strings([rng.choice(photos)])})
    if spec["dtype"] == "string":
        if not samples.texts:
            return "needs review texts"
        texts = samples.texts
        return Call(
            model, name, weight, lambda rng: {input_name: _strings([rng.choice(texts).encode("utf-8")])}
        )
    if len(shape) == 4 and all(d > 0 for d in shape[1:]) and shape[-1] in (1, 3):
        height, width, channels = shape[1:]
        if channels == 1:
            if samples.digits is None:
                return "needs MNIST digits"
            digits = samples.digits.astype(np.float32)[..., None]  # [K, 28, 28, 1]
            if digits.shape[1:3] != (height, width):
                digits = np.stack([resize_bilinear(d, height, width) for d in digits])
            pool = digits
        else:
            if not samples.photos:
                return "needs photos"
            pool = samples.decoded_photos(height, width)  # [M, H, W, 3]
        dtype = np.dtype(spec["dtype"])
        return Call(
            model, name, weight, lambda rng: {input_name: pool[rng.randrange(len(pool))][None].astype(dtype)}
        )
    return f"input '{input_name}' {spec['dtype']} {shape} is not an image or text"


def build_plan(client: Client, models: Sequence[str], samples: Samples) -> tuple[list[Call], list[str]]:
    """Calls for every signature of every model the server serves, and notes on what was skipped.

    A model the server does not know (NOT_FOUND) is skipped; any other error is raised.
    """
    calls: list[Call] = []
    notes: list[str] = []
    for model in models:
        try:
            if not any(s.state == "AVAILABLE" for s in client.status(model)):
                notes.append(f"{model}: no AVAILABLE version, skipped")
                continue
            signatures = client.metadata(model)["signatures"]
        except ClientError as exc:
            if exc.code != "NOT_FOUND":
                raise
            notes.append(f"{model}: not served, skipped")
            continue
        takes_bytes = any(
            s["dtype"] == "string" and n.endswith("bytes")
            for sig in signatures.values()
            for n, s in sig["inputs"].items()
        )
        for name, signature in sorted(signatures.items()):
            call = _call_for(model, name, signature, takes_bytes, samples)
            if isinstance(call, Call):
                calls.append(call)
            else:
                notes.append(f"{model}:{name}: {call}, skipped")
    return calls, notes
