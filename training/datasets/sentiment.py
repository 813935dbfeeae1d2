"""Movie-review sentiment data as raw texts: Rotten Tomatoes (offline default), any CSV/TSV or
`pos/`/`neg/` folder, the raw `aclImdb` folder, or `keras.datasets.imdb` (online).

Every loader returns `SentimentData(train, validation, test, source, split)` whose splits hold raw
texts (`str`) and labels int64 [N] (0 = negative, 1 = positive). Vectorization happens in the model's
`TextVectorization`, never here. Sources, selected by `--source` (`auto` is the default):

* `local`: a file or folder given by `--data` (CSV/TSV with `text,label` columns; a folder with
  `pos/` and `neg/` holding one text file per review; or the book's `aclImdb/` with `train/` and
  `test/`), else `DATA_DIR/sentiment/rotten_tomatoes.csv` (12,752 snippets, 58% positive).
* `imdb`: `keras.datasets.imdb.load_data()` decoded back to words with `get_word_index()`, only when
  the files are cached in `~/.keras/datasets` or the download host answers within a few seconds.

A single labelled set (CSV, `pos/neg` folder) is split 70/15/15 by a seeded permutation, so the same
seed always gives the same split; `aclImdb` and `imdb` keep their 25k test set and hold out 20% of
their training set for validation, as in the book.
"""

from __future__ import annotations

import csv
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from training.common import MissingDataError

Source = Literal["auto", "local", "imdb"]
SOURCES: tuple[str, ...] = ("auto", "local", "imdb")
CLASS_NAMES: tuple[str, str] = ("negative", "positive")
DEFAULT_FILE = ("sentiment", "rotten_tomatoes.csv")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)  # train, validation, test of a single labelled set
IMDB_VALIDATION_FRACTION = 0.2
KERAS_URL_HOST = ("storage.googleapis.com", 443)
DEFAULT_HOME = (
    "the Rotten Tomatoes snippets (text,label CSV; see ../shared/data/README.md), or the IMDB reviews "
    "from https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz (pass --data path/to/aclImdb)"
)
_LABEL_WORDS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1, "rotten": 0, "fresh": 1}


@dataclass(frozen=True)
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # int64 [N], 0 = negative, 1 = positive

    def __len__(self) -> int:
        return len(self.texts)

    def positive_fraction(self) -> float:
        return float(np.mean(self.labels)) if len(self) else 0.0

    def take(self, count: int | None) -> TextSplit:
        """The first `count` examples (all when `count` is None)."""
        if count is None or count >= len(self):
            return self
        return TextSplit(self.texts[:count], self.labels[:count])


@dataclass(frozen=True)
class SentimentData:
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    source: str  # where the texts came from (path or "keras.datasets.imdb")
    split: str  # how train/validation/test were made

    def summary(self) -> dict[str, object]:
        """Sizes and class balance of each split, for metrics.json."""
        return {
            "source": self.source,
            "split": self.split,
            **{
                name: {"n": len(part), "positive_fraction": round(part.positive_fraction(), 4)}
                for name, part in (
                    ("train", self.train),
                    ("validation", self.validation),
                    ("test", self.test),
                )
            },
        }


def _parse_label(raw: str, where: str) -> int:
    label = _LABEL_WORDS.get(raw.strip().lower())
    if label is None:
        raise ValueError(f"{where}: label {raw!r} is not one of {sorted(_LABEL_WORDS)}")
    return label


def read_table(path: Path) -> TextSplit:
    """A CSV (or TSV, by extension `.tsv`/`.tab`) with a header holding `text` and `label` columns."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    texts: list[str] = []
    labels: list[int] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
        if "text" not in fields or "label" not in fields:
            raise ValueError(
                f"{path}: needs a header with 'text' and 'label' columns, got {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            texts.append(row[fields["text"]] or "")
            labels.append(_parse_label(row[fields["label"]] or "", f"{path}:{line}"))
    if not texts:
        raise ValueError(f"{path} holds no examples")
    return TextSplit(texts, np.asarray(labels, dtype=np.int64))


def read_folder(folder: Path) -> TextSplit:
    """`folder/pos/*` and `folder/neg/*`, one review per file (the layout of aclImdb's train/ and test/)."""
    texts: list[str] = []
    labels: list[int] = []
    for label, name in ((0, "neg"), (1, "pos")):
        sub = folder / name
        if not sub.is_dir():
            raise MissingDataError(f"{sub} does not exist: a labelled folder needs pos/ and neg/")
        for file in sorted(p for p in sub.iterdir() if p.is_file()):
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return TextSplit(texts, np.asarray(labels, dtype=np.int64))


def _subset(part: TextSplit, indices: np.ndarray) -> TextSplit:
    return TextSplit([part.texts[i] for i in indices], part.labels[indices])


def split_fixed(
    everything: TextSplit, seed: int, fractions: Sequence[float] = SPLIT_FRACTIONS
) -> tuple[TextSplit, TextSplit, TextSplit]:
    """Seeded permutation, then the first 70% / next 15% / last 15% (same seed -> same split)."""
    count = len(everything)
    order = np.random.default_rng(seed).permutation(count)
    n_train = round(fractions[0] * count)
    n_validation = round(fractions[1] * count)
    return (
        _subset(everything, order[:n_train]),
        _subset(everything, order[n_train : n_train + n_validation]),
        _subset(everything, order[n_train + n_validation :]),
    )


def _split_validation(train: TextSplit, seed: int) -> tuple[TextSplit, TextSplit]:
    order = np.random.default_rng(seed).permutation(len(train))
    n_validation = round(IMDB_VALIDATION_FRACTION * len(train))
    return _subset(train, order[n_validation:]), _subset(train, order[:n_validation])


def load_local(path: Path, seed: int) -> SentimentData:
    """A CSV/TSV file, a `pos/`+`neg/` folder, or an `aclImdb/` folder with `train/` and `test/`."""
    if not path.exists():
        raise MissingDataError(f"{path} does not exist; expected {DEFAULT_HOME}")
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        train, validation = _split_validation(read_folder(path / "train"), seed)
        split = f"aclImdb train/ minus {IMDB_VALIDATION_FRACTION:.0%} validation (seed {seed}), test/"
        return SentimentData(train, validation, read_folder(path / "test"), str(path), split)
    everything = read_folder(path) if path.is_dir() else read_table(path)
    train, validation, test = split_fixed(everything, seed)
    split = "seeded permutation {:.0%}/{:.0%}/{:.0%} (seed {})".format(*SPLIT_FRACTIONS, seed)
    return SentimentData(train, validation, test, str(path), split)


def _keras_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(KERAS_URL_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def load_imdb(seed: int, num_words: int | None = None) -> SentimentData:
    """`keras.datasets.imdb`, decoded back to text (index 1 = start, 2 = OOV, 3 = first word)."""
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    cached = (cache / "imdb.npz").is_file() and (cache / "imdb_word_index.json").is_file()
    if not cached and not _keras_reachable():
        raise MissingDataError(
            f"keras.datasets.imdb is neither cached in {cache} nor downloadable (no network); use {DEFAULT_HOME}"
        )
    import keras  # lazy: only this source needs it

    (x_train, y_train), (x_test, y_test) = keras.datasets.imdb.load_data(num_words=num_words)
    words = {index + 3: word for word, index in keras.datasets.imdb.get_word_index().items()}

    def decode(sequences: np.ndarray, labels: np.ndarray) -> TextSplit:
        texts = [" ".join(words.get(int(i), "") for i in seq[1:] if int(i) > 2) for seq in sequences]
        return TextSplit(texts, np.asarray(labels, dtype=np.int64))

    train, validation = _split_validation(decode(x_train, y_train), seed)
    split = f"keras imdb train minus {IMDB_VALIDATION_FRACTION:.0%} validation (seed {seed}), test"
    return SentimentData(train, validation, decode(x_test, y_test), "keras.datasets.imdb", split)


def load(source: Source, data_dir: Path, seed: int, data: Path | None = None) -> SentimentData:
    """The sentiment data from `source`; `auto` = `local` (`--data` or Rotten Tomatoes), never the network."""
    if source == "imdb":
        return load_imdb(seed)
    if source not in ("auto", "local"):
        raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")
    path = data if data is not None else data_dir.joinpath(*DEFAULT_FILE)
    if not path.exists():
        raise MissingDataError(
            f"{path} is missing. Put {DEFAULT_HOME} there, point DATA_DIR/--data-dir at a folder holding "
            f"{'/'.join(DEFAULT_FILE)}, pass --data FILE_OR_FOLDER, or use --source imdb when online."
        )
    return load_local(path, seed)
