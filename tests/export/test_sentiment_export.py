"""export/sentiment.py: a tiny text model (trained in seconds) through the real export pipeline.

Checks the published version the way the server will use it: `serving.text.Tokenizer` built from the
manifest + ONNX Runtime against the SavedModel's raw-string signature, occlusion importance on the
ONNX path, the ONNX-only evaluator, and that a failing parity check publishes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.manifest import read_manifest
from serving.text import SPACE_PUNCTUATION, Tokenizer, read_vocabulary, token_importance
from tests.training.test_sentiment import NEGATIVE, POSITIVE, synthetic_reviews, write_csv

pytestmark = pytest.mark.slow
SEQUENCE_LENGTH = 16
SEED = 11


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A TF-IDF bag-of-2-grams model trained for a few epochs on generated reviews, and its spec."""
    import keras

    from export.sentiment import build_spec_from
    from training import sentiment
    from training.common import configure_cpu, set_seed
    from training.datasets import sentiment as sentiment_data

    configure_cpu(2)
    set_seed(SEED)
    root = tmp_path_factory.mktemp("sentiment")
    texts, labels = synthetic_reviews(300, seed=SEED)
    csv_path = write_csv(root / "reviews.csv", texts, labels)
    data = sentiment_data.load("local", root, SEED, csv_path)
    vectorizer = sentiment.build_vectorizer(200, SEQUENCE_LENGTH, standardize=SPACE_PUNCTUATION)
    vectorizer.adapt(np.asarray(data.train.texts, dtype=object))
    vocabulary = [str(token) for token in vectorizer.get_vocabulary()]
    approach = replace(
        sentiment.APPROACHES["bow"], bigram_buckets=512, embedding_dim=8, hidden=8, dropout=0.0
    )
    model = sentiment.build_model(approach, len(vocabulary), SEQUENCE_LENGTH)
    train_ids = sentiment.vectorize(vectorizer, data.train.texts)  # [n, L]
    grams = np.asarray(model.get_layer("bigrams")(train_ids))
    model.get_layer("tf_idf").set_idf(sentiment.smooth_idf(grams, len(vocabulary) + 512))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(train_ids, data.train.labels, epochs=8, batch_size=32, verbose=0)
    metrics = {"data": data.summary(), "seed": SEED, "target_test_accuracy": 0.8, "approach": "bow"}
    parity_texts = [text.encode("utf-8") for text in data.test.texts]
    spec = build_spec_from(
        model,
        vocabulary,
        SEQUENCE_LENGTH,
        200,
        metrics,
        parity_texts,
        generated=300,
        standardize=SPACE_PUNCTUATION,
    )
    return {"root": root, "spec": spec, "vocabulary": vocabulary, "data": data}


@pytest.fixture(scope="module")
def published(tiny: dict[str, Any]) -> Path:
    from export.pipeline import publish

    result = publish(tiny["spec"], tiny["root"] / "models")
    assert result.version == 1
    return result.path


def test_published_layout_and_manifest(published: Path, tiny: dict[str, Any]) -> None:
    assert read_vocabulary(published / "assets" / "vocabulary.txt") == tiny["vocabulary"]
    for name in ("saved_model.pb", "model.onnx", "manifest.json"):
        assert (published / name).is_file()
    manifest = read_manifest(published)  # verifies every sha256
    assert manifest.task == "text_classification" and manifest.labels == ("negative", "positive")
    signature = manifest.signatures["serving_default"]
    assert signature.inputs["text"].dtype == "string" and signature.inputs["text"].shape == (-1,)
    assert signature.outputs["probabilities"].shape == (-1, 2)
    assert signature.preprocess is not None and signature.preprocess.kind == "text"
    assert (signature.preprocess.input, signature.preprocess.output) == ("text", "token_ids")
    params = signature.preprocess.params
    assert params["vocabulary"] == "assets/vocabulary.txt" and params["sequence_length"] == SEQUENCE_LENGTH
    assert params["standardize"] == SPACE_PUNCTUATION and params["split"] == "whitespace"
    assert dict(signature.onnx.inputs) == {"token_ids": "token_ids"}
    checks = manifest.parity["tokenizer_vs_text_vectorization"]
    assert checks["passed"] and checks["generated"]["n_texts"] == 300 and checks["tricky"]["mismatches"] == 0
    (parity,) = manifest.parity["checks"]
    assert parity["passed"] and parity["max_abs_diff"]["probabilities"] <= 1e-5

    import onnx

    graph = onnx.load(str(published / "model.onnx")).graph
    (onnx_input,) = graph.input
    dims = [d.dim_value or d.dim_param for d in onnx_input.type.tensor_type.shape.dim]
    assert onnx_input.name == "token_ids" and onnx_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims[1] == SEQUENCE_LENGTH and not isinstance(dims[0], int)


def _onnx_runner(version_dir: Path) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda token_ids: session.run(["probabilities"], {"token_ids": token_ids})[0]


def test_server_path_equals_the_saved_model(published: Path) -> None:
    import tensorflow as tf

    from export.sentiment import tricky_texts

    manifest = read_manifest(published)
    pre = manifest.signatures["serving_default"].preprocess
    assert pre is not None
    tokenizer = Tokenizer.from_params(published, pre.params)
    texts = [b"A wonderful, moving film!", b"DULL and boring.", *tricky_texts()]
    run = _onnx_runner(published)
    actual = run(tokenizer.encode(texts))  # [N, 2]
    served = tf.saved_model.load(str(published)).signatures["serving_default"]
    expected = served(text=tf.constant(texts))["probabilities"].numpy()  # [N, 2]
    assert actual.shape == expected.shape == (len(texts), 2)
    assert np.max(np.abs(actual - expected)) <= 1e-5
    assert actual[0].argmax() == 1 and actual[1].argmax() == 0


def test_token_importance_on_the_onnx_path(published: Path) -> None:
    manifest = read_manifest(published)
    pre = manifest.signatures["serving_default"].preprocess
    assert pre is not None
    tokenizer = Tokenizer.from_params(published, pre.params)
    scores = token_importance(_onnx_runner(published), tokenizer, f"The {POSITIVE[0]} story of the cast")
    assert [token for token, _ in scores] == ["the", POSITIVE[0], "story", "of", "the", "cast"]
    by_token = dict(scores)
    assert by_token[POSITIVE[0]] == max(by_token.values()) and by_token[POSITIVE[0]] > 0.05
    negative = token_importance(_onnx_runner(published), tokenizer, f"a {NEGATIVE[0]} film")
    assert dict(negative)[NEGATIVE[0]] == max(score for _, score in negative)


def test_evaluate_scores_the_published_version_without_tensorflow(
    published: Path, tiny: dict[str, Any]
) -> None:
    import subprocess
    import sys

    from export.sentiment import evaluate

    manifest = read_manifest(published)
    result = evaluate(published, manifest, tiny["root"])
    assert result.n_examples == len(tiny["data"].test) and result.accuracy >= 0.9 and result.passed
    # The evaluator's imports pull in no TensorFlow.
    code = "import sys, export.sentiment, export.evaluate; sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_failed_parity_publishes_nothing(tiny: dict[str, Any], tmp_path: Path) -> None:
    from export.pipeline import ParityError, publish

    spec = tiny["spec"]
    tokenizer = Tokenizer(
        vocabulary=tuple(tiny["vocabulary"]), sequence_length=SEQUENCE_LENGTH, standardize=SPACE_PUNCTUATION
    )

    def wrong_feed(batch: Any) -> dict[str, np.ndarray]:
        ids = tokenizer.encode(batch["text"])
        return {"token_ids": np.where(ids > 1, 1, ids)}  # every known word turned into OOV

    (check,) = spec.parity
    broken = replace(spec, parity=(replace(check, onnx_feed=wrong_feed),))
    with pytest.raises(ParityError):
        publish(broken, tmp_path / "models")
    assert list((tmp_path / "models" / "sentiment").iterdir()) == []


def test_served_over_grpc_and_rest_with_explain(published: Path, tmp_path: Path) -> None:
    """Raw text in, probabilities out, through the real server; explain returns token importance."""
    import tensorflow as tf

    from clients import ClientError, GrpcClient, RestClient
    from tests.serving.fixtures import start_server

    texts = [f"a {POSITIVE[0]} story".encode(), f"so {NEGATIVE[0]}".encode(), b"\xff\xfe not utf-8 \xc3"]
    saved = tf.saved_model.load(str(published)).signatures["serving_default"]
    expected = saved(text=tf.constant(texts))["probabilities"].numpy()
    server = start_server(
        ["--model_name", "sentiment", "--model_base_path", str(published.parent)], tmp_path / "s.log"
    )
    try:
        with GrpcClient(server.grpc_target) as grpc_client, RestClient(server.rest_url) as rest_client:
            by_grpc = grpc_client.predict("sentiment", {"text": np.array(texts, dtype=object)})[
                "probabilities"
            ]
            by_rest = rest_client.predict("sentiment", {"text": np.array(texts[:2], dtype=object)})[
                "probabilities"
            ]
            np.testing.assert_allclose(by_grpc, expected, atol=1e-5)  # invalid UTF-8 tokenized as TF does
            np.testing.assert_allclose(by_rest, expected[:2], atol=1e-5)

            explained = grpc_client.predict(
                "sentiment", {"text": np.array(texts[:1], dtype=object)}, signature="explain"
            )
            tokens = [t.decode() for t in explained["tokens"][0] if t]
            assert tokens == ["a", POSITIVE[0], "story"]
            importance = dict(zip(tokens, explained["importance"][0][: len(tokens)], strict=True))
            assert importance[POSITIVE[0]] == max(importance.values()) > 0
            np.testing.assert_allclose(explained["probabilities"], expected[:1], atol=1e-5)

            huge = np.array([b"word " * 300_000], dtype=object)  # 1.5 MB, over the 1 MiB text limit
            for client in (grpc_client, rest_client):
                with pytest.raises(ClientError) as info:
                    client.predict("sentiment", {"text": huge})
                assert info.value.code == "INVALID_ARGUMENT", info.value.message
            assert grpc_client.predict("sentiment", {"text": np.array(texts[:1], dtype=object)})[
                "probabilities"
            ].shape == (1, 2)
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def recurrent(tiny: dict[str, Any]) -> Path:
    """A masked GRU with recurrent dropout (4 units, 1 epoch) on the same texts, published."""
    import keras

    from export.pipeline import publish
    from export.sentiment import build_spec_from
    from training import sentiment

    approach = replace(sentiment.APPROACHES["gru"], units=4, embedding_dim=8)
    vocabulary, data = tiny["vocabulary"], tiny["data"]
    model = sentiment.build_model(approach, len(vocabulary), SEQUENCE_LENGTH)
    vectorizer = sentiment.build_vectorizer(200, SEQUENCE_LENGTH, vocabulary, SPACE_PUNCTUATION)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(sentiment.vectorize(vectorizer, data.train.texts), data.train.labels, epochs=1, verbose=0)
    spec = build_spec_from(
        model,
        vocabulary,
        SEQUENCE_LENGTH,
        200,
        {"data": data.summary(), "seed": SEED, "approach": "gru"},
        [text.encode("utf-8") for text in data.test.texts[:12]],  # parity runs at batch 1 too: few texts
        generated=100,
        standardize=SPACE_PUNCTUATION,
    )
    return publish(spec, tiny["root"] / "recurrent-models").path


def test_recurrent_model_exports_with_parity_and_is_served_with_explain(
    recurrent: Path, tmp_path: Path
) -> None:
    """The GRU keeps its recurrence in ONNX (a Loop over time, the padding mask inside), matches the
    SavedModel within 1e-5 with the same argmax, and the server predicts and explains with it."""
    import onnx
    import tensorflow as tf

    from clients import GrpcClient
    from tests.serving.fixtures import start_server

    manifest = read_manifest(recurrent)
    (parity,) = manifest.parity["checks"]
    assert parity["passed"] and parity["max_abs_diff"]["probabilities"] <= 1e-5
    ops = {node.op_type for node in onnx.load(str(recurrent / "model.onnx")).graph.node}
    assert ops & {"Loop", "GRU", "Scan"}, sorted(ops)

    texts = [f"the {POSITIVE[1]} film".encode(), f"{NEGATIVE[1]} and {NEGATIVE[2]}".encode(), b"", b"not"]
    saved = tf.saved_model.load(str(recurrent)).signatures["serving_default"]
    expected = saved(text=tf.constant(texts))["probabilities"].numpy()  # [4, 2]
    server = start_server(
        ["--model_name", "sentiment", "--model_base_path", str(recurrent.parent)], tmp_path / "s.log"
    )
    try:
        with GrpcClient(server.grpc_target) as client:
            served = client.predict("sentiment", {"text": np.array(texts, dtype=object)})["probabilities"]
            np.testing.assert_allclose(served, expected, atol=1e-5)
            assert served.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()
            explained = client.predict(
                "sentiment", {"text": np.array(texts[:1], dtype=object)}, signature="explain"
            )
            assert [t.decode() for t in explained["tokens"][0] if t] == ["the", POSITIVE[1], "film"]
            importance = explained["importance"][0]
            assert np.all(np.isfinite(importance)) and not importance[3:].any()  # padding: no score
            np.testing.assert_allclose(explained["probabilities"], expected[:1], atol=1e-5)
    finally:
        assert server.stop() == 0, server.log()
