"""training/datasets/sentiment.py and training/sentiment.py: loaders, the fixed split, the in-graph
2-gram hashing, and tiny end-to-end trainings (seconds) on generated reviews."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.common import MissingDataError, resolve_data_dir
from training.datasets import sentiment as data

POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming"]
NEGATIVE = ["dull", "awful", "boring", "lifeless", "tedious", "mess"]
FILLER = ["the", "film", "a", "story", "it", "is", "and", "of", "movie", "cast"]


def synthetic_reviews(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Short reviews whose label is carried by one or two sentiment words among filler."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        text = " ".join(words)
        texts.append(text.capitalize() + ("!" if rng.random() < 0.5 else "."))
        labels.append(label)
    return texts, labels


def write_csv(path: Path, texts: list[str], labels: list[int], delimiter: str = ",") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


# ------------------------------------------------------------------------------------------- loaders


def test_fixed_split_is_seeded_disjoint_and_70_15_15(tmp_path: Path) -> None:
    texts, labels = synthetic_reviews(200, seed=1)
    texts = [f"{i} {text}" for i, text in enumerate(texts)]  # unique, to check disjointness
    path = write_csv(tmp_path / "reviews.csv", texts, labels)
    first = data.load("local", tmp_path, seed=5, data=path)
    again = data.load("local", tmp_path, seed=5, data=path)
    other = data.load("local", tmp_path, seed=6, data=path)
    assert (len(first.train), len(first.validation), len(first.test)) == (140, 30, 30)
    assert first.test.texts == again.test.texts and first.test.texts != other.test.texts
    parts = [set(first.train.texts), set(first.validation.texts), set(first.test.texts)]
    assert set.union(*parts) == set(texts) and sum(map(len, parts)) == len(texts)
    summary = first.summary()
    assert summary["test"]["n"] == 30 and 0.0 < summary["test"]["positive_fraction"] < 1.0  # type: ignore[index]


def test_tsv_and_label_words(tmp_path: Path) -> None:
    path = tmp_path / "reviews.tsv"
    path.write_text(
        "label\ttext\npos\tgood, with a comma\nnegative\tbad\nfresh\tfine\n0\tmeh\n", encoding="utf-8"
    )
    table = data.read_table(path)
    assert table.texts == ["good, with a comma", "bad", "fine", "meh"]
    assert table.labels.tolist() == [1, 0, 1, 0] and table.labels.dtype == np.int64
    path.write_text("label\ttext\nmaybe\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match="maybe"):
        data.read_table(path)
    (tmp_path / "no_header.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'text' and 'label'"):
        data.read_table(tmp_path / "no_header.csv")


def test_folders_and_acl_imdb_layout(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name, count in (("pos", 10), ("neg", 6)):
            reviews = tmp_path / "aclImdb" / split / name
            reviews.mkdir(parents=True)
            for i in range(count):
                (reviews / f"{i}_7.txt").write_text(f"{name} review {i} <br />", encoding="utf-8")
    imdb = data.load("local", tmp_path, seed=0, data=tmp_path / "aclImdb")
    assert (len(imdb.train), len(imdb.validation), len(imdb.test)) == (13, 3, 16)
    assert "aclImdb" in imdb.split
    assert int(imdb.test.labels.sum()) == 10
    folder = data.load("local", tmp_path, seed=0, data=tmp_path / "aclImdb" / "train")
    assert len(folder.train) + len(folder.validation) + len(folder.test) == 16
    with pytest.raises(MissingDataError, match="pos/ and neg/"):
        data.read_folder(tmp_path)


def test_missing_data_says_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"rotten_tomatoes\.csv.*--data"):
        data.load("auto", tmp_path, seed=0)


def test_offline_default_is_the_rotten_tomatoes_split() -> None:
    path = resolve_data_dir().joinpath(*data.DEFAULT_FILE)
    if not path.is_file():
        pytest.skip(f"{path} not present")
    rotten = data.load("auto", resolve_data_dir(), seed=1337)
    assert len(rotten.train) + len(rotten.validation) + len(rotten.test) == 12752
    assert (len(rotten.train), len(rotten.validation), len(rotten.test)) == (8926, 1913, 1913)
    assert 0.55 < rotten.test.positive_fraction() < 0.61


# ---------------------------------------------------------------------------------------- the models


def test_hashed_bigrams_match_a_numpy_reference() -> None:
    from training.sentiment import HashedBigrams

    vocab, buckets = 50, 97
    ids = np.array([[2, 3, 4, 0, 0], [1, 7, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.int64)  # [3, 5]
    out = np.asarray(HashedBigrams(vocab, buckets)(ids))  # [3, 9]
    left, right = ids[:, :-1], ids[:, 1:]
    expected = np.where((left > 0) & (right > 0), (left * vocab + right) % buckets + vocab, 0)
    assert out.shape == (3, 9)
    assert out[:, :5].tolist() == ids.tolist() and out[:, 5:].tolist() == expected.tolist()
    assert out[0, 5] == (2 * 50 + 3) % 97 + 50 and out[2].sum() == 0


def test_tf_idf_pooling_equals_a_dense_layer_on_the_tf_idf_vector() -> None:
    from training.sentiment import TfIdfPooling, smooth_idf

    rng = np.random.default_rng(0)
    size = 12
    ids = rng.integers(0, size, size=(6, 9))  # [6, 9], 0 = padding
    ids[0] = 0  # an empty text
    ids[1, 4:] = 0
    ids[2] = [3, 3, 3, 5, 0, 0, 0, 0, 0]  # repeated token: sublinear tf
    idf = smooth_idf(ids, size)  # [12]
    document_frequency = np.array([sum(t in row[row > 0] for row in ids) for t in range(size)])
    assert np.allclose(idf[1:], np.log((1 + 6) / (1 + document_frequency[1:])) + 1)
    weights = rng.normal(size=(size, 3)).astype(np.float32)  # the Dense kernel [12, 3]
    layer = TfIdfPooling(size)
    layer.set_idf(idf)
    actual = np.asarray(layer(weights[ids], ids))  # [6, 3]
    expected = []
    for row in ids:
        counts = np.bincount(row[row > 0], minlength=size).astype(np.float64)
        tf_idf = np.where(counts > 0, (1 + np.log(np.maximum(counts, 1))) * idf, 0.0)  # [12]
        norm = np.linalg.norm(tf_idf)
        expected.append((tf_idf / norm if norm else tf_idf) @ weights)
    assert np.allclose(actual, np.array(expected), atol=1e-5)
    assert not actual[0].any()


def _tiny(name: str) -> Any:
    """The approach with a few units, for tests that only build and run it."""
    from training.sentiment import APPROACHES

    approach = APPROACHES[name]
    return replace(
        approach,
        bigram_buckets=64,
        units=3,
        embedding_dim=min(approach.embedding_dim, 4),
        filters=min(approach.filters, 3),
        hidden=min(approach.hidden, 4),
        one_hot_size=min(approach.one_hot_size, 17),
    )


def test_every_approach_gives_finite_probabilities_even_for_empty_text() -> None:
    from training.sentiment import APPROACHES, build_model

    rng = np.random.default_rng(0)
    glove = rng.normal(size=(30, 5)).astype(np.float32)  # [V, 5]
    ids = np.zeros((3, 24), dtype=np.int64)  # row 0: all padding
    ids[1, :5] = [2, 3, 4, 5, 6]
    ids[2, :] = rng.integers(1, 30, size=24)  # full, with OOV
    for name in APPROACHES:
        if name == "ensemble":
            continue
        model = build_model(_tiny(name), vocab_size=30, sequence_length=24, glove_matrix=glove)
        assert model.output_shape == (None, 2) and model.get_layer("probabilities") is not None, name
        probabilities = np.asarray(model(ids))  # [3, 2]
        assert np.all(np.isfinite(probabilities)), name
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6), name
    with pytest.raises(ValueError, match="GloVe"):
        build_model(_tiny("lstm_glove"), vocab_size=30, sequence_length=24)


def test_multi_hot_matches_a_numpy_reference() -> None:
    from training.text_models import HASH_MULTIPLIER, MultiHot

    ids = np.array([[5, 2, 5, 40, 0, 0], [0, 0, 0, 0, 0, 0], [1, 9, 3, 0, 0, 0]], dtype=np.int64)  # [3, 6]
    words = np.asarray(MultiHot(10)(ids))  # [3, 10]
    expected = np.zeros((3, 10), dtype=np.float32)
    for row, text in enumerate(ids):
        for token in text[text > 0]:
            expected[row, token if token < 10 else 1] = 1.0  # rare words (>= 10) count as OOV
    assert words.tolist() == expected.tolist() and not words[:, 0].any()
    hashed = np.asarray(MultiHot(7, hashed=True)(ids))  # [3, 7]
    expected = np.zeros((3, 7), dtype=np.float32)
    for row, text in enumerate(ids):
        for token in text[text > 0]:
            expected[row, 1 + (int(token) * HASH_MULTIPLIER) % 6] = 1.0
    assert hashed.tolist() == expected.tolist() and not hashed[1].any()


@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru", "bilstm", "gru_glove"])
def test_recurrent_models_ignore_padding(name: str) -> None:
    """Masking: a text padded to 12 tokens gives what the same weights give on its 5 tokens alone
    (for the bidirectional LSTM too, whose backward pass must start at the last real token)."""
    from training.sentiment import build_model

    glove = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    approach = _tiny(name)
    padded = build_model(approach, vocab_size=30, sequence_length=12, glove_matrix=glove)
    short = build_model(approach, vocab_size=30, sequence_length=5, glove_matrix=glove)
    short.set_weights(padded.get_weights())
    text = np.array([[7, 3, 9, 1, 4]], dtype=np.int64)  # [1, 5]
    with_padding = np.concatenate([text, np.zeros((1, 7), dtype=np.int64)], axis=1)  # [1, 12]
    np.testing.assert_allclose(np.asarray(padded(with_padding)), np.asarray(short(text)), atol=1e-6)
    assert padded.get_layer(approach.builder if name != "bilstm" else "bidirectional") is not None


def test_conv_gru_masks_the_pooled_steps_that_cover_only_padding() -> None:
    import keras

    from training.sentiment import build_model

    model = build_model(_tiny("conv_gru"), vocab_size=30, sequence_length=40)
    steps = keras.Model(model.input, model.get_layer("steps").output)
    ids = np.zeros((2, 40), dtype=np.int64)
    ids[0, :9] = 4  # conv1 steps 0..8 see text -> pooled steps 0..2 -> conv2 steps 0..2
    ids[1, :] = 2
    mask = np.asarray(steps(ids))  # [2, T], T = ((40 - 4) // 3) - 4 = 8
    assert mask.shape == (2, 8) and mask[1].all()
    assert mask[0, :3].all() and not mask[0, 3:].any()


def test_probe_set_and_probe_answers() -> None:
    from training import sentiment

    probes = sentiment.read_probes(sentiment.DEFAULT_PROBES)
    assert 10 <= len(probes) <= 20 and 0.3 < probes.positive_fraction() < 0.7
    assert all(any(word in text.split() for word in ("not", "never")) for text in probes.texts)
    assert {"not a good movie", "not bad at all"} <= set(probes.texts)

    class Fixed:
        """p(positive) = 0.9 for the first two probes, 0.2 for the others."""

        def predict(self, ids: np.ndarray, **_: Any) -> np.ndarray:
            positive = np.where(np.arange(len(ids)) < 2, 0.9, 0.2)
            return np.stack([1 - positive, positive], axis=1)

    answers = sentiment.probe_answers(Fixed(), np.zeros((len(probes), 4)), probes)
    expected_right = int(np.sum(np.where(np.arange(len(probes)) < 2, 1, 0) == probes.labels))
    assert answers["right"] == expected_right and answers["of"] == len(probes)
    first = answers["answers"][0]
    assert first == {
        "text": "not a good movie",
        "label": "negative",
        "predicted": "positive",
        "positive": 0.9,
    }
    table = sentiment.probes_table({"approaches": {"fixed": {"negation_probes": answers}}})
    assert "| not a good movie | - | **+** (wrong) |" in table
    assert f"| right | | {expected_right}/{len(probes)} |" in table


def test_greedy_members_adds_only_what_helps() -> None:
    from training.sentiment import greedy_members

    labels = np.array([1, 1, 0, 0])
    good = np.array([[0.4, 0.6], [0.4, 0.6], [0.6, 0.4], [0.45, 0.55]])  # 3/4, last one barely wrong
    complement = np.array([[0.55, 0.45], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])  # 3/4, first barely wrong
    noise = np.full((4, 2), 0.5)
    chosen = greedy_members({"good": good, "complement": complement, "noise": noise}, labels)
    assert chosen == ["good", "complement"]  # 4/4 together; the uninformative model is left out


@pytest.mark.slow
def test_tiny_training_all_approaches(tmp_path: Path) -> None:
    from training import sentiment

    texts, labels = synthetic_reviews(400, seed=3)
    csv_path = write_csv(tmp_path / "reviews.csv", texts, labels)
    glove = tmp_path / "glove.tiny.8d.txt"
    rng = np.random.default_rng(0)
    glove.write_text(
        "".join(
            f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=8))}\n" for w in POSITIVE + NEGATIVE + FILLER
        ),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    classic = tuple(
        replace(sentiment.APPROACHES[name], epochs=6, fine_tune_epochs=2, filters=8, bigram_buckets=256)
        for name in ("bow", "glove", "conv1d", "ensemble")
    )
    sequence = (
        replace(sentiment.APPROACHES["gru"], epochs=1, units=3, embedding_dim=4),
        replace(sentiment.APPROACHES["hashed_onehot"], epochs=2, one_hot_size=64),
    )
    approaches = (*classic[:3], *sequence, classic[3])  # the ensemble last, as parse_args orders it
    config = sentiment.TrainConfig(
        approaches=approaches,
        vocab_size=200,
        sequence_length=16,
        source="local",
        data=csv_path,
        data_dir=tmp_path,
        glove=glove,
        out=out,
        threads=2,
        verbose=0,
    )
    metrics = sentiment.train(config)

    saved = json.loads((out / sentiment.METRICS_FILE).read_text())
    assert saved["served"] == metrics["served"] and set(saved["approaches"]) == {
        "bow",
        "glove",
        "conv1d",
        "ensemble",
        "gru",
        "hashed_onehot",
    }
    assert set(saved["approaches"]["ensemble"]["members"]) <= set(sentiment.NEURAL)
    for entry in saved["approaches"].values():  # every approach answered the negation probes
        probes = entry["negation_probes"]
        assert probes["of"] == 12 and len(probes["answers"]) == 12 and 0 <= probes["right"] <= 12
    assert (
        saved["approaches"]["gru"]["encoding"] == "learned" and saved["approaches"]["gru"]["params_total"] > 0
    )
    assert saved["approaches"]["glove"]["glove"]["found"] == len(POSITIVE + NEGATIVE + FILLER)
    assert saved["approaches"]["glove"]["epochs"] > saved["approaches"]["glove"]["frozen_epochs"]
    assert saved["approaches"]["bow"]["test_accuracy"] >= 0.9  # the sentiment words decide every review
    assert saved["approaches"][saved["served"]]["val_accuracy"] == max(
        entry["val_accuracy"] for entry in saved["approaches"].values()
    )
    assert {"tfidf_logreg", "tfidf_logreg_same_tokens", "majority class"} <= set(saved["references"])
    for name in ("bow", "glove", "conv1d", "ensemble"):
        assert (out / name / sentiment.BEST_MODEL).is_file()
    assert (out / "bow" / "curves.png").stat().st_size > 1000
    table = (out / sentiment.RESULTS_FILE).read_text()
    assert "| `bow`" in table and "tfidf_logreg (reference)" in table and "(served)" in table
    assert "| `gru` | learned |" in table and "| not bad at all | + |" in table

    # The vocabulary file is TextVectorization's, index = line number.
    from serving.text import read_vocabulary

    vocabulary = read_vocabulary(out / sentiment.VOCABULARY_FILE)
    assert vocabulary[:2] == ["", "[UNK]"] and "great" in vocabulary

    # A second run of one approach keeps the others (same data, same vectorization); repeats train it
    # again from other initial weights under new names, and the ensemble can pick them.
    sentiment.train(replace(config, approaches=(classic[0], classic[3]), baseline=False, repeats=2))
    again = json.loads((out / sentiment.METRICS_FILE).read_text())
    assert set(again["approaches"]) == {"bow", "bow_2", "glove", "conv1d", "ensemble", "gru", "hashed_onehot"}
    assert again["approaches"]["bow_2"]["approach"] == "bow" and again["approaches"]["bow_2"]["repeat"] == 1
    assert (out / "bow_2" / sentiment.BEST_MODEL).is_file()
    assert set(again["approaches"]["ensemble"]["members"]) <= {"bow", "bow_2", "glove", "conv1d"}


def test_cli_rejects_bad_flags_and_reports_missing_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import sentiment

    for bad in ("transformer", "lstm,nope", ""):
        with pytest.raises(SystemExit):
            sentiment.parse_args(["--approach", bad])
    config = sentiment.parse_args(["--approach", "bow", "--epochs", "3", "--data-dir", str(tmp_path)])
    assert [a.name for a in config.approaches] == ["bow"] and config.approaches[0].epochs == 3
    assert [a.name for a in sentiment.parse_args([]).approaches] == [*sentiment.NEURAL, "ensemble"]
    chosen = sentiment.parse_args(["--approach", "ensemble,lstm,gru_glove,lstm"]).approaches
    assert [a.name for a in chosen] == ["lstm", "gru_glove", "ensemble"]  # the ensemble comes last
    everything = [a.name for a in sentiment.parse_args(["--approach", "compare"]).approaches]
    assert set(everything) == set(sentiment.APPROACHES) and everything[-1] == "ensemble"
    assert (
        sentiment.main(["--approach", "bow", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    assert "rotten_tomatoes.csv" in capsys.readouterr().err
