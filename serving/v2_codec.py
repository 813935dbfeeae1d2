"""The Open Inference Protocol's tensors, for the server and the clients alike: datatypes and the
raw little-endian bytes of `raw_input_contents` / `raw_output_contents` and of the binary tensor
data extension.

- Datatypes: V2's names (FP32, INT64, BYTES, ...) <-> numpy dtypes, both ways; strings (this
  project's object arrays of `bytes`) are BYTES.
- Values: flat or nested JSON lists and typed gRPC contents (`decode_values`), raw bytes
  (`decode_raw`, `encode_raw`; BYTES elements are each a 4-byte little-endian length and the
  bytes). Shapes are checked against a byte limit before numpy sees them.

It imports nothing of the server (as `serving.codec` for TF Serving's tensors), so the clients in
`clients.v2_client` use it without loading the data plane. Errors are `InvalidArgument`.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from serving import codec
from serving.errors import InvalidArgument

# The request parameter that names a TF Serving signature (see `serving.protocol.v2.common`).
SIGNATURE_PARAMETER = "signature_name"

# V2 datatype -> numpy dtype (little-endian on the wire; FP16 has no typed gRPC field, so raw only).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": codec.STRING,
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}

# V2 datatype -> the field of gRPC's InferTensorContents that holds its values (FP16 has none: raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Which JSON value kinds (numpy's kind of np.asarray(data)) each datatype family takes.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype (object arrays of bytes are BYTES)."""
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise InvalidArgument(f"the Open Inference Protocol has no datatype for {dtype}") from None


def dtype_of(datatype: Any, name: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise InvalidArgument(
            f"input '{name}': unknown datatype {datatype!r}; the Open Inference Protocol's are {sorted(DATATYPES)}"
        ) from None


def _shape(shape: Any, name: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"input '{name}': shape must be a list of integers, got {shape!r}")
    return tuple(shape)


def decode_values(datatype: Any, shape: Any, data: Any, name: str, max_bytes: int) -> np.ndarray:
    """A tensor given as values (JSON `data`, flat or nested, or typed gRPC contents) -> numpy."""
    dtype = dtype_of(datatype, name)
    dims = _shape(shape, name)
    count = codec.check_shape(dims, dtype.itemsize if dtype != codec.STRING else 1, max_bytes, name)
    if dtype == codec.STRING:
        values = list(_flatten(data))
        if len(values) != count:  # before anything the shape claims is allocated
            raise InvalidArgument(f"input '{name}': shape {list(dims)} needs {count} values, got {len(values)}")
        flat = np.empty(count, dtype=codec.STRING)
        for index, value in enumerate(values):
            if isinstance(value, str):
                flat[index] = value.encode("utf-8")
            elif isinstance(value, bytes):  # typed gRPC bytes_contents
                flat[index] = value
            else:
                raise InvalidArgument(f"input '{name}' is BYTES: its values must be strings, got {type(value).__name__}")
        return flat.reshape(dims)
    try:
        given = np.asarray(data)
    except ValueError:
        raise InvalidArgument(f"input '{name}': ragged nested lists") from None
    if given.size != count:
        raise InvalidArgument(f"input '{name}': shape {list(dims)} needs {count} values, got {given.size}")
    if count and given.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        kind = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise InvalidArgument(f"input '{name}' is {datatype}: its values must be {kind}")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        low, high = given.min(), given.max()
        if low < info.min or high > info.max:
            raise InvalidArgument(f"input '{name}': values out of the range of {datatype}")
    return given.astype(dtype, copy=False).reshape(dims)


def decode_contents(datatype: Any, shape: Any, contents: Any, name: str, max_bytes: int) -> np.ndarray:
    """A tensor given as typed gRPC `contents` (an InferTensorContents) -> numpy."""
    dtype_of(datatype, name)  # unknown datatypes first
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidArgument(f"input '{name}': {datatype} has no typed contents field: send it in raw_input_contents")
    values = getattr(contents, field)
    data: Any = list(values) if datatype == "BYTES" else np.asarray(values, dtype=DATATYPES[datatype])
    return decode_values(datatype, shape, data, name, max_bytes)


def _flatten(value: Any) -> Any:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def decode_raw(datatype: Any, shape: Any, raw: bytes | memoryview, name: str, max_bytes: int) -> np.ndarray:
    """A tensor's raw little-endian bytes (BYTES: 4-byte length + bytes per element) -> numpy."""
    dtype = dtype_of(datatype, name)
    dims = _shape(shape, name)
    count = codec.check_shape(dims, dtype.itemsize if dtype != codec.STRING else 4, max_bytes, name)
    if dtype != codec.STRING:
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"input '{name}': shape {list(dims)} of {datatype} needs {count * dtype.itemsize} bytes, "
                f"got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(dims)
    flat = np.empty(count, dtype=codec.STRING)
    offset = 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"input '{name}': its BYTES data ends before element {index} of {count}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"input '{name}': BYTES element {index} claims {length} bytes past the end")
        flat[index] = bytes(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidArgument(f"input '{name}': {len(raw) - offset} bytes left after its {count} BYTES elements")
    return flat.reshape(dims)


def encode_raw(array: np.ndarray) -> bytes:
    """numpy -> the tensor's raw little-endian bytes (BYTES: 4-byte length + bytes per element)."""
    if array.dtype == codec.STRING:
        parts = []
        for element in array.reshape(-1):
            value = element if isinstance(element, bytes) else str(element).encode("utf-8")
            parts.append(struct.pack("<I", len(value)))
            parts.append(value)
        return b"".join(parts)
    datatype_of(array.dtype)  # refuses what V2 cannot carry
    return codec.little_endian_bytes(array)


def shape_of(array: np.ndarray) -> list[int]:
    return [int(d) for d in array.shape]
