"""Pure-Python tokenizer reproducing Keras's `TextVectorization` (int output), plus occlusion importance.

The server and export both use it: export checks that its token ids equal TensorFlow's on tricky
strings before a version is published; the server uses it to turn raw `text` into the `token_ids`
that `model.onnx` takes. No TensorFlow here (numpy only).

Facts it reproduces (read from keras/src/layers/preprocessing/text_vectorization.py in Keras 3.15
and checked against TensorFlow 2.21 by tests/serving/test_text_tokenizer.py):

* TensorFlow works on the UTF-8 **bytes** of each string, never on decoded characters.
* `standardize="lower_and_strip_punctuation"` is `tf.strings.lower(x)` then
  `tf.strings.regex_replace(x, r'[!"#$%&()\\*\\+,-\\./:;<=>?@\\[\\\\\\]^_`{|}~\\']', "")`.
  `tf.strings.lower` with its default `encoding=""` lowercases **ASCII only** ("ÉCOLE" -> "École").
  The regex class holds exactly the 32 ASCII punctuation characters (`string.punctuation`); since an
  ASCII byte is never part of a multi-byte UTF-8 sequence, and RE2 steps over invalid bytes one at a
  time, the replacement is a byte-wise deletion of those 32 bytes, also on invalid UTF-8.
* `standardize="lower_and_space_punctuation"` (this project's variant, a Keras callable in
  `training/sentiment.py`): the same lowercasing, then each of the 32 punctuation bytes becomes a
  space instead of vanishing ("three-hour" -> "three hour", "it's" -> "it s" rather than "threehour",
  "its"), which keeps more words known to the vocabulary and to GloVe.
* `split="whitespace"` is `tf.strings.split(x)`: split on runs of the six ASCII whitespace bytes
  `b" \\t\\n\\v\\f\\r"`, dropping empty pieces. Unicode spaces (U+00A0, U+3000, ...) and the
  separators U+001C..U+001F do not split: they stay inside tokens, as in TensorFlow.
* Lookup: index 0 is the padding/mask token `""`, index 1 the OOV token `"[UNK]"`, then the
  vocabulary in `get_vocabulary()` order; any token not in the vocabulary -> 1.
* `output_sequence_length=L`: truncate to the first L tokens, right-pad with 0.

Choices where TensorFlow gives no answer:

* Invalid UTF-8 in `bytes` input is tokenized byte-wise exactly like TensorFlow (no error); such a
  token is almost surely OOV. A `str` that cannot be encoded as UTF-8 (a lone surrogate, which JSON
  can carry as "\\ud800") raises `TextInputError`.
* A text longer than `max_text_bytes` (default 1 MiB of UTF-8) raises `TextInputError` rather than
  being truncated: cutting bytes could split a token and silently change the ids. `TextInputError`
  is both a `ValueError` and `serving.errors.InvalidArgument`, so the server answers
  INVALID_ARGUMENT (HTTP 400).

Vocabulary file (`assets/vocabulary.txt`): UTF-8, one token per line, index = line number (line 0 is
the empty padding token, line 1 `[UNK]`), lines separated by `\\n` only (tokens may contain `\\x1c` or
U+2028, which `str.splitlines` would wrongly treat as line breaks).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import InvalidArgument

PAD_TOKEN = ""
OOV_TOKEN = "[UNK]"
PAD_ID = 0
OOV_ID = 1
STANDARDIZE = "lower_and_strip_punctuation"
SPACE_PUNCTUATION = "lower_and_space_punctuation"
SPLIT = "whitespace"
DEFAULT_MAX_TEXT_BYTES = 1 << 20  # 1 MiB

# bytes.translate table: ASCII A-Z -> a-z (tf.strings.lower with encoding ""), all else unchanged.
_ASCII_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
# The 32 bytes Keras's punctuation regex removes (== string.punctuation).
_PUNCTUATION = string.punctuation.encode("ascii")
# lower_and_space_punctuation: ASCII lowercasing and each punctuation byte -> b" " in one table.
_ASCII_LOWER_PUNCTUATION_TO_SPACE = bytes(
    0x20 if byte in _PUNCTUATION else _ASCII_LOWER[byte] for byte in range(256)
)
# standardize name -> (bytes.translate table, bytes to delete)
_STANDARDIZERS: dict[str, tuple[bytes, bytes]] = {
    STANDARDIZE: (_ASCII_LOWER, _PUNCTUATION),
    SPACE_PUNCTUATION: (_ASCII_LOWER_PUNCTUATION_TO_SPACE, b""),
}
# bytes.split() with no argument splits on exactly b" \t\n\v\f\r", like tf.strings.split.


class TextInputError(InvalidArgument, ValueError):
    """A text the tokenizer refuses: not encodable as UTF-8, or longer than the byte limit."""


def split_tokens(text: bytes, standardize: str = STANDARDIZE) -> list[bytes]:
    """Standardize and split one UTF-8 text the way `Tokenizer` does (no length limit, no lookup)."""
    table, delete = _STANDARDIZERS[standardize]
    return text.translate(table, delete).split()


def read_vocabulary(path: Path) -> list[str]:
    """Read a vocabulary file written by `write_vocabulary` (index = line number)."""
    content = path.read_bytes().decode("utf-8")
    if not content.endswith("\n"):
        raise ValueError(f"{path}: vocabulary file must end with a newline")
    return content[:-1].split("\n")


def write_vocabulary(path: Path, vocabulary: Sequence[str]) -> Path:
    """Write one token per line; refuses tokens that would break the one-line-per-token format."""
    if len(vocabulary) < 2 or vocabulary[0] != PAD_TOKEN or vocabulary[1] != OOV_TOKEN:
        raise ValueError("vocabulary must start with the padding token '' and the OOV token '[UNK]'")
    for index, token in enumerate(vocabulary):
        if "\n" in token:
            raise ValueError(f"vocabulary token {index} contains a newline: {token!r}")
    path.write_bytes(("\n".join(vocabulary) + "\n").encode("utf-8"))
    return path


@dataclass(frozen=True)
class Tokenizer:
    """`TextVectorization(standardize=..., split="whitespace", output_mode="int",
    output_sequence_length=sequence_length)` without TensorFlow, for the two standardizations above."""

    vocabulary: tuple[str, ...]
    sequence_length: int
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    standardize: str = STANDARDIZE

    def __post_init__(self) -> None:
        if self.standardize not in _STANDARDIZERS:
            raise ValueError(f"unsupported standardize {self.standardize!r}; known: {sorted(_STANDARDIZERS)}")
        object.__setattr__(self, "_table", _STANDARDIZERS[self.standardize])
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be positive, got {self.sequence_length}")
        if len(self.vocabulary) < 2 or self.vocabulary[:2] != (PAD_TOKEN, OOV_TOKEN):
            raise ValueError("vocabulary must start with '' (padding) and '[UNK]' (OOV)")
        ids: dict[bytes, int] = {}
        for index, token in enumerate(self.vocabulary[2:], start=2):
            ids.setdefault(token.encode("utf-8"), index)  # first occurrence wins, like the table
        object.__setattr__(self, "_ids", ids)

    @classmethod
    def from_params(cls, version_dir: Path, params: Mapping[str, Any]) -> Tokenizer:
        """Build from a manifest's `preprocess.params` (`kind: "text"`); paths relative to the version."""
        standardize = params.get("standardize", STANDARDIZE)
        split = params.get("split", SPLIT)
        if standardize not in _STANDARDIZERS or split != SPLIT:
            raise ValueError(
                f"unsupported text preprocessing standardize={standardize!r} split={split!r}; "
                f"this tokenizer reproduces {sorted(_STANDARDIZERS)} + {SPLIT!r}"
            )
        if int(params.get("ngrams") or 1) != 1:
            raise ValueError("n-gram vectorization is not supported (n-grams are built inside the model)")
        vocabulary = read_vocabulary(Path(version_dir) / str(params["vocabulary"]))
        max_tokens = params.get("max_tokens")
        if max_tokens is not None and len(vocabulary) > int(max_tokens):
            raise ValueError(f"vocabulary has {len(vocabulary)} tokens, more than max_tokens={max_tokens}")
        return cls(
            vocabulary=tuple(vocabulary),
            sequence_length=int(params["sequence_length"]),
            max_text_bytes=int(params.get("max_text_bytes", DEFAULT_MAX_TEXT_BYTES)),
            standardize=str(standardize),
        )

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def _as_bytes(self, text: str | bytes) -> bytes:
        if isinstance(text, str):
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise TextInputError(f"text is not encodable as UTF-8: {exc.reason}") from exc
        elif isinstance(text, (bytes, bytearray, memoryview)):
            raw = bytes(text)
        else:
            raise TextInputError(f"text must be str or bytes, got {type(text).__name__}")
        if len(raw) > self.max_text_bytes:
            raise TextInputError(f"text is {len(raw)} bytes long; the limit is {self.max_text_bytes} bytes")
        return raw

    def tokens(self, text: str | bytes) -> list[bytes]:
        """Standardized, split tokens of one text (all of them, not truncated)."""
        return split_tokens(self._as_bytes(text), self.standardize)

    def encode(self, texts: Sequence[str | bytes] | np.ndarray) -> np.ndarray:
        """Token ids int64 [N, sequence_length] of N texts (str, or bytes as sent on the wire)."""
        length = self.sequence_length
        ids: dict[bytes, int] = self._ids  # type: ignore[attr-defined]
        items = list(np.asarray(texts, dtype=object).reshape(-1)) if isinstance(texts, np.ndarray) else texts
        table, delete = self._table  # type: ignore[attr-defined]
        out = np.zeros((len(items), length), dtype=np.int64)  # [N, L], 0 = padding
        for row, text in enumerate(items):
            raw = self._as_bytes(text).translate(table, delete)
            # maxsplit=L: the first L pieces are exactly the first L tokens; the rest is never split.
            pieces = raw.split(None, length)[:length]
            out[row, : len(pieces)] = [ids.get(piece, OOV_ID) for piece in pieces]
        return out

    def decode_ids(self, token_ids: np.ndarray) -> np.ndarray:
        """Token strings object [N, L] for ids [N, L] (padding -> "", OOV -> "[UNK]")."""
        vocab = np.asarray(self.vocabulary, dtype=object)
        return vocab[np.asarray(token_ids, dtype=np.int64)]


def token_importance(
    run_probabilities: Callable[[np.ndarray], np.ndarray],
    tokenizer: Tokenizer,
    text: str | bytes,
) -> list[tuple[str, float]]:
    """Occlusion importance of each token of one text, without TensorFlow.

    `run_probabilities(token_ids int64 [B, L]) -> probabilities float32 [B, C]` (e.g. model.onnx).
    Each of the text's T <= L tokens is replaced in turn by the OOV id (1); the T variants and the
    original go through the model in one batch. Importance of token t = p(c | original) -
    p(c | token t occluded), c = the class predicted for the original: positive where the token pushes
    towards the predicted class, negative where it pushes away (0 for OOV tokens, which occlusion
    leaves unchanged). Returns [(token, importance)] in text order for the T real tokens, each token
    as the standardized text (UTF-8, invalid bytes replaced by U+FFFD); padding is left out.
    """
    ids = tokenizer.encode([text])  # [1, L]
    count = int(np.count_nonzero(ids[0]))  # tokens come first, padding after
    variants = np.repeat(ids, count + 1, axis=0)  # [T+1, L]; row 0 is the original
    positions = np.arange(count)
    variants[positions + 1, positions] = OOV_ID
    probabilities = np.asarray(run_probabilities(variants), dtype=np.float64)  # [T+1, C]
    if probabilities.ndim != 2 or probabilities.shape[0] != count + 1:
        raise ValueError(f"run_probabilities returned shape {probabilities.shape}, expected [{count + 1}, C]")
    predicted = int(np.argmax(probabilities[0]))
    drops = probabilities[0, predicted] - probabilities[1:, predicted]  # [T]
    names = [piece.decode("utf-8", "replace") for piece in tokenizer.tokens(text)[:count]]
    return [(str(name), float(drop)) for name, drop in zip(names, drops, strict=True)]


def explain_batch(
    run_probabilities: Callable[[np.ndarray], np.ndarray],
    tokenizer: Tokenizer,
    texts: Sequence[str | bytes],
) -> dict[str, np.ndarray]:
    """The `explain` signature for N texts: `probabilities` float32 [N, C], `tokens` object [N, L]
    (standardized token strings, "" at padding) and `importance` float32 [N, L] (0 at padding)."""
    token_ids = tokenizer.encode(texts)  # [N, L]
    probabilities = np.asarray(run_probabilities(token_ids), dtype=np.float32)  # [N, C]
    importance = np.zeros(token_ids.shape, dtype=np.float32)  # [N, L]
    tokens = np.full(token_ids.shape, "", dtype=object)  # [N, L]
    for row, text in enumerate(texts):
        scores = token_importance(run_probabilities, tokenizer, text)
        importance[row, : len(scores)] = [score for _, score in scores]
        tokens[row, : len(scores)] = [token for token, _ in scores]
    return {
        "probabilities": probabilities,
        "tokens": tokens,
        "importance": importance,
    }
