"""The REST JSON codec: `codec.loads` (with its dense-array fast path), `json_to_numpy` on what it
returns, and `json_ready` for answers. The fast path must agree with a plain orjson parse on every
body, valid or not: that is checked on generated and mutated bodies."""

from __future__ import annotations

import gc
import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import codec
from serving.errors import InvalidArgument

F32 = np.dtype(np.float32)


def resolved(value: Any) -> Any:
    """`value` with every NumberArray replaced by the nested lists it stands for."""
    if isinstance(value, codec.NumberArray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: resolved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v) for v in value]
    return value


def outcome(parse: Any, raw: bytes) -> Any:
    """What a parse gives, comparable across parsers: the JSON text of the value (orjson tells
    1 from 1.0 and -0.0 from 0.0), or the error class."""
    try:
        return orjson.dumps(resolved(parse(raw)))
    except InvalidArgument:
        return InvalidArgument


def fast(raw: bytes) -> Any:
    return codec.loads(raw, dense_arrays=True, dense_min_bytes=1)


def plain(raw: bytes) -> Any:
    return codec.loads(raw)


# -- generated bodies ------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: repr(float(np.float32(x)))),
    st.sampled_from(["0", "-0", "-0.0", "1e5", "1E+5", "2.5e-3", "1e400", "-1e400", "01", "1.", ".5", "+1"]),
)
spaces = st.sampled_from(["", "", "", " ", "\n  ", "\t"])


@st.composite
def array_text(draw: st.DrawFn) -> str:
    """A nested numeric array as JSON text, usually regular, with random whitespace."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    ragged = draw(st.booleans()) and draw(st.booleans())

    def build(dims: list[int]) -> str:
        if not dims:
            return draw(numbers)
        count = dims[0] if not ragged else draw(st.integers(0, 4))
        parts = [build(dims[1:]) for _ in range(count)]
        joined = ("," + draw(spaces)).join(parts)
        return "[" + draw(spaces) + joined + draw(spaces) + "]"

    return build(shape)


@st.composite
def body_text(draw: st.DrawFn) -> bytes:
    arrays = [draw(array_text()) for _ in range(2)]
    form = draw(st.integers(0, 4))
    tensor = [
        lambda: f'"instances": {arrays[0]}',
        lambda: f'"inputs": {arrays[0]}',
        lambda: f'"inputs": {{"a": {arrays[0]}, "b":{arrays[1]}}}',
        lambda: f'"instances": [{{"a": {arrays[0]}}}, {{"a": {arrays[1]}}}]',
        lambda: f'"examples": [{{"a": {arrays[0]}}}]',
    ][form]()
    extra = draw(st.sampled_from(["", '"signature_name": "x", ', '"output_filter": ["[1]"], ']))
    text = "{" + extra + tensor + "}"
    for _ in range(draw(st.integers(0, 3)) if draw(st.booleans()) else 0):  # mutate
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(list('[],0123456789.eE+- \n"{}:aN')))
        edit = draw(st.integers(0, 2))
        text = text[:at] + (char if edit != 1 else "") + text[at + (edit != 0) :]
    return text.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body_text())
def test_fast_path_parses_every_body_as_plain_orjson_does(raw: bytes) -> None:
    assert outcome(fast, raw) == outcome(plain, raw), raw


@settings(max_examples=200, deadline=None)
@given(array_text(), st.sampled_from(["float32", "float64", "float16", "int32", "int64", "uint8", "bool"]))
def test_number_arrays_convert_as_nested_lists_do(text: str, dtype_name: str) -> None:
    raw = b'{"inputs": ' + text.encode() + b"}"
    dtype = np.dtype(dtype_name)

    def convert(parse: Any) -> Any:
        try:
            array = codec.json_to_numpy(parse(raw)["inputs"], dtype, "x")
        except InvalidArgument:
            return InvalidArgument
        return array.dtype, array.shape, array.tobytes()

    with np.errstate(all="ignore"):
        assert convert(fast) == convert(plain)


def test_dense_arrays_at_every_tensor_position() -> None:
    images = np.random.default_rng(0).uniform(0, 255, size=(4, 28, 28, 1)).astype(np.float32)
    rows = images.tolist()
    bodies = {
        "instances": {"instances": rows},
        "inputs": {"inputs": rows},
        "named inputs": {"signature_name": "serving_default", "inputs": {"image": rows}},
        "named rows": {"instances": [{"image": row} for row in rows]},
    }
    for form, body in bodies.items():
        parsed = codec.loads(
            json.dumps(body, indent=2 if form == "inputs" else None).encode(), dense_arrays=True
        )
        if form == "named rows":
            values = [row["image"] for row in parsed["instances"]]
            assert all(isinstance(v, codec.NumberArray) for v in values)
            array = codec.json_rows_to_numpy(values, F32, "image")
        else:
            value = parsed["inputs"]["image"] if form == "named inputs" else parsed[form]
            assert isinstance(value, codec.NumberArray), form
            array = codec.json_to_numpy(value, F32, "image")
        assert array.dtype == np.float32 and np.array_equal(array, images), form


def test_named_rows_mixing_dense_and_short_arrays() -> None:
    big = np.arange(2000, dtype=np.float32).reshape(2, 1000).tolist()
    rows = [{"x": big}, {"x": [[1] * 1000, [2] * 1000]}]  # the second too short for the fast path
    raw = json.dumps({"instances": rows}, separators=(",", ":")).encode()
    parsed = codec.loads(raw, dense_arrays=True, dense_min_bytes=5000)
    values = [row["x"] for row in parsed["instances"]]
    assert isinstance(values[0], codec.NumberArray) and isinstance(values[1], list)
    array = codec.json_rows_to_numpy(values, F32, "x")
    assert array.shape == (2, 2, 1000) and array[1, 1, 0] == 2.0
    ragged = [values[0], codec.NumberArray([1.0], (1,))]
    with pytest.raises(InvalidArgument, match="cannot read"):
        codec.json_rows_to_numpy(ragged, F32, "x")


@pytest.mark.parametrize(
    ("structure", "shape"),
    [
        (b"[]", (1,)),
        (b"[,,]", (3,)),
        (b"[[,,],[,,]]", (2, 3)),
        (b"[[[]],[[]]]", (2, 1, 1)),
        (b"[[,],[,,]]", None),
        (b"[[,],,[,]]", None),
        (b"[[,],[,]],", None),
        (b"[[],[[]]]", None),
        (b",[]", None),
        (b"[" * 33 + b"]" * 33, None),
    ],
)
def test_regular_shape(structure: bytes, shape: tuple[int, ...] | None) -> None:
    assert codec._regular_shape(structure) == shape


@pytest.mark.parametrize(
    "text",
    [
        b"[[1]2]",  # a number after a closing bracket
        b"[1[2]]",  # ... before an opening one
        b"[[1,]2,[3,4]]",
        b"[[1, 2], [3 4]]",
        b"[[01, 2], [3, 4]]",
        b"[[1, 2], [3, 4],]",
        b'[[1, 2], [3, "4"]]',
        b"[[1, 2], [3, true]]",
        b"[[NaN, 2], [3, 4]]",
        b"[[1, 2], [3, 4]",
    ],
)
def test_what_is_not_a_dense_array(text: bytes) -> None:
    assert codec._dense_array(text) is None


def test_json_errors_are_invalid_argument_with_a_clear_message() -> None:
    cases = {
        b'{"instances": [NaN]}': "NaN and Infinity are not JSON numbers",
        b'{"instances": [1, -Infinity]}': "NaN and Infinity are not JSON numbers",
        b'{"instances": [1e400]}': "infinity",
        b'{"instances": ["\\ud800"]}': "surrogate",
        b'{"instances": ["\xff"]}': "UTF-8",
        b'{"instances": ' + b"[" * 2000 + b"]" * 2000 + b"}": "depth",
        b"{not json": "not valid JSON",
    }
    for raw, message in cases.items():
        for dense in (False, True):
            with pytest.raises(InvalidArgument, match=message):
                codec.loads(raw, dense_arrays=dense, dense_min_bytes=1)


def test_integers_past_64_bits_read_as_floats_like_json_does() -> None:
    raw = b'{"inputs": [18446744073709551616, -9223372036854775809]}'
    for dense in (False, True):
        array = codec.json_to_numpy(
            codec.loads(raw, dense_arrays=dense, dense_min_bytes=1)["inputs"], F32, "x"
        )
        assert array.tolist() == np.asarray(json.loads(raw)["inputs"], np.float32).tolist()
    with pytest.raises(InvalidArgument, match="cannot read"):
        codec.json_to_numpy(codec.loads(raw)["inputs"], np.dtype(np.int64), "x")


def test_a_client_string_never_stands_for_a_dense_array() -> None:
    lookalike = codec._PLACEHOLDER[:-4] + "0"  # a guess at the placeholder
    raw = json.dumps({"signature_name": lookalike, "inputs": list(range(2000))}).encode()
    body = codec.loads(raw, dense_arrays=True)
    assert body["signature_name"] == lookalike and isinstance(body["inputs"], codec.NumberArray)


def test_the_garbage_collector_is_held_off_only_while_parsing() -> None:
    assert gc.isenabled()
    codec.loads(b'{"a": [[1], [2]]}')
    with pytest.raises(InvalidArgument):
        codec.loads(b"{bad")
    assert gc.isenabled()
    gc.disable()
    try:
        codec.loads(b'{"a": [[1], [2]]}')
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0.1, 1 / 3], [2.5, 1e-8]], np.float32),
        np.array([[0.1, 1 / 3], [2.5, 1e-8]], np.float32).T,  # not C-contiguous
        np.array([1.5, -2.0], dtype=">f4"),  # not native-endian
        np.array([1, 2], np.float16),
        np.array([0.1, 1e300], np.float64),
        np.array([[1, -2]], np.int64),
        np.array([255], np.uint8),
        np.array([True, False]),
        np.zeros((0, 10), np.float32),
        np.zeros((2, 0), np.float32),
        np.array(2.5, np.float32),  # rank 0
        np.array([b"\xff\x00", b"ok"], dtype=object),
    ],
)
def test_json_ready_writes_what_numpy_to_json_writes(array: np.ndarray) -> None:
    written = orjson.loads(
        orjson.dumps(codec.json_ready(array, binary=True), option=orjson.OPT_SERIALIZE_NUMPY)
    )
    expected = codec.numpy_to_json(array, binary=True)
    if array.dtype.kind == "f":
        # float32 is written as its shortest float32 repr: equal once read back as float32
        np.testing.assert_array_equal(np.asarray(written, array.dtype), np.asarray(expected, array.dtype))
        assert np.asarray(written).shape == np.asarray(expected).shape
    else:
        assert written == expected


def test_non_finite_outputs_are_written_as_json_writes_them() -> None:
    from serving.protocol.rest.app import _predict_response

    outputs = {"probabilities": np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)}
    assert (
        _predict_response(outputs, row_format=True).body
        == b'{"predictions": [[NaN, Infinity, -Infinity, 0.5]]}'
    )
    outputs = {"probabilities": np.array([[0.25, 0.5]], np.float32), "classes": np.array([[3]], np.int64)}
    body = _predict_response(outputs, row_format=True).body
    assert json.loads(body) == {"predictions": [{"probabilities": [0.25, 0.5], "classes": [3]}]}
    assert json.loads(_predict_response(outputs, row_format=False).body) == {
        "outputs": {"probabilities": [[0.25, 0.5]], "classes": [[3]]}
    }
