"""What the gRPC and REST clients share: the result types, the request checks and the proto readers.

Both clients return the same Python values for the same call: `predict` -> `{output: ndarray}`
(strings as object arrays of `bytes`), `classify` -> `[[(label, score), ...], ...]`, `metadata` ->
plain dicts, `status` -> `[ModelStatus, ...]`. Tensors are encoded with the server's one codec
(`serving.codec`), so the client and the server can never disagree about the wire format.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self

import numpy as np

from clients.errors import ClientError
from serving import codec
from serving.errors import InvalidArgument
from serving.proto import apis_pb2, example_pb2, meta_graph_pb2

DEFAULT_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default --grpc_max_message_bytes

# What a caller may pass as one input tensor: an array, or a list of texts / byte strings / numbers.
TensorLike = np.ndarray | Sequence[Any]
# One tf.Example for classify: feature name -> value(s).
ExampleLike = Mapping[str, np.ndarray | bytes | str | float | int | Sequence[Any]]
Classes = list[list[tuple[str, float]]]


class ModelStatus(NamedTuple):
    version: int
    state: str  # "AVAILABLE", "LOADING", "END", ...
    error: str | None  # why the version failed to load, if it did


def as_tensor(name: str, value: TensorLike) -> np.ndarray:
    """An input value as an array; lists of str/bytes become object arrays of `bytes` (DT_STRING)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind in "US" or (array.dtype == codec.STRING):
        flat = [_to_bytes(name, v) for v in array.reshape(-1)]
        strings = np.empty(len(flat), dtype=codec.STRING)
        strings[:] = flat
        return strings.reshape(array.shape)
    return array


def _to_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ClientError(
        "INVALID_ARGUMENT", None, f"input '{name}' mixes strings with {type(value).__name__} values"
    )


def encode_tensor(name: str, value: TensorLike) -> Any:
    """numpy -> TensorProto through the server's codec; a dtype the wire cannot carry is INVALID_ARGUMENT."""
    try:
        return codec.from_numpy(as_tensor(name, value))
    except InvalidArgument as exc:
        raise ClientError("INVALID_ARGUMENT", None, f"input '{name}': {exc.message}") from exc


def check_version_choice(version: int | None, label: str | None) -> None:
    if version is not None and label is not None:
        raise ClientError("INVALID_ARGUMENT", None, "give a version or a version label, not both")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version <= 0):
        raise ClientError("INVALID_ARGUMENT", None, f"version must be a positive integer, got {version!r}")


def model_spec(
    model: str, version: int | None = None, label: str | None = None, signature: str | None = None
) -> apis_pb2.ModelSpec:
    check_version_choice(version, label)
    spec = apis_pb2.ModelSpec(name=model, signature_name=signature or "")
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec


def example_proto(example: ExampleLike) -> example_pb2.Example:
    """One tf.Example: floats -> float_list, integers -> int64_list, str/bytes -> bytes_list."""
    proto = example_pb2.Example()
    for name, value in example.items():
        feature = proto.features.feature[name]
        if isinstance(value, bytes | str):
            feature.bytes_list.value.append(_to_bytes(name, value))
            continue
        array = as_tensor(name, value if isinstance(value, np.ndarray | Sequence) else [value]).reshape(-1)
        if array.dtype == codec.STRING:
            feature.bytes_list.value.extend(array.tolist())
        elif array.dtype.kind in "iub":
            feature.int64_list.value.extend(array.astype(np.int64).tolist())
        elif array.dtype.kind == "f":
            feature.float_list.value.extend(array.astype(np.float32).tolist())
        else:
            raise ClientError(
                "INVALID_ARGUMENT", None, f"feature '{name}' has dtype {array.dtype}, not a number or string"
            )
    return proto


def _tensor_info(info: meta_graph_pb2.TensorInfo) -> dict[str, Any]:
    try:
        dtype = codec.dtype_name(codec.numpy_dtype(info.dtype))
    except InvalidArgument:
        dtype = "unknown"
    return {"dtype": dtype, "shape": [int(d.size) for d in info.tensor_shape.dim]}


def signatures_from_proto(signature_defs: apis_pb2.SignatureDefMap) -> dict[str, dict[str, Any]]:
    """SignatureDefMap -> {name: {"method", "inputs": {k: {"dtype", "shape"}}, "outputs": {...}}}."""
    return {
        name: {
            "method": definition.method_name,
            "inputs": {k: _tensor_info(v) for k, v in sorted(definition.inputs.items())},
            "outputs": {k: _tensor_info(v) for k, v in sorted(definition.outputs.items())},
        }
        for name, definition in sorted(signature_defs.signature_def.items())
    }


def metadata_from_proto(response: apis_pb2.GetModelMetadataResponse) -> dict[str, Any]:
    """GetModelMetadataResponse -> {"name", "version", "signatures": signatures_from_proto(...)}."""
    signature_defs = apis_pb2.SignatureDefMap()
    if "signature_def" in response.metadata and not response.metadata["signature_def"].Unpack(signature_defs):
        raise ClientError("INTERNAL", None, "metadata 'signature_def' is not a SignatureDefMap")
    return {
        "name": response.model_spec.name,
        "version": int(response.model_spec.version.value),
        "signatures": signatures_from_proto(signature_defs),
    }


def status_from_proto(response: apis_pb2.GetModelStatusResponse) -> list[ModelStatus]:
    return [
        ModelStatus(
            version=int(entry.version),
            state=apis_pb2.ModelVersionStatus.State.Name(entry.state),
            error=entry.status.error_message or None,
        )
        for entry in response.model_version_status
    ]


class Client(abc.ABC):
    """The calls both transports offer, method for method.

    Every call has a deadline: `timeout` seconds (default: the client's), covering all its attempts.
    Calls that fail with UNAVAILABLE / RESOURCE_EXHAUSTED (HTTP 503 / 429) are retried within it,
    after the wait the server asks for or a jittered backoff (`clients.retries`).
    """

    @abc.abstractmethod
    def predict(
        self,
        model: str,
        inputs: Mapping[str, TensorLike],
        *,
        signature: str | None = None,
        version: int | None = None,
        label: str | None = None,
        output_filter: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a predict signature; returns output name -> array (batch dimension first)."""

    @abc.abstractmethod
    def classify(
        self,
        model: str,
        examples: Sequence[ExampleLike],
        *,
        signature: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> Classes:
        """Classify examples; per example, (label, score) for every class in label order."""

    @abc.abstractmethod
    def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """{"name", "version", "signatures": {name: {"method", "inputs", "outputs"}}}; tensors as
        {"dtype": "float32" | "string" | ..., "shape": [-1, 28, 28, 1]} (-1 where unknown)."""

    @abc.abstractmethod
    def status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ModelStatus]:
        """The versions of a model the server knows, with their state and load error."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
