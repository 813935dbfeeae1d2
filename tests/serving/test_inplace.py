"""`parse_predict` and `parse_model_infer` read large payloads in place and mean what protobuf means.

For every request the in-place parse must give what `PredictRequest.FromString` gives: the same
message once each payload is put back, the same arrays, the same DecodeError for broken bytes. The
cases are built the ways clients write requests, plus concatenations (protobuf merges concatenated
messages: a later map entry replaces an earlier one of the same name, a later tensor_content wins).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import codec
from serving.errors import InvalidArgument
from serving.proto import apis_pb2, inference_pb2, tensor_pb2
from serving.protocol.grpc.inplace import IN_PLACE_MIN_BYTES, parse_model_infer, parse_predict

BIG = IN_PLACE_MIN_BYTES // 4  # float32 elements in one in-place payload


def request(inputs: dict[str, np.ndarray], name: str = "catdog", version: int | None = None) -> apis_pb2.PredictRequest:
    message = apis_pb2.PredictRequest()
    message.model_spec.name = name
    message.model_spec.signature_name = "serving_default"
    if version is not None:
        message.model_spec.version.value = version
    for key, value in inputs.items():
        codec.from_numpy(value, message.inputs[key])
    message.output_filter.append("probabilities")
    return message


def assert_same_as_protobuf(raw: bytes) -> None:
    """parse_predict(raw) answers what protobuf's parse answers, payloads included."""
    whole = apis_pb2.PredictRequest.FromString(raw)
    call = parse_predict(raw)
    rebuilt = apis_pb2.PredictRequest()
    rebuilt.CopyFrom(call.message)
    for key, content in call.contents.items():
        assert not rebuilt.inputs[key].tensor_content  # the payload is not in the message twice
        rebuilt.inputs[key].tensor_content = bytes(content)
    assert rebuilt == whole
    for key, tensor in whole.inputs.items():
        expected = decoded(tensor, key, None)
        got = decoded(call.message.inputs[key], key, call.contents.get(key))
        if isinstance(expected, str):  # the same InvalidArgument (a corrupted dtype or byte count)
            assert got == expected
        else:
            assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


def decoded(tensor: tensor_pb2.TensorProto, name: str, content: memoryview | None) -> np.ndarray | str:
    """The array, or the InvalidArgument's message."""
    try:
        return codec.to_numpy(tensor, name, content=content)
    except InvalidArgument as error:
        return error.message


def pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * 255


def test_a_large_input_is_a_view_into_the_request_bytes() -> None:
    image = pixels((1, 224, 224, 3))
    raw = request({"image": image}).SerializeToString()
    call = parse_predict(raw)
    assert set(call.contents) == {"image"}
    array = codec.to_numpy(call.message.inputs["image"], "image", content=call.contents["image"])
    np.testing.assert_array_equal(array, image)
    owner = array.base
    while isinstance(owner, np.ndarray):  # (reshape views the flat array)
        owner = owner.base
    assert isinstance(owner, memoryview) and owner.obj is raw  # no copy of the pixels
    assert not array.flags.writeable
    assert call.model_spec.name == "catdog" and list(call.message.output_filter) == ["probabilities"]
    assert_same_as_protobuf(raw)


def test_small_inputs_and_small_requests_are_parsed_by_protobuf() -> None:
    small = request({"image": pixels((1, 28, 28, 1))}).SerializeToString()
    assert parse_predict(small).contents == {}
    # A large request whose only large part is not tensor_content (typed values): nothing in place.
    typed = request({})
    codec.from_numpy(pixels((1, BIG)), typed.inputs["image"], tensor_content=False)
    raw = typed.SerializeToString()
    assert len(raw) >= IN_PLACE_MIN_BYTES and parse_predict(raw).contents == {}
    assert_same_as_protobuf(raw)


def test_several_inputs_mixed_sizes_and_dtypes() -> None:
    message = request(
        {
            "image": pixels((2, 128, 128, 3)),
            "mask": np.random.default_rng(1).integers(0, 2, size=(2, BIG), dtype=np.int64),
            "scale": np.array([[0.5], [2.0]], dtype=np.float32),  # small: stays in the message
            "text": np.array([b"a cat", b"a dog"], dtype=object),
        },
        version=3,
    )
    raw = message.SerializeToString()
    assert set(parse_predict(raw).contents) == {"image", "mask"}
    assert_same_as_protobuf(raw)


def test_concatenated_messages_merge_as_protobuf_merges_them() -> None:
    first = request({"image": pixels((1, BIG + 1), seed=1), "other": pixels((1, BIG), seed=2)})
    second = request({"image": pixels((1, BIG + 1), seed=3)}, name="other-model", version=7)
    raw = first.SerializeToString() + second.SerializeToString()
    assert_same_as_protobuf(raw)  # image from the second, other from the first, the second's spec
    # A later small entry replaces an earlier large one of the same name.
    small_later = request({"image": pixels((1, 4))})
    assert_same_as_protobuf(first.SerializeToString() + small_later.SerializeToString())
    # Two tensor_content fields in one tensor: protobuf keeps the last.
    tensor = tensor_pb2.TensorProto(dtype=tensor_pb2.DT_FLOAT)
    tensor.tensor_shape.dim.add(size=BIG)
    twice = tensor.SerializeToString()
    twice += tensor_pb2.TensorProto(tensor_content=pixels((BIG,), 4).tobytes()).SerializeToString()
    twice += tensor_pb2.TensorProto(tensor_content=pixels((BIG,), 5).tobytes()).SerializeToString()
    entry = field(1, b"image") + field(2, twice)  # (a message would re-encode the tensor with one)
    raw = request({}).SerializeToString() + field(2, entry)
    assert len(apis_pb2.PredictRequest.FromString(raw).inputs["image"].tensor_content) == BIG * 4
    assert_same_as_protobuf(raw)


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    size, length = bytearray(), len(payload)
    while length >= 0x80:
        size.append(length & 0x7F | 0x80)
        length >>= 7
    size.append(length)
    return bytes([number << 3 | 2]) + bytes(size) + payload


def test_broken_bytes_fail_as_protobuf_fails() -> None:
    raw = request({"image": pixels((1, BIG * 2))}).SerializeToString()
    for cut in (len(raw) - 1, len(raw) // 2, 40, 3):
        with pytest.raises(DecodeError):
            apis_pb2.PredictRequest.FromString(raw[:cut])
        with pytest.raises(DecodeError):
            parse_predict(raw[:cut])
    # An invalid UTF-8 name in a large request: protobuf's error, not a crash or a silent pass.
    message = request({"image": pixels((1, BIG))})
    bad = message.SerializeToString().replace(b"image", b"im\xffge", 1)
    with pytest.raises(DecodeError):
        parse_predict(bad)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([0, 3, BIG - 1, BIG, BIG + 7]), min_size=1, max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), max_size=3),
    concatenate=st.booleans(),
)
def test_any_request_or_corruption_of_one_parses_as_protobuf_parses_it(
    sizes: list[int], flips: list[tuple[int, int]], concatenate: bool
) -> None:
    inputs = {f"in{i}": pixels((1, size), seed=i) for i, size in enumerate(sizes)}
    raw = bytearray(request(inputs).SerializeToString())
    if concatenate:
        raw += request({"in0": pixels((1, sizes[0]), seed=9)}, version=2).SerializeToString()
    assert_fails_or_parses_as_protobuf(corrupt(raw, flips), apis_pb2.PredictRequest, parse_predict, assert_same_as_protobuf)


def corrupt(raw: bytearray, flips: list[tuple[int, int]]) -> bytes:
    """XOR a few bytes within 64 of either end, where the tags and lengths of these requests are."""
    for where, xor in flips:
        index = where % min(len(raw), 64) if where % 2 else len(raw) - 1 - where % min(len(raw), 64)
        raw[index] ^= xor
    return bytes(raw)


def assert_fails_or_parses_as_protobuf(
    data: bytes, message_type: Any, parse: Callable[[bytes], object], assert_same: Callable[[bytes], object]
) -> None:
    """Bytes protobuf refuses are refused with its DecodeError; the others parse to the same request."""
    try:
        message_type.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse(data)
        return
    assert_same(data)


# -- ModelInfer (Open Inference Protocol): raw_input_contents, one per input ---------------------


def infer_request(*contents: bytes) -> inference_pb2.ModelInferRequest:
    message = inference_pb2.ModelInferRequest(model_name="catdog", model_version="1", id="req-1")
    for index, content in enumerate(contents):
        message.inputs.add(name=f"in{index}", datatype="FP32", shape=[1, len(content) // 4])
        message.raw_input_contents.append(content)
    message.outputs.add(name="probabilities")
    return message


def assert_infer_same_as_protobuf(raw: bytes) -> list[memoryview] | None:
    whole = inference_pb2.ModelInferRequest.FromString(raw)
    message, contents = parse_model_infer(raw)
    if contents is None:
        assert message == whole
        return None
    assert not message.raw_input_contents  # every entry is read in place, in order
    assert [bytes(content) for content in contents] == list(whole.raw_input_contents)
    message.raw_input_contents.extend(bytes(content) for content in contents)
    assert message == whole
    return contents


def test_model_infer_raw_contents_are_views_in_input_order() -> None:
    big, small = pixels((BIG + 3,), 1).tobytes(), pixels((5,), 2).tobytes()
    raw = infer_request(small, big, small[:8]).SerializeToString()
    contents = assert_infer_same_as_protobuf(raw)
    assert contents is not None and [len(c) for c in contents] == [len(small), len(big), 8]
    assert all(content.obj is raw for content in contents)
    # Only small entries, or a small request: protobuf's own parse.
    assert parse_model_infer(infer_request(small, small).SerializeToString())[1] is None
    # Concatenated messages append their repeated entries, as protobuf does.
    assert_infer_same_as_protobuf(raw + infer_request(big).SerializeToString())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([0, 3, BIG - 1, BIG, BIG + 7]), min_size=1, max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), max_size=3),
)
def test_any_model_infer_or_corruption_of_one_parses_as_protobuf_parses_it(
    sizes: list[int], flips: list[tuple[int, int]]
) -> None:
    raw = bytearray(infer_request(*(pixels((size,), i).tobytes() for i, size in enumerate(sizes))).SerializeToString())
    assert_fails_or_parses_as_protobuf(
        corrupt(raw, flips), inference_pb2.ModelInferRequest, parse_model_infer, assert_infer_same_as_protobuf
    )
