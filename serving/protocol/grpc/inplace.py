"""Predict and ModelInfer requests whose big tensors are read in place, from gRPC's bytes.

Parsing a `PredictRequest` with protobuf copies each `tensor_content` into the message, and reading
the field copies it again into a new `bytes`: for a 224x224x3 float image that is 1.2 MB of copying
per request on the event loop, on data fresh from the socket (not in any cache). `parse_predict`
walks the top level of the request's wire bytes instead, takes every large `tensor_content` of an
`inputs` entry as a view into those bytes, and lets protobuf parse the rest (model spec, shapes,
dtypes: a few hundred bytes). Only the layout every protobuf encoder writes is walked this way (map
entries as key then value, one `tensor_content` per tensor); anything else, malformed bytes
included, is parsed whole by protobuf as before, so its answers and errors do not change.
`parse_model_infer` does the same for the Open Inference Protocol's `raw_input_contents`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from serving.codec import length_delimited
from serving.proto import apis_pb2, inference_pb2

IN_PLACE_MIN_BYTES = 64 * 1024  # tensor_content payloads from this size on are read in place

# Wire types (protobuf encoding): varint, 64-bit, length-delimited, 32-bit.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_INPUTS = 2  # PredictRequest.inputs: map<string, TensorProto>
_KEY, _VALUE = 1, 2  # a map entry's fields
_TENSOR_CONTENT = 4  # TensorProto.tensor_content
_RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents: repeated bytes, one per input
_INPUTS_TAG = bytes([_INPUTS << 3 | _LEN])
_VALUE_TAG = bytes([_VALUE << 3 | _LEN])


@dataclass(slots=True)
class PredictCall:
    """A parsed Predict request: the message, less the payloads read in place. Also the request
    type `rpc` is given for Predict: it parses with `FromString` and names the message's DESCRIPTOR."""

    DESCRIPTOR: ClassVar[Any] = apis_pb2.PredictRequest.DESCRIPTOR

    message: apis_pb2.PredictRequest
    contents: Mapping[str, memoryview]  # input name -> its tensor_content, a view into the request

    @property
    def model_spec(self) -> apis_pb2.ModelSpec:
        return self.message.model_spec

    @staticmethod
    def FromString(raw: bytes) -> PredictCall:  # the name `rpc` calls
        return parse_predict(raw)


_NOTHING_IN_PLACE: Mapping[str, memoryview] = MappingProxyType({})


_Split = TypeVar("_Split", bound=tuple[bytes, Any])


class _Irregular(Exception):
    """The bytes are not in the plain layout: protobuf parses them whole."""


def parse_predict(raw: bytes) -> PredictCall:
    """The request in `raw`; raises protobuf's DecodeError for bytes that are no PredictRequest."""
    split = _in_place(raw, _split) if len(raw) >= IN_PLACE_MIN_BYTES else None  # (small: no walk to try)
    if split is not None and split[1]:
        return PredictCall(apis_pb2.PredictRequest.FromString(split[0]), split[1])
    return PredictCall(apis_pb2.PredictRequest.FromString(raw), _NOTHING_IN_PLACE)


def parse_model_infer(raw: bytes) -> tuple[inference_pb2.ModelInferRequest, list[memoryview] | None]:
    """The request in `raw` and its raw_input_contents read in place (None: they are the message's
    own, as when none is large); raises protobuf's DecodeError for bytes that are no ModelInferRequest."""
    split = _in_place(raw, _split_raw_inputs)
    if split is not None and any(len(content) >= IN_PLACE_MIN_BYTES for content in split[1]):
        return inference_pb2.ModelInferRequest.FromString(split[0]), split[1]
    return inference_pb2.ModelInferRequest.FromString(raw), None


def _in_place(raw: bytes, split: Callable[[bytes], _Split]) -> _Split | None:
    """split(raw): the bytes for protobuf and the payloads read in place; None when `raw` is small
    or not in the plain layout."""
    if len(raw) < IN_PLACE_MIN_BYTES:
        return None
    try:
        return split(raw)
    except _Irregular:
        return None


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Irregular


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field in buf[pos:end]."""
    while pos < end:
        start = pos
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if wire == _LEN:
            length, pos = _varint(buf, pos, end)
            value_end = pos + length
        elif wire == _VARINT:
            value_end = _varint(buf, pos, end)[1]
        elif wire == _I64:
            value_end = pos + 8
        elif wire == _I32:
            value_end = pos + 4
        else:  # groups (deprecated) or a broken tag
            raise _Irregular
        if field == 0 or value_end > end:
            raise _Irregular
        yield field, wire, start, pos, value_end
        pos = value_end


def _split(raw: bytes) -> tuple[bytes, dict[str, memoryview]]:
    """The request's bytes less its large input payloads, and those payloads as views."""
    view = memoryview(raw)
    out = bytearray()
    contents: dict[str, memoryview] = {}
    for field, wire, start, value_start, value_end in _fields(raw, 0, len(raw)):
        if field == _INPUTS and wire == _LEN:
            key, entry, payload = _split_entry(raw, value_start, value_end)
            if payload is not None:
                out += length_delimited(_INPUTS_TAG, entry)
                contents[key] = view[payload[0] : payload[1]]
                continue
            contents.pop(key, None)  # a later entry for the same name replaces an earlier one
        out += view[start:value_end]
    return bytes(out), contents


def _split_entry(raw: bytes, start: int, end: int) -> tuple[str, bytes, tuple[int, int] | None]:
    """(name, entry bytes without the payload, payload range) of one `inputs` entry; the range is
    None when the tensor has no large tensor_content (the entry is then kept as it is)."""
    fields = list(_fields(raw, start, end))
    if len(fields) != 2 or fields[0][:2] != (_KEY, _LEN) or fields[1][:2] != (_VALUE, _LEN):
        raise _Irregular
    (_, _, _, key_start, key_end), (_, _, value_field, tensor_start, tensor_end) = fields
    try:
        key = raw[key_start:key_end].decode("utf-8")
    except UnicodeDecodeError:
        raise _Irregular from None
    contents = [f for f in _fields(raw, tensor_start, tensor_end) if f[0] == _TENSOR_CONTENT]
    if len(contents) != 1 or contents[0][1] != _LEN or contents[0][4] - contents[0][3] < IN_PLACE_MIN_BYTES:
        return key, b"", None
    _, _, content_start, payload_start, payload_end = contents[0]
    tensor = raw[tensor_start:content_start] + raw[payload_end:tensor_end]
    entry = raw[start:value_field] + length_delimited(_VALUE_TAG, tensor)
    return key, entry, (payload_start, payload_end)


def _split_raw_inputs(raw: bytes) -> tuple[bytes, list[memoryview]]:
    """The request's bytes less every raw_input_contents entry, and those entries in order as views."""
    view = memoryview(raw)
    out = bytearray()
    contents: list[memoryview] = []
    for field, wire, start, value_start, value_end in _fields(raw, 0, len(raw)):
        if field == _RAW_INPUT_CONTENTS:
            if wire != _LEN:
                raise _Irregular
            contents.append(view[value_start:value_end])
        else:
            out += view[start:value_end]
    return bytes(out), contents
