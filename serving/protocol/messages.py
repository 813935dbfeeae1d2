"""Response messages both protocols share: REST renders the same protos as JSON (as TF Serving does)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import numpy as np

from serving.backends import Signature
from serving.codec import data_type
from serving.proto import apis_pb2, meta_graph_pb2, tensor_pb2
from serving.repository import ModelVersion

SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def model_spec(version: ModelVersion, signature: str = "") -> apis_pb2.ModelSpec:
    """The ModelSpec of an answer. Shared and cached: callers copy it (message constructors and
    `CopyFrom` do), never mutate it."""
    return _model_spec(version.name, version.version, signature)


@functools.lru_cache(maxsize=1024)
def _model_spec(name: str, version: int, signature: str) -> apis_pb2.ModelSpec:
    spec = apis_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


def signature_def_map(signatures: Mapping[str, Signature]) -> apis_pb2.SignatureDefMap:
    result = apis_pb2.SignatureDefMap()
    for name, signature in signatures.items():
        definition = result.signature_def[name]
        definition.method_name = signature.method
        for key, meta in signature.inputs.items():
            _tensor_info(definition.inputs[key], f"{name}_{key}:0", meta.dtype, meta.shape)
        for key, meta in signature.outputs.items():
            _tensor_info(definition.outputs[key], f"{name}_{key}:0", meta.dtype, meta.shape)
    return result


def _tensor_info(
    info: meta_graph_pb2.TensorInfo, tensor_name: str, dtype: np.dtype, shape: Iterable[int]
) -> None:
    info.name = tensor_name
    info.dtype = data_type(dtype)  # type: ignore[assignment]
    info.tensor_shape.dim.extend(tensor_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape)


def metadata_response(
    version: ModelVersion, signatures: Mapping[str, Signature]
) -> apis_pb2.GetModelMetadataResponse:
    response = apis_pb2.GetModelMetadataResponse(model_spec=model_spec(version))
    response.metadata["signature_def"].Pack(signature_def_map(signatures))
    return response


def status_response(versions: Iterable[ModelVersion]) -> apis_pb2.GetModelStatusResponse:
    response = apis_pb2.GetModelStatusResponse()
    for entry in versions:
        status = response.model_version_status.add(version=entry.version, state=int(entry.state))
        status.status.SetInParent()  # TF Serving always reports a status, OK included
        if entry.error:
            status.status.error_code = 2  # UNKNOWN, as TF Serving reports load failures
            status.status.error_message = entry.error
    return response

