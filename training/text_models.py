"""The sentiment models, one small builder per approach (Deep Learning with Python, the text chapter).

Every builder maps `token_ids` int64 [N, L] (0 = padding, 1 = OOV, from the shared
`TextVectorization`) to a feature tensor; `build_model` adds the output layer `probabilities`
(softmax, float32 [N, 2]) so every approach is served behind the same tokenizer and exported to ONNX
on token ids. The encodings the chapter names, and the families that read them:

* one-hot: `onehot` (multi-hot of the words: the Dense classifier of the book's IMDB example) and
  `hashed_onehot` (the hashing trick: words hashed into a few thousand slots, then multi-hot);
* TF-IDF bag of words and 2-grams: `bow` (logistic regression, the shallow baseline);
* embeddings, learned or GloVe, read three ways: averaged (`embedding`, `glove`), by a 1D convnet
  (`conv1d`, and `conv_gru`: convolutions shortening the sequence before a GRU), or by a recurrent
  network over the masked sequence (`simple_rnn`, `lstm`, `gru`, `bilstm`, each also `*_glove`).

Character-level one-hot is not offered: the served input is word ids, so a character model would need
its own tokenizer on the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops

OUTPUT_NAME = "probabilities"
INPUT_NAME = "token_ids"
HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: neighbouring ids land far apart


@dataclass(frozen=True)
class Approach:
    """One selectable job: its builder, the builder's knobs and the training schedule."""

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
    architecture: str = ""  # key of BUILDERS ("" = name)
    encoding: str = ""  # how tokens become vectors: "learned", "glove", "one-hot", "tf-idf", ...
    units: int = 0  # recurrent units
    recurrent_dropout: float = 0.0  # dropout of the recurrent state (the book's recurrent_dropout)
    one_hot_size: int = 0  # one-hot slots: the first words of the vocabulary, or hash buckets
    predict_batch_size: int = 1024  # the one-hot models materialise [B, L, size] floats

    @property
    def builder(self) -> str:
        return self.architecture or self.name

    @property
    def uses_glove(self) -> bool:
        return self.encoding == "glove"


# ----------------------------------------------------------------------------------- custom layers


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


@keras.saving.register_keras_serializable(package="sentiment")
class MultiHot(layers.Layer):
    """Token ids [N, L] -> multi-hot float32 [N, size]: 1 where the text holds the word (the one-hot
    vectors of its words, max over the text; padding never counts).

    `hashed=False`: slot = the token id, ids past `size` count as OOV (slot 1): the `size` most frequent
    words. `hashed=True`: the hashing trick, slot = 1 + (id * 2654435761) mod (size - 1), so any number of
    words share `size - 1` slots (with collisions) and no table is needed.
    """

    def __init__(self, size: int, hashed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.hashed = bool(hashed)

    def call(self, token_ids: Any) -> Any:
        ids = ops.cast(token_ids, "int64")  # [N, L]
        if self.hashed:
            slots = 1 + ops.mod(ids * HASH_MULTIPLIER, self.size - 1)  # [N, L] in 1..size-1
        else:
            slots = ops.where(ids < self.size, ids, ops.ones_like(ids))  # [N, L], rare words -> OOV
        slots = ops.where(ids > 0, slots, ops.zeros_like(slots))  # padding -> slot 0
        one_hot = ops.one_hot(ops.cast(slots, "int32"), self.size)  # [N, L, size]
        present = ops.max(one_hot, axis=1)  # [N, size]
        return present * ops.concatenate([ops.zeros((1, 1)), ops.ones((1, self.size - 1))], axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.size)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size, "hashed": self.hashed}


@keras.saving.register_keras_serializable(package="sentiment")
class TokenPresence(layers.Layer):
    """Token ids [N, L] -> float32 [N, L, 1]: 1 for a real token, 0 for padding (pooled alongside a
    convnet to know which of its shortened time steps still cover text)."""

    def call(self, token_ids: Any) -> Any:
        return ops.expand_dims(ops.cast(ops.greater(token_ids, 0), "float32"), -1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape, 1)


@keras.saving.register_keras_serializable(package="sentiment")
class StepMask(layers.Layer):
    """Presence [N, T, 1] -> bool mask [N, T] for a recurrent layer."""

    def call(self, presence: Any) -> Any:
        return ops.greater(presence[..., 0], 0.0)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape[:2]


# ------------------------------------------------------------------------------------------ builders


def _glove_embedding(glove: np.ndarray | None, mask_zero: bool = False) -> layers.Embedding:
    """Frozen Embedding holding the GloVe matrix [V, 50]."""
    if glove is None:
        raise ValueError("this approach needs the GloVe embedding matrix")
    return layers.Embedding(
        glove.shape[0],
        glove.shape[1],
        embeddings_initializer=keras.initializers.Constant(glove),
        trainable=False,
        mask_zero=mask_zero,
        name="glove",
    )


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


def bow(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """TF-IDF of words and hashed 2-grams; with the output Dense, a logistic regression."""
    grams = HashedBigrams(vocab_size, approach.bigram_buckets, name="bigrams")(token_ids)  # [N, 2L-1]
    size = vocab_size + approach.bigram_buckets
    x = layers.Embedding(size, approach.embedding_dim, name="bag")(grams)  # [N, 2L-1, D]
    x = TfIdfPooling(size, name="tf_idf")(x, grams)  # [N, D]
    return layers.Dropout(approach.dropout, name="dropout")(x)


def embedding(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """A learned Embedding, averaged over the tokens."""
    x = layers.Embedding(vocab_size, approach.embedding_dim, name="embedding")(token_ids)  # [N, L, D]
    x = MeanOverTokens(name="average")(x, token_ids)  # [N, D]
    return layers.Dropout(approach.dropout, name="dropout")(x)


def glove_average(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Frozen GloVe vectors, averaged over the tokens (or read by the 1D convnet, pooling="conv")."""
    x = _glove_embedding(glove)(token_ids)  # [N, L, 50]
    if approach.pooling != "average":
        return _conv_head(x, approach)  # [N, 3F]
    x = MeanOverTokens(name="average")(x, token_ids)  # [N, 50]
    return layers.Dropout(approach.dropout, name="dropout")(x)


def conv1d(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """A learned Embedding read by Conv1D widths 3/4/5, each max-pooled over time."""
    x = layers.Embedding(vocab_size, approach.embedding_dim, name="embedding")(token_ids)  # [N, L, D]
    x = layers.SpatialDropout1D(0.2, name="embedding_dropout")(x)
    return _conv_head(x, approach)  # [N, 3F]


def onehot(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Multi-hot of the most frequent words (or of hashed words) -> Dense -> Dense, the book's IMDB
    classifier."""
    hashed = approach.encoding == "hashed one-hot"
    size = approach.one_hot_size if hashed else min(approach.one_hot_size, vocab_size)
    x = MultiHot(size, hashed=hashed, name="multi_hot")(token_ids)  # [N, size]
    x = layers.Dense(approach.hidden, activation="relu", name="dense1")(x)  # [N, H]
    x = layers.Dropout(approach.dropout, name="dropout")(x)
    x = layers.Dense(approach.hidden, activation="relu", name="dense2")(x)  # [N, H]
    return layers.Dropout(approach.dropout, name="dropout2")(x)


def _sequence(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Token vectors [N, L, D] carrying the padding mask: learned, or frozen GloVe."""
    if approach.uses_glove:
        return _glove_embedding(glove, mask_zero=True)(token_ids)  # [N, L, 50]
    embed = layers.Embedding(vocab_size, approach.embedding_dim, mask_zero=True, name="embedding")
    return embed(token_ids)  # [N, L, D]


def _recurrent_kwargs(approach: Approach, name: str) -> dict[str, Any]:
    return {"dropout": approach.dropout, "recurrent_dropout": approach.recurrent_dropout, "name": name}


def simple_rnn(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Embedding (masked) -> SimpleRNN: the last state of the text."""
    x = _sequence(token_ids, approach, vocab_size, glove)  # [N, L, D], masked
    return layers.SimpleRNN(approach.units, **_recurrent_kwargs(approach, "simple_rnn"))(x)  # [N, U]


def lstm(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Embedding (masked) -> LSTM."""
    x = _sequence(token_ids, approach, vocab_size, glove)  # [N, L, D], masked
    return layers.LSTM(approach.units, **_recurrent_kwargs(approach, "lstm"))(x)  # [N, U]


def gru(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Embedding (masked) -> GRU."""
    x = _sequence(token_ids, approach, vocab_size, glove)  # [N, L, D], masked
    return layers.GRU(approach.units, **_recurrent_kwargs(approach, "gru"))(x)  # [N, U]


def bilstm(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """Embedding (masked) -> LSTM read forwards and backwards, both last states concatenated."""
    x = _sequence(token_ids, approach, vocab_size, glove)  # [N, L, D], masked
    cell = layers.LSTM(approach.units, **_recurrent_kwargs(approach, "lstm"))
    return layers.Bidirectional(cell, name="bidirectional")(x)  # [N, 2U]


def conv_gru(token_ids: Any, approach: Approach, vocab_size: int, glove: np.ndarray | None) -> Any:
    """The book's combination for long sequences: Conv1D/MaxPooling1D shorten the sequence, a GRU
    reads what is left. The padding mask is pooled through the same windows, so the GRU skips the
    steps that cover only padding."""
    x = layers.Embedding(vocab_size, approach.embedding_dim, name="embedding")(token_ids)  # [N, L, D]
    x = layers.Conv1D(approach.filters, 5, activation="relu", name="conv1")(x)  # [N, L-4, F]
    x = layers.MaxPooling1D(3, name="pool1")(x)  # [N, (L-4)/3, F]
    x = layers.Conv1D(approach.filters, 5, activation="relu", name="conv2")(x)  # [N, T, F]
    present = TokenPresence(name="presence")(token_ids)  # [N, L, 1]
    present = layers.MaxPooling1D(5, strides=1, name="presence_conv1")(present)  # [N, L-4, 1]
    present = layers.MaxPooling1D(3, name="presence_pool1")(present)
    present = layers.MaxPooling1D(5, strides=1, name="presence_conv2")(present)  # [N, T, 1]
    mask = StepMask(name="steps")(present)  # [N, T] bool
    return layers.GRU(approach.units, **_recurrent_kwargs(approach, "gru"))(x, mask=mask)  # [N, U]


Builder = Callable[[Any, Approach, int, "np.ndarray | None"], Any]
BUILDERS: dict[str, Builder] = {
    "bow": bow,
    "embedding": embedding,
    "glove": glove_average,
    "conv1d": conv1d,
    "onehot": onehot,
    "simple_rnn": simple_rnn,
    "lstm": lstm,
    "gru": gru,
    "bilstm": bilstm,
    "conv_gru": conv_gru,
}


def build_model(
    approach: Approach,
    vocab_size: int,
    sequence_length: int,
    glove_matrix: np.ndarray | None = None,
    name: str | None = None,
) -> keras.Model:
    """The approach's model on token ids [N, L] -> probabilities [N, 2] (named `sentiment_<name>`)."""
    if approach.builder not in BUILDERS:
        raise ValueError(f"unknown approach {approach.name!r}")
    token_ids = keras.Input(shape=(sequence_length,), dtype="int64", name=INPUT_NAME)  # [N, L]
    x = BUILDERS[approach.builder](token_ids, approach, vocab_size, glove_matrix)  # [N, features]
    if approach.hidden and approach.builder != "onehot":
        x = layers.Dense(approach.hidden, activation="relu", name="hidden")(x)  # [N, H]
    probabilities = layers.Dense(2, activation="softmax", name=OUTPUT_NAME)(x)  # [N, 2]
    return keras.Model(token_ids, probabilities, name=f"sentiment_{name or approach.name}")
