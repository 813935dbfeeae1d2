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
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.errors import InvalidArgument
from serving.proto import tensor_pb2

DataType = tensor_pb2.DataType
STRING = np.dtype(object)
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


def to_numpy(proto: tensor_pb2.TensorProto, name: str = "tensor", max_bytes: int = 1 << 30) -> np.ndarray:
    """Decode a TensorProto; raises InvalidArgument for anything malformed or larger than max_bytes."""
    dtype = numpy_dtype(proto.dtype)
    shape = _shape_of(proto, name)
    count = check_shape(shape, 8 if dtype == STRING else dtype.itemsize, max_bytes, name)
    if proto.tensor_content:
        if dtype == STRING:
            raise InvalidArgument(f"input '{name}': DT_STRING tensors cannot use tensor_content")
        expected = count * dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise InvalidArgument(
                f"input '{name}': tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype.name} needs {expected}"
            )
        # frombuffer gives a read-only view of the message's bytes: no copy on the hot path.
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).reshape(shape)

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


def from_numpy(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """Encode an array: numeric through tensor_content, strings through string_val.

    With `proto` (e.g. a response's map entry), fills it in place instead of building a copy.
    """
    proto = tensor_pb2.TensorProto() if proto is None else proto
    if array.dtype.kind in "US":
        array = array.astype(STRING)
    proto.dtype = data_type(array.dtype)  # type: ignore[assignment]
    proto.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=int(d)) for d in array.shape)
    if array.dtype == STRING:
        proto.string_val.extend(_as_bytes(v) for v in array.reshape(-1))
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidArgument(f"string tensor holds a {type(value).__name__}, not bytes or str")


# ---------------------------------------------------------------------------------------------
# REST (TF Serving's JSON API): nested lists, with {"b64": "..."} for binary strings.


def json_to_numpy(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A JSON value (scalar or nested lists) -> array of the signature's dtype."""
    if dtype == STRING:
        return _json_strings(value, name)
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(
            f"input '{name}': cannot read the JSON value as a {dtype.name} tensor (ragged lists, or "
            f"values of the wrong type): {exc}"
        ) from None
    return array


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

