"""Sentiment export spec: raw text in the SavedModel, token ids in ONNX, the vocabulary as an asset.

* SavedModel `serving_default`: `text` string [N] -> `TextVectorization` (in the graph) -> model ->
  `probabilities` float32 [N, 2] (`negative`, `positive`); stock TensorFlow Serving serves it as is.
* `model.onnx`: `token_ids` int64 [N, L] -> `probabilities` float32 [N, 2]. The manifest's
  `preprocess` (`kind: "text"`) tells the ONNX server to build `token_ids` from `text` with
  `serving.text.Tokenizer` and `assets/vocabulary.txt` (one token per line, index = line number).

Checks before publishing (any failure -> nothing is published):

1. `tokenizer_vs_text_vectorization`: the pure-Python tokenizer, built from the exported manifest
   params and asset exactly as the server builds it, gives the same token ids as the SavedModel's
   `TextVectorization` on `tricky_texts()` (unicode, emoji, accented capitals, punctuation, empty,
   whitespace-only, tabs/newlines, very long, invalid UTF-8) and `generated_texts()` (thousands of
   random mixes of vocabulary words, case, punctuation and whitespace).
2. Pipeline parity: SavedModel on raw strings vs tokenizer + ONNX Runtime on the test texts and the
   tricky ones, max |diff| of `probabilities` <= 1e-5 and the same argmax, at batch sizes 1 and 64.

Every approach of `training.sentiment` goes through this one spec, the recurrent ones included:
tf2onnx turns a masked `SimpleRNN`/`LSTM`/`GRU` (and `Bidirectional`, and the GRU under `conv_gru`)
into an ONNX `Loop` over the time steps, the padding mask inside it; `explain` (token occlusion) only
needs `model.onnx` on token ids, so it works for all of them.

`evaluate` (used by `python -m export.evaluate sentiment`) needs no TensorFlow: it scores the published
version through the server's own path (`serving.text.Tokenizer` from the manifest + ONNX Runtime) on the
test split the model was trained with. This module therefore imports TensorFlow, Keras and the export
pipeline lazily, inside the functions that build the spec.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.manifest import PREDICT_METHOD, Manifest, OnnxBinding, Preprocess, SignatureManifest, TensorSpec
from serving.text import (
    DEFAULT_MAX_TEXT_BYTES,
    SPLIT,
    STANDARDIZE,
    Tokenizer,
    read_vocabulary,
    write_vocabulary,
)
from training.common import MissingDataError, read_metrics
from training.datasets import sentiment as sentiment_data

if TYPE_CHECKING:
    from export.evaluate import Evaluation
    from export.pipeline import ExportSpec

VOCABULARY_ASSET = "vocabulary.txt"  # saved by tf.saved_model.save as assets/vocabulary.txt
VOCABULARY_PATH = f"assets/{VOCABULARY_ASSET}"
PROBABILITIES_ATOL = 1e-5
GENERATED_TEXTS = 3000
PARITY_TEST_TEXTS = 1000
TARGET_TEST_ACCURACY = 0.80  # the target on the Rotten Tomatoes test split


def tricky_texts() -> list[bytes]:
    """Strings where a tokenizer is most likely to differ from TensorFlow's (as UTF-8 bytes)."""
    texts = [
        "",
        " ",
        "   \t\n  ",
        "\t\n\r\x0b\x0c",
        "A GREAT Film!!!",
        "it's not the film's fault... it's OURS",
        "ÉCOLE Élan ÀÖØ ÇA ÑOÑO straße İstanbul ǅ ΩMEGA Ωmega ДОБРО",
        "café CAFÉ cafe\u0301 naïve",
        "emoji 😀👍🏽 👨‍👩‍👧 ❤️ good😀good",
        "fullwidth \uff21\uff22\uff23\uff01\uff1f and ideographic\u3000space",
        "nbsp\u00a0joined thin\u2009space line\u2028sep para\u2029sep nel\x85x",
        "file\x1csep group\x1dsep record\x1esep unit\x1fsep",
        "quotes \"double\" 'single' `back` «guillemets» “curly” \u2018curly\u2019",
        "punct!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~end",
        "--- ... !!! ???",
        "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeed",
        "zero\x00byte inside",
        "numbers 1,000 3.14 2nd 21st-century",
        "mixed-CASE WoRdS ThE tHe THE",
        "中文 日本語 한국어 עברית العربية हिन्दी",
        "a " * 100,
        "good " * 5000,
        "x" * 70000,
        " ".join(["the", "movie", "was", "bad"] * 2500),
    ]
    raw = [text.encode("utf-8") for text in texts]
    raw += [
        b"\xff\xfe invalid utf-8 \xc3( bytes",
        b"GOOD\xc3\x28FILM",
        b"lone continuation \x80\x80 and truncated \xe2\x82",
        b"overlong \xc0\xaf slash \xe0\x80\xaf and surrogate \xed\xa0\x80",
        b"\xf4\x90\x80\x80 beyond U+10FFFF, BAD!",
        b"\xc3\x89COLE \xc3 dangling",
    ]
    return raw


def generated_texts(vocabulary: Sequence[str], count: int = GENERATED_TEXTS, seed: int = 0) -> list[bytes]:
    """Random texts mixing vocabulary words (random case), unknown words, punctuation, unicode and
    every kind of whitespace, some of them longer than any sequence length, some invalid UTF-8."""
    rng = np.random.default_rng(seed)
    words = [word for word in vocabulary[2:] if word] or ["word"]
    extras = [
        "[UNK]",
        "UNK",
        "ÉTÉ",
        "naïve",
        "😀",
        "\u2019s",
        "don't",
        "--",
        "...",
        "ß",
        "İ",
        "\u00a0",
        "ǅ",
        "\u200b",
    ]
    separators = [
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\x0b",
        "\x0c",
        "\u3000",
        "\u00a0",
        ", ",
        ". ",
        "!",
        "-",
        "'",
    ]
    texts: list[bytes] = []
    for _ in range(count):
        pieces: list[str] = []
        for _ in range(int(rng.integers(0, 90))):
            choice = rng.random()
            if choice < 0.75:
                word = words[int(rng.integers(len(words)))]
            elif choice < 0.9:
                word = extras[int(rng.integers(len(extras)))]
            else:
                word = "".join(chr(int(c)) for c in rng.integers(0x21, 0x2FF, size=int(rng.integers(1, 6))))
            style = rng.random()
            word = word.upper() if style < 0.1 else word.capitalize() if style < 0.2 else word
            pieces.append(word)
            pieces.append(separators[int(rng.integers(len(separators)))])
        text = "".join(pieces).encode("utf-8")
        if rng.random() < 0.05 and text:
            cut = int(rng.integers(len(text)))
            text = text[:cut] + bytes([int(rng.integers(0x80, 0x100))]) + text[cut:]  # invalid UTF-8
        texts.append(text)
    return texts


def text_params(
    vocabulary_size: int, sequence_length: int, max_tokens: int, standardize: str = STANDARDIZE
) -> dict[str, Any]:
    """The manifest's `preprocess.params` for `serving.text.Tokenizer.from_params`."""
    return {
        "vocabulary": VOCABULARY_PATH,
        "vocabulary_size": vocabulary_size,
        "sequence_length": sequence_length,
        "standardize": standardize,
        "split": SPLIT,
        "max_tokens": max_tokens,
        "output_mode": "int",
        "pad_id": 0,
        "oov_id": 1,
        "max_text_bytes": DEFAULT_MAX_TEXT_BYTES,
    }


def export_module(model: Any, vectorizer: Any, vocabulary_file: Path) -> Any:
    """The `tf.Module` the SavedModel tracks: the Keras model, the vectorizer and the vocabulary asset."""
    import tensorflow as tf

    module = tf.Module(name="sentiment")
    module.model = model
    # Every variable the graph captures must be tracked. A recurrent cell's dropout seed state
    # (`seed_generator_state`) is not reached through the Keras model's own trackable children, so
    # the SavedModel would refuse the function; track the model's variables explicitly.
    module.model_variables = [getattr(variable, "value", variable) for variable in model.variables]
    module.vectorizer = vectorizer
    # A tracked asset: tf.saved_model.save copies it into assets/ under its own file name.
    module.vocabulary = tf.saved_model.Asset(str(vocabulary_file))
    return module


def compare_token_ids(
    tokenizer: Tokenizer, vectorize: Any, texts: Sequence[bytes], batch_size: int = 256
) -> dict[str, Any]:
    """Token ids of `tokenizer.encode` vs `vectorize` (TensorFlow) on `texts`: counts and examples."""
    import tensorflow as tf

    mismatches: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        expected = np.asarray(vectorize(tf.constant(batch, dtype=tf.string)), dtype=np.int64)  # [B, L]
        actual = tokenizer.encode(batch)  # [B, L]
        for row in np.flatnonzero(np.any(expected != actual, axis=1)):
            mismatches.append(repr(batch[row][:80]))
    return {"n_texts": len(texts), "mismatches": len(mismatches), "examples": mismatches[:5]}


def build_spec_from(
    model: Any,
    vocabulary: Sequence[str],
    sequence_length: int,
    max_tokens: int,
    metrics: Mapping[str, Any],
    parity_texts: Sequence[bytes],
    generated: int = GENERATED_TEXTS,
    standardize: str = STANDARDIZE,
) -> ExportSpec:
    """The ExportSpec of a token-id model (`token_ids` [N, L] -> `probabilities` [N, 2]) + vocabulary."""
    import tensorflow as tf

    from export.pipeline import ExportSpec, ExtraCheck, ParityCheck, Signature
    from training.sentiment import INPUT_NAME, LABELS, OUTPUT_NAME, build_vectorizer

    vectorizer = build_vectorizer(max_tokens, sequence_length, vocabulary, standardize)
    if list(vectorizer.get_vocabulary()) != list(vocabulary):
        raise ValueError("TextVectorization does not reproduce the training vocabulary")
    staging = Path(tempfile.mkdtemp(prefix="sentiment-vocab-"))
    vocabulary_file = write_vocabulary(staging / VOCABULARY_ASSET, vocabulary)
    module = export_module(model, vectorizer, vocabulary_file)
    # The asset must exist until tf.saved_model.save copies it; remove it once the module is gone.
    weakref.finalize(module, shutil.rmtree, staging, True)
    params = text_params(len(vocabulary), sequence_length, max_tokens, standardize)
    # The tokenizer exactly as the server builds it (same params, same file format).
    tokenizer = Tokenizer.from_params(staging, {**params, "vocabulary": VOCABULARY_ASSET})

    text_spec = tf.TensorSpec([None], tf.string, name="text")
    ids_spec = tf.TensorSpec([None, sequence_length], tf.int64, name=INPUT_NAME)

    @tf.function(input_signature=[text_spec])
    def serving_default(text: tf.Tensor) -> dict[str, tf.Tensor]:
        token_ids = tf.cast(module.vectorizer(text), tf.int64)  # [N, L]
        return {OUTPUT_NAME: module.model(token_ids, training=False)}  # [N, 2]

    @tf.function(input_signature=[ids_spec])
    def on_token_ids(token_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: module.model(token_ids, training=False)}  # [N, 2]

    @tf.function(input_signature=[text_spec])
    def vectorize(text: tf.Tensor) -> tf.Tensor:
        return tf.cast(module.vectorizer(text), tf.int64)  # [N, L]

    def tokenizer_check() -> dict[str, Any]:
        tricky = compare_token_ids(tokenizer, vectorize, tricky_texts())
        random = compare_token_ids(tokenizer, vectorize, generated_texts(vocabulary, generated))
        real = compare_token_ids(tokenizer, vectorize, list(parity_texts))
        # NaN would slip through a max |diff| comparison: require finite rows summing to 1 outright.
        probabilities = serving_default(tf.constant(tricky_texts()))[OUTPUT_NAME].numpy()  # [n, 2]
        finite = bool(
            np.all(np.isfinite(probabilities)) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
        )
        passed = finite and not (tricky["mismatches"] or random["mismatches"] or real["mismatches"])
        return {
            "tricky": tricky,
            "generated": random,
            "parity_texts": real,
            "tricky_probabilities_finite": finite,
            "passed": passed,
        }

    texts = np.asarray(list(parity_texts) + tricky_texts(), dtype=object)  # [n] bytes

    def onnx_feed(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {INPUT_NAME: tokenizer.encode(batch["text"])}  # [B, L] int64

    return ExportSpec(
        name="sentiment",
        task="text_classification",
        labels=tuple(LABELS),
        trackable=module,
        signatures=(
            Signature(
                "serving_default",
                serving_default,
                "model.onnx",
                onnx_function=on_token_ids,
                preprocess=Preprocess(kind="text", input="text", output=INPUT_NAME, params=params),
            ),
        ),
        parity=(
            ParityCheck(
                "serving_default", {"text": texts}, {OUTPUT_NAME: PROBABILITIES_ATOL}, onnx_feed=onnx_feed
            ),
        ),
        metrics=dict(metrics),
        extra_checks=(ExtraCheck("tokenizer_vs_text_vectorization", tokenizer_check),),
        explainers={
            "explain": explain_signature(params, sequence_length, len(LABELS), INPUT_NAME, OUTPUT_NAME)
        },
    )


def explain_signature(
    params: Mapping[str, Any], sequence_length: int, classes: int, ids_name: str, probabilities_name: str
) -> SignatureManifest:
    """`explain` for the ONNX server: per-token occlusion importance around model.onnx.

    `text` string [N] -> `probabilities` [N,2], `tokens` string [N,L] (standardized tokens, "" at
    padding) and `importance` float32 [N,L]: the drop in the predicted class's probability when the
    token is replaced by the OOV id (see `serving.text.token_importance`).
    """
    return SignatureManifest(
        method=PREDICT_METHOD,
        inputs={"text": TensorSpec("string", (-1,))},
        outputs={
            probabilities_name: TensorSpec("float32", (-1, classes)),
            "tokens": TensorSpec("string", (-1, sequence_length)),
            "importance": TensorSpec("float32", (-1, sequence_length)),
        },
        onnx=OnnxBinding("model.onnx", {ids_name: ids_name}, {probabilities_name: probabilities_name}),
        preprocess=Preprocess(kind="text", input="text", output=ids_name, params=dict(params)),
        explainer={"kind": "token_occlusion"},
    )


def served_metrics(run_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's metrics: the served approach's figures plus every approach's, side by side."""
    served = str(run_metrics["served"])
    entry = dict(run_metrics["approaches"][served])
    table = {
        name: {"val_accuracy": item["val_accuracy"], "test_accuracy": item["test_accuracy"]}
        for name, item in {**run_metrics.get("approaches", {}), **run_metrics.get("references", {})}.items()
    }
    return {
        "approach": served,
        "description": entry.get("description"),
        "test_accuracy": entry["test_accuracy"],
        "val_accuracy": entry["val_accuracy"],
        "per_class_accuracy": entry.get("per_class_accuracy"),
        "confusion_matrix": entry.get("confusion_matrix"),
        "n_test": entry.get("n_test"),
        "data": run_metrics.get("data"),
        "vectorization": run_metrics.get("vectorization"),
        "seed": run_metrics.get("seed"),
        "compared": table,
        "target_test_accuracy": run_metrics.get("target_test_accuracy"),
    }


def build_spec(run_dir: Path, data_dir: Path, parity_examples: int = PARITY_TEST_TEXTS) -> ExportSpec:
    """Spec builder for `python -m export sentiment`: the served approach of `run_dir/metrics.json`."""
    import keras

    from training import sentiment

    metrics_path = run_dir / sentiment.METRICS_FILE
    vocabulary_path = run_dir / sentiment.VOCABULARY_FILE
    for needed in (metrics_path, vocabulary_path):
        if not needed.is_file():
            raise MissingDataError(
                f"{needed} not found: train first with `python -m training sentiment --out {run_dir}`"
            )
    run_metrics = read_metrics(metrics_path)
    if not run_metrics.get("served"):
        raise MissingDataError(f"{metrics_path} names no trained approach: train one first")
    model_path = run_dir / str(run_metrics["served_model"])
    if not model_path.is_file():
        raise MissingDataError(f"{model_path} not found (listed as served in {metrics_path})")
    model = keras.models.load_model(model_path)  # training.sentiment registered its custom layers
    vocabulary = read_vocabulary(vocabulary_path)
    vectorization = run_metrics["vectorization"]
    parity_texts = _test_texts(run_metrics, data_dir, parity_examples)
    return build_spec_from(
        model,
        vocabulary,
        int(vectorization["sequence_length"]),
        int(vectorization["max_tokens"]),
        served_metrics(run_metrics),
        parity_texts,
        standardize=str(vectorization.get("standardize", STANDARDIZE)),
    )


def load_trained_split(metrics: Mapping[str, Any], data_dir: Path) -> sentiment_data.SentimentData:
    """The data and split a run (or a manifest's metrics) records: same source, same seed."""
    source = str((metrics.get("data") or {}).get("source", ""))
    seed = int(metrics["seed"])
    if source == "keras.datasets.imdb":
        return sentiment_data.load("imdb", data_dir, seed)
    path = Path(source) if source else None
    return sentiment_data.load("auto", data_dir, seed, path if path and path.exists() else None)


def _test_texts(run_metrics: Mapping[str, Any], data_dir: Path, count: int) -> list[bytes]:
    """The first `count` test texts of the split the model was trained on; generated texts only when
    that source is gone (e.g. an IMDB run exported on an offline machine)."""
    try:
        data = load_trained_split(run_metrics, data_dir)
    except MissingDataError:
        return generated_texts(["", "[UNK]"], count, seed=1)
    return [text.encode("utf-8") for text in data.test.texts[:count]]


def evaluate(version_dir: Path, manifest: Manifest, data_dir: Path) -> Evaluation:
    """Test accuracy of the published version through the server's path: tokenizer + ONNX Runtime."""
    from export.evaluate import Evaluation, onnx_session, predict_classes

    start = time.perf_counter()
    signature = manifest.signatures["serving_default"]
    if signature.preprocess is None or signature.preprocess.kind != "text":
        raise MissingDataError(f"{version_dir}: serving_default has no text preprocess")
    tokenizer = Tokenizer.from_params(version_dir, signature.preprocess.params)
    test = load_trained_split(manifest.metrics, data_dir).test
    token_ids = tokenizer.encode(test.texts)  # [N, L]
    session = onnx_session(version_dir, manifest)
    predicted = predict_classes(session, manifest, {signature.preprocess.output: token_ids})  # [N]
    accuracy = float(np.mean(predicted == test.labels))
    per_class = {
        name: float(np.mean(predicted[test.labels == label] == label))
        for label, name in enumerate(manifest.labels)
    }
    print(
        f"sentiment: {len(test)} test texts, {test.positive_fraction():.1%} positive (majority baseline "
        f"{max(test.positive_fraction(), 1 - test.positive_fraction()):.4f}); per-class accuracy "
        + ", ".join(f"{name} {value:.4f}" for name, value in per_class.items()),
        file=sys.stderr,
        flush=True,
    )
    return Evaluation(
        name=manifest.name,
        version=manifest.version,
        accuracy=accuracy,
        target=float(manifest.metrics.get("target_test_accuracy") or TARGET_TEST_ACCURACY),
        n_examples=len(test),
        seconds=time.perf_counter() - start,
    )
