"""serving/text.py: the pure-Python tokenizer against Keras's TextVectorization, and occlusion importance.

TensorFlow is imported here only as the reference; `serving.text` itself never imports it.
"""

from __future__ import annotations

import string
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import InvalidArgument
from serving.text import (
    OOV_ID,
    SPACE_PUNCTUATION,
    STANDARDIZE,
    TextInputError,
    Tokenizer,
    explain_batch,
    read_vocabulary,
    token_importance,
    write_vocabulary,
)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

SEQUENCE_LENGTH = 12
CORPUS = [
    "The movie was GREAT, truly great!",
    "A dull, lifeless film -- it's bad.",
    "Café crème: naïve ÉCOLE charm 😀 and ß",
    "don't waste your time; it's the worst",
    "an ambitious, moving and funny story",
    "Zero\x00byte nbsp\u00a0word file\x1csep line\u2028sep",
]
WORDS = ["the", "movie", "great", "bad", "café", "naïve", "école", "😀", "dont", "its", "zero\x00byte"]


@pytest.fixture(scope="module", params=[STANDARDIZE, SPACE_PUNCTUATION])
def reference(request: pytest.FixtureRequest) -> tuple[Tokenizer, object]:
    """A TextVectorization adapted on a tiny corpus and the Tokenizer built from its vocabulary, for
    Keras's own "lower_and_strip_punctuation" and the project's "lower_and_space_punctuation"."""
    from training.sentiment import STANDARDIZERS

    vectorizer = keras.layers.TextVectorization(
        max_tokens=100, output_sequence_length=SEQUENCE_LENGTH, standardize=STANDARDIZERS[request.param]
    )
    vectorizer.adapt(CORPUS)
    vocabulary = [str(token) for token in vectorizer.get_vocabulary()]
    tokenizer = Tokenizer(
        vocabulary=tuple(vocabulary), sequence_length=SEQUENCE_LENGTH, standardize=request.param
    )
    return tokenizer, vectorizer


def tf_ids(vectorizer: object, texts: list[bytes]) -> np.ndarray:
    return np.asarray(vectorizer(tf.constant(texts, dtype=tf.string)), dtype=np.int64)  # type: ignore[operator]


def assert_same(reference: tuple[Tokenizer, object], texts: list[bytes]) -> None:
    tokenizer, vectorizer = reference
    expected = tf_ids(vectorizer, texts)
    actual = tokenizer.encode(texts)
    assert actual.dtype == np.int64 and actual.shape == (len(texts), SEQUENCE_LENGTH)
    for row, text in enumerate(texts):
        assert actual[row].tolist() == expected[row].tolist(), text


def test_vocabulary_contains_non_ascii_tokens(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    assert tokenizer.vocabulary[:2] == ("", "[UNK]")
    if tokenizer.standardize == STANDARDIZE:
        assert "dont" in tokenizer.vocabulary and "don" not in tokenizer.vocabulary
    else:
        assert "don" in tokenizer.vocabulary and "dont" not in tokenizer.vocabulary
    # TF lowercases ASCII only: "ÉCOLE" -> "École"; U+00A0 and \x1c do not split tokens.
    assert "École" in tokenizer.vocabulary
    assert "nbsp\u00a0word" in tokenizer.vocabulary
    assert "file\x1csep" in tokenizer.vocabulary


def test_tricky_strings_match_tensorflow(reference: tuple[Tokenizer, object]) -> None:
    from export.sentiment import tricky_texts

    texts = [*tricky_texts(), *(text.encode("utf-8") for text in CORPUS)]
    assert_same(reference, texts)


def test_generated_strings_match_tensorflow(reference: tuple[Tokenizer, object]) -> None:
    from export.sentiment import generated_texts

    tokenizer, _ = reference
    assert_same(reference, generated_texts(tokenizer.vocabulary, count=1000, seed=7))


_ALPHABET = (
    string.ascii_letters
    + string.punctuation
    + string.digits
    + " \t\n\r\x0b\x0c\x00\x1c\x1d\x1e\x1f\x85\u00a0\u2028\u3000"
    + "ÉéÀàÇçÑñßİıǅΩωДд中😀\u0301\u200b"
)
_text = st.one_of(
    st.text(alphabet=_ALPHABET, max_size=60),
    st.lists(st.sampled_from([*WORDS, " ", "!", "\t", ",", "'", "Ü"]), max_size=30).map("".join),
    st.text(max_size=40),
)
_texts_as_bytes = st.lists(
    st.one_of(_text.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=40)),
    min_size=1,
    max_size=16,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=_texts_as_bytes)
def test_property_ids_equal_text_vectorization(
    reference: tuple[Tokenizer, object], texts: list[bytes]
) -> None:
    assert_same(reference, texts)


def test_str_and_bytes_give_the_same_ids(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    texts = ["The Movie, GREAT!", "café 😀", ""]
    assert tokenizer.encode(texts).tolist() == tokenizer.encode([t.encode() for t in texts]).tolist()
    as_array = np.asarray([t.encode() for t in texts], dtype=object).reshape(3, 1)
    assert tokenizer.encode(as_array).tolist() == tokenizer.encode(texts).tolist()


def test_padding_truncation_and_oov(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    ids = tokenizer.encode(["great unseenword", " ".join(["bad"] * 50), "", " \t\n "])
    great, bad = tokenizer.vocabulary.index("great"), tokenizer.vocabulary.index("bad")
    assert ids[0].tolist() == [great, OOV_ID] + [0] * (SEQUENCE_LENGTH - 2)
    assert ids[1].tolist() == [bad] * SEQUENCE_LENGTH
    assert ids[2].tolist() == ids[3].tolist() == [0] * SEQUENCE_LENGTH


def test_megabyte_texts(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, vectorizer = reference
    limit = tokenizer.max_text_bytes
    at_limit = (b"GREAT movie!\t" * (limit // 13 + 1))[:limit]
    assert len(at_limit) == limit
    assert_same(reference, [at_limit, b"x" * limit])
    with pytest.raises(TextInputError, match="limit"):
        tokenizer.encode([at_limit + b" "])
    del vectorizer


def test_rejections_are_invalid_argument_value_errors(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    with pytest.raises(TextInputError, match="UTF-8") as caught:
        tokenizer.encode(["lone surrogate \ud800"])
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, InvalidArgument)
    with pytest.raises(TextInputError, match="str or bytes"):
        tokenizer.encode([42])  # type: ignore[list-item]
    small = Tokenizer(vocabulary=tokenizer.vocabulary, sequence_length=4, max_text_bytes=8)
    small.encode(["12345678"])
    with pytest.raises(TextInputError):
        small.encode(["123456789"])


def test_vocabulary_file_round_trip(tmp_path: Path) -> None:
    vocabulary = ["", "[UNK]", "the", "file\x1csep", "line\u2028sep", "nel\x85x", "café", "😀"]
    path = write_vocabulary(tmp_path / "vocabulary.txt", vocabulary)
    assert read_vocabulary(path) == vocabulary
    with pytest.raises(ValueError, match="newline"):
        write_vocabulary(tmp_path / "bad.txt", ["", "[UNK]", "two\nlines"])
    with pytest.raises(ValueError, match="padding"):
        write_vocabulary(tmp_path / "bad.txt", ["the", "[UNK]"])


def test_from_params(tmp_path: Path, reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    (tmp_path / "assets").mkdir()
    write_vocabulary(tmp_path / "assets" / "vocabulary.txt", tokenizer.vocabulary)
    params = {
        "vocabulary": "assets/vocabulary.txt",
        "sequence_length": SEQUENCE_LENGTH,
        "standardize": "lower_and_strip_punctuation",
        "split": "whitespace",
        "max_tokens": 100,
    }
    loaded = Tokenizer.from_params(tmp_path, params)
    assert loaded.vocabulary == tokenizer.vocabulary and loaded.sequence_length == SEQUENCE_LENGTH
    with pytest.raises(ValueError, match="unsupported"):
        Tokenizer.from_params(tmp_path, {**params, "standardize": "lower"})
    spaced = Tokenizer.from_params(tmp_path, {**params, "standardize": SPACE_PUNCTUATION})
    assert spaced.tokens("It's a THREE-hour film!") == [b"it", b"s", b"a", b"three", b"hour", b"film"]
    assert loaded.tokens("It's a THREE-hour film!") == [b"its", b"a", b"threehour", b"film"]
    with pytest.raises(ValueError, match="max_tokens"):
        Tokenizer.from_params(tmp_path, {**params, "max_tokens": 3})


def test_serving_text_does_not_import_tensorflow() -> None:
    import subprocess

    code = "import sys, serving.text; sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def _linear_model(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """probabilities [B, 2] = softmax([0, sum of per-id weights]) of token ids [B, L]."""

    def run(token_ids: np.ndarray) -> np.ndarray:
        score = weights[token_ids].sum(axis=1)  # [B]
        positive = 1.0 / (1.0 + np.exp(-score))
        return np.stack([1.0 - positive, positive], axis=1).astype(np.float32)

    return run


def test_token_importance_by_occlusion(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    weights = np.zeros(tokenizer.vocabulary_size)
    weights[tokenizer.vocabulary.index("great")] = 3.0
    weights[tokenizer.vocabulary.index("bad")] = -1.0
    run = _linear_model(weights)
    scores = token_importance(run, tokenizer, "The GREAT, bad unseenword!")
    assert [token for token, _ in scores] == ["the", "great", "bad", "unseenword"]
    by_token = dict(scores)
    # Predicted positive: "great" pushes towards it, "bad" away; "the" (weight 0) and OOV change nothing.
    assert by_token["great"] > 0.3 and by_token["bad"] < -0.01
    assert by_token["the"] == pytest.approx(0.0, abs=1e-7) and by_token["unseenword"] == pytest.approx(
        0.0, abs=1e-7
    )
    assert token_importance(run, tokenizer, "") == []


def test_explain_batch_shapes(reference: tuple[Tokenizer, object]) -> None:
    tokenizer, _ = reference
    weights = np.linspace(-1, 1, tokenizer.vocabulary_size)
    outputs = explain_batch(_linear_model(weights), tokenizer, ["great movie", "", "bad " * 30])
    assert outputs["probabilities"].shape == (3, 2) and outputs["probabilities"].dtype == np.float32
    assert outputs["tokens"].shape == outputs["importance"].shape == (3, SEQUENCE_LENGTH)
    assert outputs["tokens"][0, :2].tolist() == ["great", "movie"] and outputs["tokens"][0, 2] == ""
    assert not outputs["importance"][1].any() and not outputs["importance"][0, 2:].any()
