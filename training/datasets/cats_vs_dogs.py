"""Cats vs dogs in the book's `cats_vs_dogs_small` layout: `train/`, `validation/`, `test/`, each with
`cats/` and `dogs/` folders of JPEG photos.

Where the photos come from (`locate`):

* `DATA_DIR/cats_vs_dogs` (offline copy: 600+600 / 150+150 / 150+150 genuine Kaggle photos, longer
  side 256 px), or any folder with that layout passed as `--dataset-dir`;
* otherwise, when `download=True`, Microsoft's PetImages archive (`kagglecatsanddogs_5340.zip`,
  12,500 photos per class) is downloaded once into `DATA_DIR/downloads/` and split like the book
  (1,000 / 500 / 500 photos per class, in file-number order), skipping the corrupt or non-JPEG files
  the archive is known to contain (`split_petimages`, testable on a tiny fake archive).

Decoding (`decode_and_resize`) is the exact graph the exported SavedModel runs on `image_bytes` and the
one `serving/images.py` reproduces without TensorFlow: JPEG with the accurate integer DCT, other formats
with `tf.io.decode_image`, then bilinear resize without antialiasing (half-pixel centres). Training
therefore sees the same pixels the server feeds the model.

`load_split` decodes a split once and keeps it in memory (float32 [N,H,W,3] 0..255 + int labels,
0 = cat, 1 = dog); `make_dataset` turns arrays into a shuffled, batched, prefetched tf.data pipeline.
TensorFlow is imported lazily, only by the functions that need it.
"""

from __future__ import annotations

import io
import re
import shutil
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.common import MissingDataError

LABELS: tuple[str, ...] = ("cat", "dog")  # class order of `probabilities`
CLASS_FOLDERS: tuple[str, ...] = ("cats", "dogs")  # folder of each label, same order
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DATASET_FOLDER = "cats_vs_dogs"
PETIMAGES_URL = "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
PETIMAGES_ARCHIVE = "kagglecatsanddogs_5340.zip"
# Per class, as in the book: 1,000 training, 500 validation, 500 test photos.
BOOK_SPLIT: dict[str, int] = {"train": 1000, "validation": 500, "test": 500}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Split:
    """One split decoded into memory."""

    images: np.ndarray  # float32 [N,H,W,3], RGB 0..255
    labels: np.ndarray  # int64 [N], 0 = cat, 1 = dog
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def has_layout(root: Path) -> bool:
    """Whether `root` holds train/validation/test, each with a non-empty cats/ and dogs/ folder."""
    return all(
        (root / split / folder).is_dir() and any(_image_files(root / split / folder))
        for split in SPLITS
        for folder in CLASS_FOLDERS
    )


def locate(data_dir: Path, dataset_dir: Path | None = None, download: bool = False) -> Path:
    """The folder with the book's layout: `dataset_dir`, else `data_dir/cats_vs_dogs`, else download it.

    Raises `MissingDataError` naming what is missing and where to get it when nothing is found and
    `download` is False (or the download fails).
    """
    if dataset_dir is not None:
        if has_layout(dataset_dir):
            return dataset_dir
        raise MissingDataError(
            f"{dataset_dir} does not have the layout train|validation|test/cats|dogs/*.jpg"
        )
    local = data_dir / DATASET_FOLDER
    if has_layout(local):
        return local
    if not download:
        raise MissingDataError(
            f"{local} is missing (expected train|validation|test/cats|dogs/*.jpg). Pass --download to fetch "
            f"Microsoft's PetImages archive from {PETIMAGES_URL} and split it there, or --dataset-dir DIR."
        )
    archive = data_dir / "downloads" / PETIMAGES_ARCHIVE
    if not archive.is_file():
        download_file(PETIMAGES_URL, archive)
    counts = split_petimages(archive, local)
    print(f"cats_vs_dogs: split {archive} into {local}: {counts}", flush=True)
    return local


def download_file(url: str, destination: Path, timeout: float = 60.0) -> Path:
    """Download `url` to `destination` through a temporary file (no half-written archive is left)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(destination.suffix + ".part")
    print(f"cats_vs_dogs: downloading {url} -> {destination}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise MissingDataError(
            f"could not download {url} ({exc}); put the book's cats_vs_dogs layout in "
            f"{destination.parent.parent / DATASET_FOLDER} or pass --dataset-dir"
        ) from exc
    partial.replace(destination)
    return destination


def is_valid_jpeg(data: bytes) -> bool:
    """A JFIF/Exif JPEG that decodes completely (PetImages holds empty, truncated and non-JPEG files)."""
    if len(data) < 4 or not data.startswith(b"\xff\xd8"):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            image.load()
            return image.mode in ("RGB", "L") and min(image.size) > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def split_petimages(
    archive: Path,
    destination: Path,
    counts: dict[str, int] | None = None,
    is_valid: Callable[[bytes], bool] = is_valid_jpeg,
) -> dict[str, dict[str, int]]:
    """Extract `PetImages/{Cat,Dog}/N.jpg` from the zip into the book's layout under `destination`.

    Valid photos of each class are taken in file-number order: the first `counts["train"]` go to
    train/, the next ones to validation/ and test/ (renamed `cat.N.jpg` / `dog.N.jpg`). Corrupt files
    are skipped. Writes into a temporary sibling folder and renames it at the end. Returns the number of
    photos written per split and class folder.
    """
    counts = dict(BOOK_SPLIT if counts is None else counts)
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    written: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    pattern = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/(\d+)\.jpg$", re.IGNORECASE)
    with zipfile.ZipFile(archive) as zipped:
        members: dict[str, list[tuple[int, str]]] = {"cat": [], "dog": []}
        for name in zipped.namelist():
            match = pattern.search(name)
            if match:
                members[match.group(1).lower()].append((int(match.group(2)), name))
        for label, folder in zip(LABELS, CLASS_FOLDERS, strict=True):
            ordered = sorted(members[label])
            needed = sum(counts[split] for split in SPLITS)
            accepted: list[tuple[int, bytes]] = []
            for number, name in ordered:
                if len(accepted) == needed:
                    break
                data = zipped.read(name)
                if is_valid(data):
                    accepted.append((number, data))
            if len(accepted) < needed:
                raise MissingDataError(
                    f"{archive}: only {len(accepted)} valid {label} photos, {needed} needed for {counts}"
                )
            start = 0
            for split in SPLITS:
                target = staging / split / folder
                target.mkdir(parents=True, exist_ok=True)
                for number, data in accepted[start : start + counts[split]]:
                    (target / f"{label}.{number}.jpg").write_bytes(data)
                written[split][folder] = counts[split]
                start += counts[split]
    if destination.exists():
        shutil.rmtree(destination)
    staging.replace(destination)
    return written


def list_split(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """Sorted image paths of one split and their labels (int64 [N], 0 = cat, 1 = dog)."""
    paths: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(CLASS_FOLDERS):
        files = sorted(_image_files(root / split / folder))
        paths.extend(files)
        labels.extend([index] * len(files))
    if not paths:
        raise MissingDataError(f"{root / split} holds no images in {'/ '.join(CLASS_FOLDERS)}/")
    return paths, np.asarray(labels, dtype=np.int64)


def decode_and_resize(image_bytes: Any, height: int, width: int) -> Any:
    """TF graph: one encoded JPEG/PNG/GIF/BMP string -> float32 [height, width, 3] RGB 0..255.

    The exported SavedModel maps this over its `image_bytes` input; `serving/images.py` matches it.
    JPEGs use the accurate integer DCT (TF's default, INTEGER_FAST, is what Pillow does not do).
    """
    import tensorflow as tf

    def jpeg() -> Any:
        return tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")  # uint8 [h,w,3]

    def other() -> Any:
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)  # uint8 [h,w,3]

    pixels = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)  # uint8 [h,w,3]
    pixels.set_shape([None, None, 3])
    resized = tf.image.resize(pixels, [height, width], method="bilinear", antialias=False)  # [H,W,3]
    return tf.cast(resized, tf.float32)


def load_split(root: Path, split: str, image_size: tuple[int, int], limit: int | None = None) -> Split:
    """Decode and resize every photo of a split once (two parallel tf.data workers) into memory."""
    import tensorflow as tf

    paths, labels = list_split(root, split)
    if limit is not None and limit < len(paths):
        # Keep both classes: take every k-th photo rather than the first `limit` (all cats).
        keep = np.linspace(0, len(paths) - 1, limit).round().astype(np.int64)
        paths = [paths[i] for i in keep]
        labels = labels[keep]
    height, width = image_size
    files = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    images = files.map(
        lambda path: decode_and_resize(tf.io.read_file(path), height, width),
        num_parallel_calls=2,
        deterministic=True,
    ).batch(64)
    decoded = np.concatenate([batch.numpy() for batch in images], axis=0)  # float32 [N,H,W,3]
    return Split(images=decoded, labels=labels, paths=tuple(paths))


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augmentation: Any | None = None,
    shuffle_seed: int | None = None,
) -> Any:
    """tf.data of (float32 images [B,...] , int64 labels [B]), shuffled when `shuffle_seed` is given.

    `augmentation` (a Keras layer/model) is applied per batch in the pipeline, never inside the model.
    The arrays are already decoded in memory, which is the cache: nothing is read from disk per epoch.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augmentation is not None:
        dataset = dataset.map(
            lambda x, y: (augmentation(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _image_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return (p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
