"""Request validation and shared readiness, in-process (the same over real servers: test_server_*)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.backends import Signature, TensorMeta
from serving.codec import STRING, check_shape, little_endian_bytes
from serving.dataplane import FINITE_BY_BYTES_MAX_ELEMENTS, all_finite, validate_inputs
from serving.errors import InvalidArgument
from serving.workers import SharedReadiness

IMAGE = Signature(
    "serving_default",
    "tensorflow/serving/predict",
    {"image": TensorMeta(np.dtype(np.float32), (-1, 28, 28, 1))},
    {"probabilities": TensorMeta(np.dtype(np.float32), (-1, 10))},
    alternatives={"image_bytes": "image"},
)
TWO_INPUTS = Signature(
    "pair",
    "tensorflow/serving/predict",
    {"a": TensorMeta(np.dtype(np.float32), (-1, 2)), "b": TensorMeta(np.dtype(np.int64), (-1, -1))},
    {"y": TensorMeta(np.dtype(np.float32), (-1,))},
)
FIXED_BATCH = Signature(  # (a batch dimension fixed by the graph: no fast shape comparison)
    "fixed", "tensorflow/serving/predict", {"x": TensorMeta(np.dtype(np.float32), (1, 3))}, {}
)


def _images(n: int) -> np.ndarray:
    return np.zeros((n, 28, 28, 1), np.float32)


def test_valid_inputs_pass() -> None:
    validate_inputs(IMAGE, {"image": _images(3)})
    validate_inputs(IMAGE, {"image_bytes": np.array([b"\x89PNG"], dtype=STRING)})
    validate_inputs(TWO_INPUTS, {"a": np.zeros((2, 2), np.float32), "b": np.zeros((2, 7), np.int64)})
    validate_inputs(FIXED_BATCH, {"x": np.zeros((1, 3), np.float32)})
    assert IMAGE.inputs["image"].known_tail == (28, 28, 1)
    assert TWO_INPUTS.inputs["b"].known_tail is None and FIXED_BATCH.inputs["x"].known_tail is None


@pytest.mark.parametrize(
    ("signature", "inputs", "message"),
    [
        (IMAGE, {}, "no inputs"),
        (IMAGE, {"pixels": _images(1)}, "unknown input(s) ['pixels']"),
        (IMAGE, {"image": _images(1), "image_bytes": np.array([b""], STRING)}, "unknown input(s) ['image']"),
        (TWO_INPUTS, {"a": np.zeros((1, 2), np.float32)}, "missing input(s) ['b']"),
        (IMAGE, {"image": _images(1).astype(np.float64)}, "must be float32, got float64"),
        (IMAGE, {"image": np.zeros((1, 28, 28), np.float32)}, "rank 4"),
        (IMAGE, {"image": np.zeros((1, 28, 27, 1), np.float32)}, "axis 2"),
        (FIXED_BATCH, {"x": np.zeros((2, 3), np.float32)}, "axis 0"),
        (FIXED_BATCH, {"x": np.zeros((1, 4), np.float32)}, "axis 1"),
        (IMAGE, {"image": _images(0)}, "empty batch"),
        (IMAGE, {"image": np.full((1, 28, 28, 1), np.inf, np.float32)}, "NaN or infinite"),
        (IMAGE, {"image_bytes": np.array(["text"], dtype=STRING)}, "non-bytes element"),
        (
            TWO_INPUTS,
            {"a": np.zeros((2, 2), np.float32), "b": np.zeros((3, 1), np.int64)},
            "disagree on batch size",
        ),
    ],
)
def test_invalid_inputs_say_what_is_wrong(signature: Signature, inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_inputs(signature, inputs)
    assert message in info.value.message


@pytest.mark.parametrize(
    "shape",
    [
        (2**31, 2**31, 2**31, 1),
        (2**31, 2**31, 2**31, 0),  # numpy: "array is too big" even though it holds no element
        (0, 2**62),
        (1,) * 33,
        (3, -1),
    ],
)
def test_shape_arithmetic_is_checked_before_numpy(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument):
        check_shape(shape, 4, 1 << 30, "x")


def test_shapes_within_limits_give_their_element_count() -> None:
    assert check_shape((0, 28, 28, 1), 4, 1 << 30, "x") == 0
    assert check_shape((2, 3), 8, 48, "x") == 6
    with pytest.raises(InvalidArgument, match="over the 47-byte limit"):
        check_shape((2, 3), 8, 47, "x")


def test_shared_readiness_is_ready_only_when_every_worker_is() -> None:
    flags = [0, 0]  # stands for the shared-memory array; each worker writes only its own slot
    first, second = SharedReadiness(flags, 0), SharedReadiness(flags, 1)
    first.publish(True)
    assert not first.all_ready() and not second.all_ready()
    second.publish(True)
    assert first.all_ready() and second.all_ready()
    second.publish(False)  # one worker stopping makes the whole group unready at once
    assert not first.all_ready()


# -- the finite check and the little-endian payload, against numpy's own answers ------------------

_FLOAT_TYPES = ("<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c8", "<c16", ">c16")
_SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e-45, 6.1e-5, 65504.0, 3.4e38, 1.7e308)


@st.composite
def _float_arrays(draw: st.DrawFn) -> np.ndarray:
    """Float and complex arrays of either byte order and any layout, holding NaN, infinities and the
    finite values nearest them (the largest of each type: a top byte a non-finite value also has)."""
    dtype = np.dtype(draw(st.sampled_from(_FLOAT_TYPES)))
    size = draw(st.sampled_from((1, 7, 64, FINITE_BY_BYTES_MAX_ELEMENTS, FINITE_BY_BYTES_MAX_ELEMENTS + 1)))
    with np.errstate(over="ignore"):  # 1.7e308 as float16 is inf: one more special value
        values = np.full(size, draw(st.floats(allow_nan=False, allow_infinity=False, width=16)), dtype=dtype)
        for _ in range(draw(st.integers(0, 3))):
            values[draw(st.integers(0, size - 1))] = draw(st.sampled_from(_SPECIALS))
        if dtype.kind == "c" and draw(st.booleans()):
            values[draw(st.integers(0, size - 1))] = complex(1, draw(st.sampled_from(_SPECIALS)))
    if size % 2 == 0 and draw(st.booleans()):
        values = values.reshape(2, -1).T  # Fortran-ordered
    elif draw(st.booleans()):
        values = values[::2]  # strided
    return values


@settings(max_examples=300, deadline=None)
@given(_float_arrays())
def test_all_finite_agrees_with_numpy(values: np.ndarray) -> None:
    assert all_finite(values) == bool(np.isfinite(values).all())


@settings(max_examples=200, deadline=None)
@given(_float_arrays())
def test_little_endian_bytes_agree_with_numpy(values: np.ndarray) -> None:
    expected = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    assert little_endian_bytes(values) == expected


def test_little_endian_bytes_of_integers_and_bools() -> None:
    for dtype in (">i4", "<i8", "u1", "?", ">u2"):
        values = np.arange(12).reshape(3, 4).T.astype(dtype)
        assert little_endian_bytes(values) == np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
