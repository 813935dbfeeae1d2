"""Wire <-> numpy conversion, in one place: `TensorProto` for gRPC and JSON values for REST.

Numeric tensors travel as `tensor_content` (row-major little-endian bytes) and are read with
`np.frombuffer`, never element by element. The typed repeated fields (`float_val`, ...) are accepted
too, with TensorFlow's rule that a short list is padded with its last value, so requests written
by hand (`float_val: [0.5]` with shape [1, 3]) mean what they mean to TF Serving. Every size is
checked before anything is allocated, so a 20-byte request cannot ask for a 4 GB tensor.

Strings (DT_STRING) are numpy object arrays of `bytes`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gc
import itertools
import math
import secrets
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidArgument
from serving.proto import example_pb2, tensor_pb2

DataType = tensor_pb2.DataType
STRING = np.dtype(object)
FLOAT16 = np.dtype(np.float16)
MAX_RANK = 32  # numpy 1.x allows 32 dims (numpy 2: 64); no served model takes more than 5

# DataType -> numpy dtype, for the dtypes the server can carry.
_NUMPY_OF: dict[int, np.dtype] = {
    tensor_pb2.DT_FLOAT: np.dtype(np.float32),
    tensor_pb2.DT_DOUBLE: np.dtype(np.float64),
    tensor_pb2.DT_HALF: np.dtype(np.float16),
    tensor_pb2.DT_INT8: np.dtype(np.int8),
    tensor_pb2.DT_INT16: np.dtype(np.int16),
    tensor_pb2.DT_INT32: np.dtype(np.int32),
    tensor_pb2.DT_INT64: np.dtype(np.int64),
    tensor_pb2.DT_UINT8: np.dtype(np.uint8),
    tensor_pb2.DT_UINT16: np.dtype(np.uint16),
    tensor_pb2.DT_UINT32: np.dtype(np.uint32),
    tensor_pb2.DT_UINT64: np.dtype(np.uint64),
    tensor_pb2.DT_BOOL: np.dtype(np.bool_),
    tensor_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    tensor_pb2.DT_COMPLEX128: np.dtype(np.complex128),
    tensor_pb2.DT_STRING: STRING,
}
_DTYPE_OF: dict[np.dtype, int] = {v: k for k, v in _NUMPY_OF.items()}
# The same by the dtype's `str` ('<f4'): a dict keyed by a short string is found without hashing
# a numpy dtype (which costs on the response path, see `data_type`).
_DTYPE_OF_STR: dict[str, int] = {dtype.str: code for dtype, code in _DTYPE_OF.items()}
assert len(_DTYPE_OF_STR) == len(_DTYPE_OF)
# What tensor_content holds for each numeric DataType: its little-endian bytes.
_CONTENT_DTYPES: dict[int, np.dtype] = {k: v.newbyteorder("<") for k, v in _NUMPY_OF.items() if v != STRING}

# Which repeated field carries each dtype when tensor_content is empty.
_VALUE_FIELD: dict[int, str] = {
    tensor_pb2.DT_FLOAT: "float_val",
    tensor_pb2.DT_DOUBLE: "double_val",
    tensor_pb2.DT_HALF: "half_val",
    tensor_pb2.DT_INT8: "int_val",
    tensor_pb2.DT_INT16: "int_val",
    tensor_pb2.DT_INT32: "int_val",
    tensor_pb2.DT_UINT8: "int_val",
    tensor_pb2.DT_UINT16: "int_val",
    tensor_pb2.DT_INT64: "int64_val",
    tensor_pb2.DT_UINT32: "uint32_val",
    tensor_pb2.DT_UINT64: "uint64_val",
    tensor_pb2.DT_BOOL: "bool_val",
    tensor_pb2.DT_COMPLEX64: "scomplex_val",
    tensor_pb2.DT_COMPLEX128: "dcomplex_val",
    tensor_pb2.DT_STRING: "string_val",
}

# The wire tag of each typed field as one packed (length-delimited) record.
_PACKED_TAG: dict[str, bytes] = {
    field.name: bytes([field.number << 3 | 2]) for field in tensor_pb2.TensorProto.DESCRIPTOR.fields if field.number < 16
}


# Manifest / metadata dtype names ("float32", "string") <-> numpy.
def dtype_from_name(name: str) -> np.dtype:
    return STRING if name == "string" else np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype == STRING else dtype.name


def numpy_dtype(data_type: int) -> np.dtype:
    """The numpy dtype of a `DataType`, or InvalidArgument for one this server cannot carry."""
    try:
        return _NUMPY_OF[data_type]
    except KeyError:
        name = tensor_pb2.DataType.Name(data_type) if data_type in tensor_pb2.DataType.values() else data_type
        raise InvalidArgument(f"unsupported tensor dtype {name}") from None


def data_type(dtype: np.dtype) -> int:
    """The `DataType` of a numpy dtype (object arrays are DT_STRING)."""
    if isinstance(dtype, np.dtype):  # (the usual case, found by its `str`: see `_DTYPE_OF_STR`)
        code = _DTYPE_OF_STR.get(dtype.str)
        if code is not None:
            return code
    try:
        return _DTYPE_OF[np.dtype(dtype)]
    except KeyError:
        raise InvalidArgument(f"unsupported numpy dtype {dtype}") from None


def check_shape(shape: Sequence[int], itemsize: int, max_bytes: int, name: str) -> int:
    """Validate shape arithmetic before numpy sees it; returns the element count.

    Rejects negative dims, more than MAX_RANK dims, and shapes whose dims multiply past `max_bytes`
    even when another dim is 0 (numpy refuses such shapes with "array is too big" even for an empty
    array), so no later `reshape`/`empty` can fail on an overflow.
    """
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"input '{name}': rank {len(shape)} is over the limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': negative dimension in shape {list(shape)}")
    nonzero = math.prod(d for d in shape if d)  # Python ints: no overflow
    if nonzero * itemsize > max_bytes:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} needs {nonzero * itemsize} bytes"
            f"{' (ignoring its zero dims)' if 0 in shape else ''}, over the {max_bytes}-byte limit"
        )
    return math.prod(shape)


def _shape_of(proto: tensor_pb2.TensorProto, name: str) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"input '{name}': tensor_shape has unknown rank")
    return tuple(int(d.size) for d in proto.tensor_shape.dim)


def to_numpy(
    proto: tensor_pb2.TensorProto,
    name: str = "tensor",
    max_bytes: int = 1 << 30,
    content: bytes | memoryview | None = None,
) -> np.ndarray:
    """Decode a TensorProto; raises InvalidArgument for anything malformed or larger than max_bytes.

    `content`: the tensor's tensor_content when it was read apart from the message (a view into the
    request's bytes, see `serving.protocol.grpc.inplace`); None: the message's own."""
    if content is None:
        content = proto.tensor_content
    if content:
        # The hot path (numeric tensors in tensor_content): every dim positive and the byte count
        # exact, checked with the fewest Python steps; anything else takes the general path below.
        dtype = _CONTENT_DTYPES.get(proto.dtype)
        tensor_shape = proto.tensor_shape  # (once: each access makes a new wrapper)
        shape = tuple([d.size for d in tensor_shape.dim])
        if dtype is not None and shape and min(shape) > 0 and len(shape) <= MAX_RANK and not tensor_shape.unknown_rank:
            expected = math.prod(shape) * dtype.itemsize
            if expected == len(content) and expected <= max_bytes:
                # frombuffer gives a read-only view of the message's bytes: no copy.
                return np.frombuffer(content, dtype=dtype).reshape(shape)
    dtype = numpy_dtype(proto.dtype)
    shape = _shape_of(proto, name)
    count = check_shape(shape, 8 if dtype == STRING else dtype.itemsize, max_bytes, name)
    if content:
        if dtype == STRING:
            raise InvalidArgument(f"input '{name}': DT_STRING tensors cannot use tensor_content")
        expected = count * dtype.itemsize
        if len(content) != expected:
            raise InvalidArgument(
                f"input '{name}': tensor_content has {len(content)} bytes, "
                f"shape {list(shape)} of {dtype.name} needs {expected}"
            )
        # frombuffer gives a read-only view of the message's bytes: no copy on the hot path.
        return np.frombuffer(content, dtype=dtype.newbyteorder("<")).reshape(shape)

    field = _VALUE_FIELD[proto.dtype]
    values: Sequence[Any] = getattr(proto, field)
    if dtype == STRING:
        flat = np.empty(len(values), dtype=STRING)
        flat[:] = list(values)
    elif proto.dtype == tensor_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif proto.dtype in (tensor_pb2.DT_COMPLEX64, tensor_pb2.DT_COMPLEX128):
        pairs = np.asarray(
            values, dtype=np.float64 if proto.dtype == tensor_pb2.DT_COMPLEX128 else np.float32
        )
        if pairs.size % 2:
            raise InvalidArgument(f"input '{name}': complex values come in (real, imaginary) pairs")
        flat = pairs.view(dtype)
    else:
        try:
            flat = np.asarray(values, dtype=dtype)
        except OverflowError as exc:
            raise InvalidArgument(f"input '{name}': value out of range for {dtype.name}") from exc
    return _fill(flat, shape, count, name)


def _fill(flat: np.ndarray, shape: tuple[int, ...], count: int, name: str) -> np.ndarray:
    """TensorFlow's rule: an empty list means zeros, a short list repeats its last value."""
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size > count:
        raise InvalidArgument(
            f"input '{name}': {flat.size} values for shape {list(shape)} ({count} elements)"
        )
    out = np.empty(count, dtype=flat.dtype)
    out[: flat.size] = flat
    out[flat.size :] = flat[-1] if flat.size else (b"" if flat.dtype == STRING else 0)
    return out.reshape(shape)


def little_endian_bytes(array: np.ndarray) -> bytes:
    """The values in C order and little-endian, as `tensor_content` and V2's raw contents hold them.

    `tobytes` copies in C order whatever the layout; only a big-endian array is converted first.
    (`np.ascontiguousarray(array, dtype="<...")` does the same through numpy's conversion
    machinery, which measurably costs on a request path under load: see `dataplane.all_finite`.)
    """
    order = array.dtype.byteorder
    if order in "<|" or (order == "=" and sys.byteorder == "little"):
        return array.tobytes()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def from_numpy(
    array: np.ndarray, proto: tensor_pb2.TensorProto | None = None, tensor_content: bool = True
) -> tensor_pb2.TensorProto:
    """Encode an array: numeric through tensor_content, strings through string_val.

    With `tensor_content=False`, numeric values go in their typed field instead (`float_val`,
    `int64_val`, ...), as TF Serving answers Predict unless `--enable_serialization_as_tensor_content`
    (TensorFlow's `AsProtoField`). With `proto` (e.g. a response's map entry), fills it in place
    instead of building a copy.
    """
    proto = tensor_pb2.TensorProto() if proto is None else proto
    wire = _numeric_wire(array, tensor_content)
    if wire is not None:  # merged in one parse
        proto.MergeFromString(wire)
        return proto
    kind = array.dtype.kind
    if kind in "US":
        array = array.astype(STRING)
    proto.dtype = data_type(array.dtype)  # type: ignore[assignment]
    proto.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape)
    if array.dtype == STRING:
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
    elif tensor_content:
        proto.tensor_content = little_endian_bytes(array)
    else:
        _fill_value_field(array, proto)
    return proto


def tensor_bytes(array: np.ndarray, tensor_content: bool = True) -> bytes:
    """`from_numpy(array, tensor_content=tensor_content)`, serialized; numbers without building
    the message (a response's outputs written straight to the wire: see `messages.predict_response`)."""
    wire = _numeric_wire(array, tensor_content)
    return wire if wire is not None else from_numpy(array, tensor_content=tensor_content).SerializeToString()


def _numeric_wire(array: np.ndarray, tensor_content: bool) -> bytes | None:
    """The hot path of `from_numpy`, as wire bytes: dtype and shape from their cached encoding, then
    the little-endian values as one length-delimited field (tensor_content, or the packed float,
    double or complex field). None for what needs per-element fields (strings, float16, integers
    in their typed fields)."""
    dtype = array.dtype
    kind = dtype.kind
    if kind not in "fciub" or dtype.char == "e" or not (tensor_content or kind in "fc"):  # ("e": float16)
        return None
    code = data_type(dtype)
    tag = _PACKED_TAG["tensor_content" if tensor_content else _VALUE_FIELD[code]]
    return _header(code, array.shape) + length_delimited(tag, little_endian_bytes(array))


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited protobuf field (bytes, string, message or packed values): its tag byte(s),
    the payload's length, the payload."""
    size = len(payload)
    return tag + (_SMALL_VARINTS[size] if size < 128 else _varint(size)) + payload


@functools.lru_cache(maxsize=4096)
def _header(code: int, shape: tuple[int, ...]) -> bytes:
    """A TensorProto's `dtype` and `tensor_shape` fields, serialized."""
    header = tensor_pb2.TensorProto(dtype=code)  # type: ignore[arg-type]
    header.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape)
    return header.SerializeToString()


def _fill_value_field(array: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
    """Numeric values into the dtype's typed repeated field (see `_VALUE_FIELD`)."""
    field = _VALUE_FIELD[proto.dtype]
    if array.dtype.kind in "fc" and array.dtype != FLOAT16:
        # Packed fixed-width fields (float, double, complex pairs) hold the little-endian values
        # themselves: parse them in as one length-delimited field, no per-element Python work.
        payload = little_endian_bytes(array)
        proto.MergeFromString(length_delimited(_PACKED_TAG[field], payload))
    elif array.dtype == np.float16:
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())  # the bits, as TensorFlow stores them
    else:
        getattr(proto, field).extend(array.reshape(-1).tolist())


_SMALL_VARINTS = [bytes([value]) for value in range(128)]


def packed_varints(values: Sequence[int]) -> bytes:
    """Non-negative integers as a packed repeated varint field's payload (a shape's dims)."""
    return b"".join(_SMALL_VARINTS[v] if 0 <= v < 128 else _varint(v) for v in values)


def _varint(value: int) -> bytes:
    """A protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def example_bytes(features: Mapping[str, np.ndarray]) -> bytes:
    """A serialized tf.Example of `features` (float32 -> float_list, integers -> int64_list,
    bytes -> bytes_list), as Classify and Regress feed a signature's `inputs` tensor."""
    example = example_pb2.Example()
    for name, values in features.items():
        feature = example.features.feature[name]
        flat = values.reshape(-1)
        if values.dtype == STRING:
            feature.bytes_list.value.extend(_as_bytes(v) for v in flat)
        elif values.dtype.kind in "iub":
            feature.int64_list.value.extend(flat.astype(np.int64).tolist())
        else:
            feature.float_list.value.extend(flat.astype(np.float32).tolist())
    return example.SerializeToString(deterministic=True)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidArgument(f"string tensor holds a {type(value).__name__}, not bytes or str")


# ---------------------------------------------------------------------------------------------
# REST (TF Serving's JSON API): nested lists, with {"b64": "..."} for binary strings.
#
# A predict body is mostly one big nested list of numbers: 32 digits are 25,088 numbers in 25,984
# lists. Parsing that into Python objects and converting them with np.asarray costs far more than
# the model call: orjson is fast, but every list it builds is a container the cyclic garbage
# collector counts and, every few hundred, traverses along with the rest of the heap. So `loads`
# reads a large regular numeric array straight from the body text into a flat list of numbers and
# its shape (a `NumberArray`); anything it cannot prove to be exactly that is parsed the plain way.

DENSE_MIN_BYTES = 4096  # arrays shorter than this are parsed the plain way (it is fast enough)
_MAX_DENSE_RANK = 32
_WHITESPACE = b" \t\n\r"
# Number characters -> "0", brackets and commas stay, anything else -> "!" (the text is not a
# numeric array); whitespace is deleted with it.
_SHAPE_TABLE = bytes(
    ord("0") if c in b"0123456789.eE+-" else c if c in b"[]," else ord("!") for c in range(256)
)
# Stands for a dense array in the rest of the body while orjson parses that; a random tag, so no
# string a client sends can be taken for it.
_PLACEHOLDER = "\x00dense-array-" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class NumberArray:
    """A regular numeric JSON array read from a request body: its numbers in row-major order
    (Python ints and floats, exactly as orjson reads each one) and its shape, rank >= 1."""

    values: list[int | float]
    shape: tuple[int, ...]

    def tolist(self) -> Any:
        """The nested lists the plain parse would have returned."""
        nested = np.empty(len(self.values), dtype=object)
        nested[:] = self.values
        return nested.reshape(self.shape).tolist()


class _CollectorPause:
    """Holds off the cyclic garbage collector while orjson builds a body's lists.

    Those lists are acyclic and die by reference counting, but each few hundred of them would
    trigger a collection that also traverses the whole heap (models, protobufs): measured, that is
    ~80% of the time of parsing a 500 KB body. Reentrant and thread-safe; if the collector was
    already disabled it stays so."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._reenable = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._reenable = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._reenable:
                    gc.enable()


_collector_paused = _CollectorPause()


MAX_JSON_DEPTH = 64


def json_depth(raw: bytes, at_least: int = 0) -> int:
    """How deeply arrays and objects nest in the JSON text `raw` (brackets inside strings do not
    count); returns at most the number of brackets, and early, without a scan, when that count is
    under `at_least` (so small or flat bodies cost two `bytes.count` calls)."""
    opened = raw.count(b"[") + raw.count(b"{")
    if opened < at_least:
        return opened
    # Escaped backslashes, then escaped quotes, cannot end a string: drop them, so every '"' left
    # opens or closes one; a bracket is structural when an even number of quotes precede it.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    chars = np.frombuffer(text, dtype=np.uint8)
    outside = (np.cumsum(chars == ord('"'), dtype=np.int32) & 1) == 0
    step = (chars == ord("[")) | (chars == ord("{"))
    step = step.astype(np.int32) - ((chars == ord("]")) | (chars == ord("}")))
    step[~outside] = 0
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def _check_depth(raw: bytes, max_depth: int, extra: int = 0) -> None:
    depth = json_depth(raw, at_least=max_depth - extra + 1) + extra
    if depth > max_depth:
        raise InvalidArgument(
            f"request body nests arrays and objects {depth} deep, over the limit of {max_depth} "
            f"(--rest_max_json_depth)"
        )


def loads(
    raw: bytes,
    dense_arrays: bool = False,
    dense_min_bytes: int = DENSE_MIN_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a REST request body; raises InvalidArgument if it is not valid JSON or nests arrays and
    objects deeper than `max_depth`.

    With `dense_arrays` (a predict body), the tensors of `{"instances": [...]}`,
    `{"instances": [{"name": [...]}, ...]}`, `{"inputs": [...]}` and `{"inputs": {"name": [...]}}`
    that are regular numeric arrays of at least `dense_min_bytes` come back as `NumberArray`s;
    `json_to_numpy` takes them like the nested lists they stand for.
    """
    if dense_arrays and len(raw) >= dense_min_bytes:
        body = _loads_dense(raw, dense_min_bytes, max_depth)
        if body is not None:
            return body
    _check_depth(raw, max_depth)
    with _collector_paused():
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(_json_error(raw, exc)) from None


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    near = raw[max(exc.pos - 12, 0) : exc.pos + 12]  # pos counts characters: close enough for a hint
    if b"NaN" in near or b"Infinity" in near:
        return (
            f"request body is not valid JSON: NaN and Infinity are not JSON numbers, and inputs must "
            f"be finite ({exc})"
        )
    return f"request body is not valid JSON: {exc}"


def _loads_dense(raw: bytes, min_bytes: int, max_depth: int) -> dict[str, Any] | None:
    """The body with its dense arrays as NumberArrays, or None where the plain parse must decide."""
    pieces: list[bytes] = []
    arrays: list[NumberArray] = []
    done = 0
    start = raw.find(b"[")
    while start >= 0:
        # A numeric array holds no quote or brace: it ends before the next one.
        stop = len(raw)
        for delimiter in (b'"', b"}"):
            index = raw.find(delimiter, start, stop)
            if index >= 0:
                stop = index
        while stop > start and raw[stop - 1] in b", \t\n\r":
            stop -= 1
        is_value = raw[max(start - 64, 0) : start].rstrip(_WHITESPACE).endswith(b":")  # `"key": [`
        array = _dense_array(raw[start:stop]) if is_value and stop - start >= min_bytes else None
        if array is not None:
            tag = f"{_PLACEHOLDER[1:]}{len(arrays)}".encode()
            pieces += [raw[done:start], b'"\\u0000' + tag + b'"']
            arrays.append(array)
            done = stop
        start = raw.find(b"[", max(stop, start + 1))
    if not arrays:
        return None
    pieces.append(raw[done:])
    rest = b"".join(pieces)
    # Each array sits where its placeholder string is, so counts at most its rank on top of it.
    _check_depth(rest, max_depth, extra=max(len(a.shape) for a in arrays))
    try:
        body = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None  # the plain parse says what is wrong
    if not isinstance(body, dict) or _put_dense(body, arrays) != len(arrays):
        return None  # a dense array somewhere else: rare, let the plain parse place it
    return body


def _put_dense(body: dict[str, Any], arrays: list[NumberArray]) -> int:
    """Put the arrays in place of their placeholders at tensor positions; returns how many."""
    placed = 0

    def place(holder: dict[str, Any], key: str) -> None:
        nonlocal placed
        value = holder[key]
        if isinstance(value, str) and value.startswith(_PLACEHOLDER):
            holder[key] = arrays[int(value[len(_PLACEHOLDER) :])]
            placed += 1

    for name in ("instances", "inputs"):
        if name not in body:
            continue
        value = body[name]
        place(body, name)
        if isinstance(value, dict):  # {"inputs": {"name": [...]}}
            for key in value:
                place(value, key)
        elif isinstance(value, list):  # {"instances": [{"name": [...]}, ...]}
            for row in value:
                if isinstance(row, dict):
                    for key in row:
                        place(row, key)
    return placed


def _dense_array(text: bytes) -> NumberArray | None:
    """`text` (from "[" on) as a NumberArray if it is exactly a regular numeric JSON array."""
    shape_text = text.translate(_SHAPE_TABLE, _WHITESPACE)  # e.g. b"[[00,000],[0,00]]"
    if b"!" in shape_text or not shape_text.endswith(b"]"):
        return None
    # A number must follow "[" or "," and precede "]" or ",": the flattened text below would
    # also read the invalid "[[1]2]" or "[1[2]]".
    chars = np.frombuffer(shape_text, dtype=np.uint8)
    number = chars == ord("0")
    if (number[1:] & (chars[:-1] == ord("]"))).any() or (number[:-1] & (chars[1:] == ord("["))).any():
        return None
    shape = _regular_shape(np.compress(~number, chars).tobytes())  # the brackets and commas
    if shape is None:
        return None
    # The numbers, parsed by orjson itself as one flat list: "[[1, 2], [3, 4]]" -> "[ 1, 2 ,  3, 4 ]".
    # (Two replace() calls take half the time of one translate() here.)
    flat = bytearray(text.replace(b"[", b" ").replace(b"]", b" "))
    flat[0], flat[-1] = ord("["), ord("]")
    try:
        values = orjson.loads(flat)
    except orjson.JSONDecodeError:
        return None
    if len(values) != math.prod(shape):
        return None  # e.g. "[[]]": its structure is that of "[[1]]"
    return NumberArray(values, shape)


def _regular_shape(structure: bytes) -> tuple[int, ...] | None:
    """The shape whose nested lists, numbers left out, are written `structure` (b"[[,,],[,,]]" ->
    (2, 3)), or None if there is no such shape."""
    rank = len(structure) - len(structure.lstrip(b"["))
    if not 0 < rank <= _MAX_DENSE_RANK:
        return None
    dims: list[int] = []
    child = 0  # the length of one element of the current level (a number has none left)
    for depth in range(rank, 0, -1):
        # The first list at `depth` opens at index depth - 1 and is closed by the first run of
        # rank - depth + 1 closing brackets; its elements are `child` long, comma-separated.
        run = structure.find(b"]" * (rank - depth + 1))
        if run < 0:
            return None
        length = run + rank - depth - (depth - 1) + 1
        count, extra = divmod(length - 1, child + 1)
        if extra or count < 1:
            return None
        dims.append(count)
        child = length
    dims.reverse()
    expected = b""
    for count in reversed(dims):  # each level is as long as the first list it was measured on
        expected = b"[" + b",".join([expected] * count) + b"]"
    return tuple(dims) if expected == structure else None


def json_to_numpy(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A JSON value (scalar, nested lists or NumberArray) -> array of the signature's dtype."""
    if dtype == STRING:
        return _json_strings(value.tolist() if isinstance(value, NumberArray) else value, name)
    try:
        if isinstance(value, NumberArray):
            values = value.values
            if dtype.kind == "f":  # the same per-number conversion as np.asarray, without its shape discovery
                return np.fromiter(values, dtype=dtype, count=len(values)).reshape(value.shape)
            return np.asarray(values, dtype=dtype).reshape(value.shape)
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(
            f"input '{name}': cannot read the JSON value as a {dtype.name} tensor (ragged lists, or "
            f"values of the wrong type): {exc}"
        ) from None


def json_rows_to_numpy(rows: list[Any], dtype: np.dtype, name: str) -> np.ndarray:
    """One input's values from the rows of a row-format request -> array with a row per value."""
    if not any(isinstance(row, NumberArray) for row in rows):
        return json_to_numpy(rows, dtype, name)
    shapes = {row.shape if isinstance(row, NumberArray) else None for row in rows}
    if len(shapes) == 1 and dtype != STRING:
        (shape,) = shapes
        assert shape is not None
        values = list(itertools.chain.from_iterable(row.values for row in rows))
        return json_to_numpy(NumberArray(values, (len(rows), *shape)), dtype, name)
    return json_to_numpy([row.tolist() if isinstance(row, NumberArray) else row for row in rows], dtype, name)


def _json_strings(value: Any, name: str) -> np.ndarray:
    def decode(item: Any) -> Any:
        if isinstance(item, list):
            return [decode(v) for v in item]
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise InvalidArgument(f'input \'{name}\': a binary value must be {{"b64": "<base64>"}}')
            try:
                return base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"input '{name}': invalid base64 in b64 value") from None
        if isinstance(item, str):
            return item.encode("utf-8")
        raise InvalidArgument(f"input '{name}': expected strings, got {type(item).__name__}")

    decoded = decode(value)
    shape = _nested_shape(decoded, name)
    out = np.empty(math.prod(shape), dtype=STRING)
    out[:] = list(_flatten(decoded))
    return out.reshape(shape)


def _nested_shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    inner = [_nested_shape(v, name) for v in value]
    if any(s != inner[0] for s in inner):
        raise InvalidArgument(f"input '{name}': ragged nested lists")
    return (len(value), *inner[0])


def _flatten(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def numpy_to_json(array: np.ndarray, binary: bool = False) -> Any:
    """Array -> JSON-ready nested lists. Strings come back as text, or {"b64"} when `binary`."""
    if array.dtype == STRING or array.dtype.kind in "SU":

        def encode(item: Any) -> Any:
            if isinstance(item, str):
                return item
            if binary:
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", errors="replace")

        return np.frompyfunc(encode, 1, 1)(array).tolist() if array.ndim else encode(array.item())
    if array.dtype.kind == "c":
        raise InvalidArgument("complex outputs cannot be written as JSON")
    return array.tolist()


def json_ready(array: np.ndarray, binary: bool = False) -> Any:
    """Array -> what `orjson.dumps(..., option=orjson.OPT_SERIALIZE_NUMPY)` writes as the JSON of
    `numpy_to_json(array, binary)`, without building its Python lists: numeric arrays as they are
    (made C-contiguous and native-endian, as orjson needs), anything else via numpy_to_json.
    float32 values come out as their shortest float32 repr, which reads back to the same float32."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if array.ndim and (kind in "biu" or (kind == "f" and size <= 8)):
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    return numpy_to_json(array, binary)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def json_feature(name: str, value: Any) -> np.ndarray:
    """One tf.Example feature of a REST :classify / :regress body, typed by its JSON values as TF
    Serving types them (json_tensor.cc): numbers with a fraction or exponent -> float32, integers
    and booleans -> int64, strings (UTF-8) and {"b64": ...} -> bytes. A value or a list of values.
    Beyond TF Serving, which refuses both: nested lists are flattened (an image as [28][28][1], as
    this project's clients send it), and integers among floats are taken as floats."""
    values = list(_flatten(value)) if isinstance(value, list) else [value]
    kinds = set()
    for item in values:
        if isinstance(item, int):  # bool is an int too: true -> 1, as TF Serving
            kinds.add("int64")
            if not isinstance(item, bool) and not _INT64_MIN <= item <= _INT64_MAX:
                raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        elif isinstance(item, float):
            kinds.add("float")
        elif isinstance(item, str) or (isinstance(item, dict) and set(item) == {"b64"}):
            kinds.add("bytes")
        else:
            kind = "null" if item is None else "object"
            raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {kind}")
    if kinds == {"bytes"}:
        return _json_strings(values, name)
    if "bytes" in kinds:
        raise InvalidArgument(f"Unexpected element type in feature: {name} expecting type: bytes")
    if kinds == {"int64"}:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    return np.asarray(values, dtype=np.float32)  # floats, or floats and integers (empty: no values)
