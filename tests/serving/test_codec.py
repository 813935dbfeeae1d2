"""Codec: TensorProto <-> numpy round trips for every dtype, TF's padding rule, and size limits."""

from __future__ import annotations

import numpy as np
import pytest

from serving import codec
from serving.errors import InvalidArgument
from serving.proto import tensor_pb2

NUMERIC = [
    np.float32,
    np.float64,
    np.float16,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
    np.complex64,
    np.complex128,
]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_round_trip_through_tensor_content(dtype: type) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 2)) * 50).astype(dtype)
    proto = codec.from_numpy(array)
    assert proto.tensor_content  # the fast path, never per-element fields
    back = codec.to_numpy(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_round_trip_strings_and_unicode() -> None:
    array = np.array([[b"a", b"\xff\x00binary"], ["caf\u00e9".encode(), b""]], dtype=object)
    proto = codec.from_numpy(array)
    assert proto.dtype == tensor_pb2.DT_STRING and list(proto.string_val)[1] == b"\xff\x00binary"
    back = codec.to_numpy(proto)
    assert back.shape == (2, 2) and back.tolist() == array.tolist()
    # numpy str arrays are encoded as UTF-8
    assert codec.to_numpy(codec.from_numpy(np.array(["caf\u00e9"]))).tolist() == ["caf\u00e9".encode()]


@pytest.mark.parametrize(
    ("dtype", "field", "values", "expected"),
    [
        (
            tensor_pb2.DT_FLOAT,
            "float_val",
            [1.5, 2.5, 3.5, 4.5],
            np.array([[1.5, 2.5], [3.5, 4.5]], np.float32),
        ),
        (tensor_pb2.DT_INT32, "int_val", [7], np.full((2, 2), 7, np.int32)),  # short list: last value repeats
        (tensor_pb2.DT_INT64, "int64_val", [], np.zeros((2, 2), np.int64)),  # empty: zeros
        (tensor_pb2.DT_UINT8, "int_val", [1, 255], np.array([[1, 255], [255, 255]], np.uint8)),
        (tensor_pb2.DT_BOOL, "bool_val", [True, False, True, False], np.array([[1, 0], [1, 0]], bool)),
        (tensor_pb2.DT_DOUBLE, "double_val", [0.25] * 4, np.full((2, 2), 0.25)),
    ],
)
def test_typed_value_fields_follow_tensorflow(
    dtype: int, field: str, values: list, expected: np.ndarray
) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    getattr(proto, field).extend(values)
    np.testing.assert_array_equal(codec.to_numpy(proto), expected)
    assert codec.to_numpy(proto).dtype == expected.dtype


def test_half_values_are_bit_patterns() -> None:
    proto = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_HALF)
    proto.tensor_shape.dim.add(size=2)
    proto.half_val.extend(np.array([1.0, -2.5], np.float16).view(np.uint16).tolist())
    np.testing.assert_array_equal(codec.to_numpy(proto), np.array([1.0, -2.5], np.float16))


def _proto(shape: list[int], dtype: int = tensor_pb2.DT_FLOAT) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_oversized_shape_is_refused_before_allocation() -> None:
    proto = _proto([1_000_000, 1_000_000])
    proto.float_val.append(1.0)
    with pytest.raises(InvalidArgument, match="over the"):
        codec.to_numpy(proto, "image", max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: setattr(p, "tensor_content", b"\x00" * 7), "tensor_content has 7 bytes"),
        (lambda p: p.float_val.extend([1.0] * 5), "5 values for shape"),
        (lambda p: p.tensor_shape.dim.add(size=-3), "negative dimension"),
        (lambda p: setattr(p.tensor_shape, "unknown_rank", True), "unknown rank"),
        (lambda p: setattr(p, "dtype", tensor_pb2.DT_RESOURCE), "unsupported tensor dtype DT_RESOURCE"),
        (lambda p: setattr(p, "dtype", tensor_pb2.DT_BFLOAT16), "unsupported tensor dtype DT_BFLOAT16"),
    ],
)
def test_malformed_tensors_are_invalid_argument(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    proto = _proto([2, 2])
    mutate(proto)
    with pytest.raises(InvalidArgument, match=message):
        codec.to_numpy(proto, "x")


def test_string_tensor_cannot_use_tensor_content() -> None:
    proto = _proto([1], tensor_pb2.DT_STRING)
    proto.tensor_content = b"abc"
    with pytest.raises(InvalidArgument, match="cannot use tensor_content"):
        codec.to_numpy(proto)


def test_json_values_and_b64() -> None:
    floats = codec.json_to_numpy([[1, 2], [3, 4]], np.dtype(np.float32), "x")
    assert floats.dtype == np.float32 and floats.shape == (2, 2)
    strings = codec.json_to_numpy([{"b64": "/wA="}, "text"], codec.STRING, "s")
    assert strings.tolist() == [b"\xff\x00", b"text"]
    assert codec.numpy_to_json(strings, binary=True) == [{"b64": "/wA="}, {"b64": "dGV4dA=="}]
    assert codec.numpy_to_json(np.array([b"ok"], dtype=object)) == ["ok"]
    for bad, match in [
        ([[1, 2], [3]], "cannot read"),
        (["a", "b"], "cannot read"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            codec.json_to_numpy(bad, np.dtype(np.float32), "x")
    for bad, match in [
        ([{"b64": "***"}], "invalid base64"),
        ([{"b64": "AA==", "x": 1}], "must be"),
        ([1], "expected strings"),
        ([["a"], []], "ragged"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            codec.json_to_numpy(bad, codec.STRING, "s")


def test_from_numpy_fills_a_given_proto_in_place() -> None:
    from serving.proto import apis_pb2

    response = apis_pb2.PredictResponse()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    filled = codec.from_numpy(array, response.outputs["probabilities"])
    assert filled is response.outputs["probabilities"]
    np.testing.assert_array_equal(codec.to_numpy(response.outputs["probabilities"]), array)


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
     np.uint32, np.uint64, np.bool_, np.complex64, np.complex128],
)  # fmt: skip
def test_typed_fields_round_trip_every_dtype(dtype: type) -> None:
    """TF Serving's default Predict answer (`AsProtoField`): values in float_val, int_val, ..."""
    values = (np.arange(12).reshape(3, 4) % 5 * (1 if np.dtype(dtype).kind in "ub" else -1)).astype(dtype)
    proto = tensor_pb2.TensorProto.FromString(codec.from_numpy(values, tensor_content=False).SerializeToString())
    assert not proto.tensor_content
    back = codec.to_numpy(proto)
    assert back.dtype == values.dtype and back.shape == (3, 4)
    np.testing.assert_array_equal(back, values)


def test_float_val_holds_the_values_themselves() -> None:
    proto = codec.from_numpy(np.array([3.0, -0.5], np.float32), tensor_content=False)
    assert list(proto.float_val) == [3.0, -0.5] and [d.size for d in proto.tensor_shape.dim] == [2]


def test_json_features_are_typed_by_their_json_values() -> None:
    assert codec.json_feature("x", 2.0).dtype == np.float32
    assert codec.json_feature("x", [1, True]).tolist() == [1, 1]  # integers and booleans: int64
    assert codec.json_feature("x", [1, 2.5]).tolist() == [1.0, 2.5]
    assert codec.json_feature("x", ["a", {"b64": "AAE="}]).tolist() == [b"a", b"\x00\x01"]
    assert codec.json_feature("x", [[1.0], [2.0]]).tolist() == [1.0, 2.0]
    with pytest.raises(InvalidArgument, match="unexpected JSON type: null"):
        codec.json_feature("x", [1.0, None])
    with pytest.raises(InvalidArgument, match="expecting type: bytes"):
        codec.json_feature("x", ["a", 1])
    with pytest.raises(InvalidArgument, match="Only int64_t"):
        codec.json_feature("x", 2**64)


def test_example_bytes_is_a_tf_example() -> None:
    from serving.proto import example_pb2

    raw = codec.example_bytes(
        {"x": np.array([2.0], np.float32), "n": np.array([3], np.int64), "s": np.array([b"a"], object)}
    )
    features = example_pb2.Example.FromString(raw).features.feature
    assert list(features["x"].float_list.value) == [2.0]
    assert list(features["n"].int64_list.value) == [3]
    assert list(features["s"].bytes_list.value) == [b"a"]


@pytest.mark.parametrize("tensor_content", [True, False])
@pytest.mark.parametrize(
    "value",
    [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(2.5), np.zeros((0, 4), np.int64),
     np.array([True, False]), np.array([[1 + 2j]], np.complex64), np.arange(4, dtype=np.uint16)],
)  # fmt: skip
def test_encoding_equals_the_message_built_field_by_field(value: np.ndarray, tensor_content: bool) -> None:
    """`from_numpy` writes dtype and shape as cached wire bytes: the message must be exactly the one
    built by setting its fields."""
    expected = tensor_pb2.TensorProto(dtype=codec.data_type(value.dtype))  # type: ignore[arg-type]
    expected.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=d) for d in value.shape)
    if tensor_content:
        expected.tensor_content = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
    elif value.dtype.kind == "c":
        expected.scomplex_val.extend(value.view(np.float32).reshape(-1).tolist())
    else:
        getattr(expected, codec._VALUE_FIELD[expected.dtype]).extend(value.reshape(-1).tolist())
    assert codec.from_numpy(value, tensor_content=tensor_content) == expected


# -- PredictResponse written to the wire directly ------------------------------------------------

_OUTPUTS = {
    "probabilities": np.arange(20, dtype=np.float32).reshape(2, 10) / 7,
    "double": np.array([[1e300, -0.0]]),
    "ids": np.array([[3, -1 << 40]], dtype=np.int64),
    "small ints": np.array([1, 2, 255], dtype=np.uint8),
    "flags": np.array([True, False]),
    "half": np.array([0.5, 65504], dtype=np.float16),
    "complex": np.array([1 + 2j], dtype=np.complex64),
    "labels": np.array([b"cat", "dög".encode()], dtype=object),
    "Fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "empty": np.zeros((0, 10), np.float32),
    "ümlaut": np.ones((1, 1), np.float32),
    "long": np.ones((1, 300), np.float64),  # a field over 127 bytes: a two-byte length
}


@pytest.mark.parametrize("tensor_content", [False, True])
@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_predict_response_bytes_parse_as_the_message_built_field_by_field(name: str, tensor_content: bool) -> None:
    from types import SimpleNamespace

    from serving.proto import apis_pb2
    from serving.protocol import messages

    version = SimpleNamespace(name="digits", version=7)
    outputs = {name: _OUTPUTS[name], "second": np.ones((2, 1), np.float32)}
    expected = apis_pb2.PredictResponse(model_spec=messages.model_spec(version, "serving_default"))  # type: ignore[arg-type]
    for key, value in outputs.items():
        codec.from_numpy(value, expected.outputs[key], tensor_content=tensor_content)
    wire = messages.predict_response(version, "serving_default", outputs, tensor_content)  # type: ignore[arg-type]
    assert apis_pb2.PredictResponse.FromString(wire) == expected
