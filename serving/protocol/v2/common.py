"""What the Open Inference Protocol's REST and gRPC sides share: datatypes, names, tensors, readiness.

- Datatypes and tensors (JSON values, typed gRPC contents, raw bytes): `serving.v2_codec`, which the
  clients share; its names are re-exported here.
- Names: a signature of a TF Serving model is a V2 model. The default signature (`serving_default`)
  is the model `<m>` itself; another signature `<s>` is the model `<m>.<s>` (a served model whose own
  name has a dot wins over that reading). A request may instead name the signature in its
  `signature_name` parameter (REST `parameters`, gRPC `parameters[...].string_param`), TF Serving's
  word for it; naming it both ways at once is refused.
- Versions: V2 versions are strings. Digits are the version number; anything else is read as one of
  the model's TF Serving version labels (`stable`, `canary`); empty means the version TF Serving's
  policy serves (the newest AVAILABLE one).
- Classification (Triton's extension): a requested output whose `classification` parameter is k
  (REST `outputs[].parameters`, gRPC `int64_param`) is answered as BYTES [batch, min(k, classes)]
  instead: per row the k highest values, highest first, each "<value>:<index>[:<label>]" (value as
  C's `%f` for floats, as an integer for integer outputs; Triton's classification.cc). The label is
  the model's (the class names of its `probabilities`) where their count is the output's last
  dimension. Only numeric outputs of shape [batch, classes] can be classified.

Errors are `serving.errors` classes, so both sides map them as TF Serving's API does (unknown model
404 / NOT_FOUND, malformed tensor 400 / INVALID_ARGUMENT, ...).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from grpc_health.v1 import health_pb2

from serving import codec
from serving.backends import Signature, TensorMeta
from serving.dataplane import DataPlane
from serving.errors import InvalidArgument, NotFound
from serving.protocol import Services
from serving.repository import ModelVersion, Repository
from serving.v2_codec import (  # noqa: F401  (the tensors' half of this module: see serving.v2_codec)
    CONTENTS_FIELDS,
    DATATYPES,
    SIGNATURE_PARAMETER,
    datatype_of,
    decode_contents,
    decode_raw,
    decode_values,
    dtype_of,
    encode_raw,
    shape_of,
)

DEFAULT_SIGNATURE = "serving_default"
SERVER_NAME = "model-serving"
CLASSIFICATION_PARAMETER = "classification"
# What ServerMetadata lists: Triton's names for the extensions served here.
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository")

def server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "0"


def platform_of(version: ModelVersion) -> str:
    """The model's platform as Triton names it."""
    backend = version.backend
    return "tensorflow_savedmodel" if backend is not None and backend.platform == "tensorflow" else "onnxruntime_onnx"


def tensor_metadata(tensors: Mapping[str, TensorMeta]) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) per tensor; -1 marks a dimension of any size (and an unknown rank is [-1])."""
    described = []
    for key, meta in tensors.items():
        shape = [-1] if getattr(meta, "unknown_rank", False) else [int(d) if d >= 0 else -1 for d in meta.shape]
        described.append((key, datatype_of(meta.dtype), shape))
    return described


def model_properties(resolved: ModelVersion, signature: Signature) -> dict[str, str]:
    """What model metadata adds in its `properties` map (a V2 client can list the other signatures
    from it): `signatures`, every signature's name, comma-separated; `signature`, the one described;
    `version`, the TF Serving version it resolved to (from a label or "")."""
    return {
        "signatures": ",".join(sorted(resolved.signatures())),
        "signature": signature.name,
        "version": str(resolved.version),
    }


def server_ready(services: Services) -> bool:
    """The readiness of grpc.health.v1 service "": every model AVAILABLE (every worker's) and not draining."""
    status = services.health._server_status.get("")  # set by `RunningServer.refresh_health`
    return status == health_pb2.HealthCheckResponse.SERVING


# -- names and versions ------------------------------------------------------------------------


def parse_version(raw: str) -> tuple[int | None, str | None]:
    """A V2 version string -> (version number, TF Serving version label); ("", ...) is neither."""
    if not raw:
        return None, None
    if raw.isascii() and raw.isdigit():
        number = int(raw)
        if not 0 < number < 2**63:
            raise InvalidArgument(f"model version must be a positive 64-bit integer or a version label, got '{raw}'")
        return number, None
    return None, raw


def split_name(name: str) -> tuple[str, str]:
    """(model, signature) as read without the repository: the part after the last dot is a signature
    (used for metric labels; `Target.resolve` is the reading that counts)."""
    model, dot, signature = name.rpartition(".")
    return (model, signature) if dot and model and signature else (name, "")


@dataclass(frozen=True)
class Target:
    """The TF Serving model, version and signature a V2 model name and version mean."""

    name: str  # as the request named it (answers echo it)
    model: str
    signature: str  # "" = serving_default
    version: int | None
    label: str | None

    @classmethod
    def resolve(cls, repository: Repository, name: str, version: str, signature: str = "") -> Target:
        if not name:
            raise InvalidArgument("the model name is required")
        number, label = parse_version(version)
        model, from_name = name, ""
        if name not in repository.models:
            base, part = split_name(name)
            if part and base in repository.models:
                model, from_name = base, part
            else:
                raise NotFound(f"Servable not found for request: model '{name}' is not served")
        if from_name and signature:
            raise InvalidArgument(
                f"model '{name}' names signature '{from_name}'; the '{SIGNATURE_PARAMETER}' parameter "
                f"'{signature}' cannot name another"
            )
        return cls(name, model, from_name or signature, number, label)

    def version_of(self, repository: Repository) -> ModelVersion:
        return repository.resolve(self.model, self.version, self.label)

    def signature_of(self, dataplane: DataPlane, resolved: ModelVersion) -> Signature:
        """The signature; an unknown `<m>.<s>` is an unknown model (NOT_FOUND), an unknown
        `signature_name` parameter TF Serving's FAILED_PRECONDITION (from the data plane)."""
        signatures = resolved.signatures()
        if self.name != self.model and self.signature not in signatures:
            raise NotFound(
                f"Servable not found for request: model '{self.name}': model '{self.model}' version "
                f"{resolved.version} has no signature '{self.signature}'; it has {sorted(signatures)}"
            )
        return dataplane.signature_of(resolved, self.signature)


def check_datatype(signature: Signature, name: str, datatype: Any) -> None:
    """The V2 datatype a signature's input takes, said in V2's words (the data plane then checks the rest)."""
    meta = signature.inputs.get(name)
    if meta is None:
        return  # unknown names, and alternatives (BYTES): the data plane's checks say it
    want = datatype_of(meta.dtype)
    if datatype != want and isinstance(datatype, str) and datatype in DATATYPES:
        raise InvalidArgument(f"input '{name}' must be {want}, got {datatype}")


def string_parameter(parameters: Mapping[str, Any], key: str) -> str:
    value = parameters.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"parameter '{key}' must be a string")
    return value


# -- tensors ---------------------------------------------------------------------------------


# -- the classification extension -----------------------------------------------------------


def classification_count(parameters: Mapping[str, Any], name: str) -> int:
    """The `classification` parameter of requested output `name`: k > 0, or 0 when it is absent."""
    if CLASSIFICATION_PARAMETER not in parameters:
        return 0
    count = parameters[CLASSIFICATION_PARAMETER]
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise InvalidArgument(
            f"output '{name}': parameter '{CLASSIFICATION_PARAMETER}' must be a positive integer "
            f"(the number of classes to return), got {count!r}"
        )
    return count


def _check_classifiable(name: str, dtype: np.dtype, shape: Sequence[int] | None) -> None:
    """Numeric (integers or floats) of rank 2 ([batch, classes]); `shape` None: rank not known yet."""
    if np.dtype(dtype).kind not in "iuf":
        try:
            datatype = datatype_of(dtype)
        except InvalidArgument:  # a dtype V2 has no name for
            datatype = str(dtype)
        raise InvalidArgument(
            f"output '{name}' is {datatype}: the classification extension ranks numeric outputs only"
        )
    if shape is not None and len(shape) != 2:
        raise InvalidArgument(
            f"output '{name}' has shape {[int(d) for d in shape]}: the classification extension ranks "
            "outputs of shape [batch, classes]"
        )


def check_classification(signature: Signature, name: str) -> None:
    """Whether output `name` of `signature` can be classified, before anything runs (unknown names:
    the data plane's output check says it)."""
    meta = signature.outputs.get(name)
    if meta is not None:
        shape = None if getattr(meta, "unknown_rank", False) else meta.shape
        _check_classifiable(name, meta.dtype, shape)


def labels_of(version: ModelVersion) -> tuple[str, ...]:
    """The model's class names (its `probabilities` output's), () when it has none."""
    backend = version.backend
    return backend.labels if backend is not None else ()


def top_classes(values: np.ndarray, count: int, labels: Sequence[str], name: str) -> np.ndarray:
    """An output [batch, classes] -> BYTES [batch, min(count, classes)]: per row its `count` highest
    values, highest first (ties: the lower index first), each "<value>:<index>[:<label>]"."""
    _check_classifiable(name, values.dtype, values.shape)  # what the engine really returned
    rows, classes = values.shape
    kept = min(count, classes)
    # A stable ascending sort of each reversed row, read backwards: descending, ties by lower index.
    order = classes - 1 - np.argsort(values[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :kept]  # [batch, kept]
    named = len(labels) == classes
    as_float = values.dtype.kind == "f"
    answer = np.empty((rows, kept), dtype=codec.STRING)
    for row in range(rows):
        for column, index in enumerate(order[row].tolist()):
            value = values[row, index]
            text = f"{float(value):f}:{index}" if as_float else f"{int(value)}:{index}"
            answer[row, column] = (f"{text}:{labels[index]}" if named else text).encode("utf-8")
    return answer


def classify_outputs(
    outputs: Mapping[str, np.ndarray], counts: Mapping[str, int], labels: Sequence[str]
) -> dict[str, np.ndarray]:
    """The outputs with each one named in `counts` replaced by its `top_classes`."""
    return {
        name: top_classes(value, counts[name], labels, name) if counts.get(name) else value
        for name, value in outputs.items()
    }


def select_outputs(outputs: Mapping[str, np.ndarray], requested: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs in the requested order (all, in the signature's order, when none are requested)."""
    return {name: outputs[name] for name in requested} if requested else dict(outputs)

