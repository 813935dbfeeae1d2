"""Calls a running server with `tritonclient` (its own venv: it needs protobuf < 7), prints JSON.

Run by tests/serving/test_v2.py as `python v2_tritonclient_calls.py GRPC_TARGET REST_HOSTPORT INPUTS.npz
NEW_BASE_PATH`; every answer and every error (status and message) is written out for the test to
check, with tritonclient's own compiled descriptors of the messages this server defines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException


def error_of(call: Callable[[], Any]) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": str(exc.message())}
    return {"status": "OK", "message": ""}


def listed(value: np.ndarray) -> Any:
    """An answer tensor as JSON-ready lists, BYTES elements as text."""
    if value.dtype == object:
        value = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(value)
    return value.tolist()


def http_infer(client: httpclient.InferenceServerClient, model: str, tensors: dict[str, np.ndarray], binary: bool,
               outputs: list[str] | None = None, class_count: Any = 0, **kwargs: Any) -> dict[str, Any]:
    inputs = []
    for name, value in tensors.items():
        datatype = "BYTES" if value.dtype == object else {np.float32: "FP32", np.float64: "FP64"}[value.dtype.type]
        entry = httpclient.InferInput(name, list(value.shape), datatype)
        entry.set_data_from_numpy(value, binary_data=binary)
        inputs.append(entry)
    # class_count: the first output requested as a classification (the classification extension).
    requested = [
        httpclient.InferRequestedOutput(n, binary_data=binary, class_count=class_count if i == 0 else 0)
        for i, n in enumerate(outputs or ())
    ]
    result = client.infer(model, inputs, outputs=requested or None, request_id="req-1", **kwargs)
    response = result.get_response()
    return {
        "id": response.get("id"),
        "model_name": response["model_name"],
        "model_version": response["model_version"],
        "outputs": {o["name"]: listed(result.as_numpy(o["name"])) for o in response["outputs"]},
        "datatypes": {o["name"]: [o["datatype"], o["shape"]] for o in response["outputs"]},
        "binary": [("binary_data_size" in o.get("parameters", {})) for o in response["outputs"]],
    }


def grpc_infer(client: grpcclient.InferenceServerClient, model: str, tensors: dict[str, np.ndarray],
               outputs: list[str] | None = None, class_count: int = 0, **kwargs: Any) -> dict[str, Any]:
    inputs = []
    for name, value in tensors.items():
        datatype = "BYTES" if value.dtype == object else {np.float32: "FP32", np.float64: "FP64"}[value.dtype.type]
        entry = grpcclient.InferInput(name, list(value.shape), datatype)
        entry.set_data_from_numpy(value)
        inputs.append(entry)
    requested = [
        grpcclient.InferRequestedOutput(n, class_count=class_count if i == 0 else 0) for i, n in enumerate(outputs or ())
    ]
    result = client.infer(model, inputs, outputs=requested or None, request_id="req-2", **kwargs)
    response = result.get_response()
    return {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": {o.name: listed(result.as_numpy(o.name)) for o in response.outputs},
        "datatypes": {o.name: [o.datatype, list(o.shape)] for o in response.outputs},
    }


def descriptors() -> dict[str, Any]:
    """tritonclient's compiled grpc_service.proto: fields of every message, methods of the service."""
    messages: dict[str, Any] = {}

    def walk(descriptor: Any) -> None:
        messages[descriptor.full_name] = {
            f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None]
            for f in descriptor.fields
        }
        for nested in descriptor.nested_types:
            walk(nested)

    for descriptor in service_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(descriptor)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return {"messages": messages, "service": service.full_name, "methods": methods}


def main() -> None:
    grpc_target, rest_hostport, inputs_path, new_base_path = sys.argv[1:5]
    data = np.load(inputs_path, allow_pickle=True)
    digits = data["digits"]  # float32 [2, 28, 28, 1]
    png = np.array([data["png"].tobytes()], dtype=object)  # one PNG, BYTES [1]
    texts = np.array([b"good fun great", b"awful dull bad"], dtype=object)
    catdog = data["catdog"]  # float32 [1, 16, 16, 3]
    tagged = {"scores": data["scores"], "tags": np.array([[b"a", b"b", b"c"]] * 2, dtype=object)}  # [2, 4], [2, 3]
    http = httpclient.InferenceServerClient(rest_hostport)
    grpc = grpcclient.InferenceServerClient(grpc_target)
    out: dict[str, Any] = {"descriptors": descriptors()}

    out["health"] = {
        "http": [http.is_server_live(), http.is_server_ready(), http.is_model_ready("digits"),
                 http.is_model_ready("catdog.explain"), http.is_model_ready("nope")],
        "grpc": [grpc.is_server_live(), grpc.is_server_ready(), grpc.is_model_ready("digits"),
                 grpc.is_model_ready("catdog.explain")],
    }
    out["server_metadata"] = {"http": http.get_server_metadata(),
                              "grpc": grpc.get_server_metadata(as_json=True)}
    out["model_metadata"] = {
        name: {"http": http.get_model_metadata(name), "grpc": grpc.get_model_metadata(name, as_json=True)}
        for name in ("digits", "catdog", "catdog.predict_image_bytes", "sentiment")
    }
    out["infer"] = {
        "digits_http_binary": http_infer(http, "digits", {"image": digits}, True),
        "digits_http_json": http_infer(http, "digits", {"image": digits}, False, outputs=["probabilities"]),
        "digits_grpc": grpc_infer(grpc, "digits", {"image": digits}),
        "digits_grpc_version": grpc_infer(grpc, "digits", {"image": digits}, model_version="1"),
        "png_http": http_infer(http, "catdog.predict_image_bytes", {"image_bytes": png}, True),
        "png_grpc": grpc_infer(grpc, "catdog.predict_image_bytes", {"image_bytes": png}),
        "png_grpc_parameter": grpc_infer(grpc, "catdog", {"image_bytes": png},
                                         parameters={"signature_name": "predict_image_bytes"}),
        "catdog_http": http_infer(http, "catdog", {"image": catdog}, True),
        "heatmap_http_json": http_infer(http, "catdog.explain", {"image": catdog}, False, outputs=["heatmap"]),
        "heatmap_grpc": grpc_infer(grpc, "catdog.explain", {"image": catdog}, outputs=["heatmap"]),
        "text_http_binary": http_infer(http, "sentiment", {"text": texts}, True),
        "text_http_json": http_infer(http, "sentiment", {"text": texts}, False, outputs=["probabilities"]),
        "text_grpc": grpc_infer(grpc, "sentiment", {"text": texts}),
    }
    # The classification extension: top classes instead of the tensor (digits 10 classes, catdog 2).
    out["classification"] = {
        "digits_http_binary": http_infer(http, "digits", {"image": digits}, True, ["probabilities"], class_count=3),
        "digits_http_json": http_infer(http, "digits", {"image": digits}, False, ["probabilities"], class_count=3),
        "digits_grpc": grpc_infer(grpc, "digits", {"image": digits}, ["probabilities"], class_count=3),
        "catdog_http": http_infer(http, "catdog", {"image": catdog}, True, ["probabilities"], class_count=3),
        "catdog_grpc": grpc_infer(grpc, "catdog", {"image": catdog}, ["probabilities"], class_count=3),
        "explain_http": http_infer(http, "catdog.explain", {"image": catdog}, False, ["probabilities", "heatmap"],
                                   class_count=1),
        "unlabelled_http": http_infer(http, "tagged", tagged, True, ["ranked", "echoed"], class_count=5),
        "unlabelled_grpc": grpc_infer(grpc, "tagged", tagged, ["ranked"], class_count=2),
    }
    as_double = digits.astype(np.float64)
    flat = digits.reshape(2, 28, 28)
    out["errors"] = {}
    for name, client in (("http", http), ("grpc", grpc)):
        def infer(*args: Any, kind: str = name, **kwargs: Any) -> Any:
            return http_infer(http, *args, True, **kwargs) if kind == "http" else grpc_infer(grpc, *args, **kwargs)

        out["errors"][name] = {
            "unknown_model": error_of(lambda f=infer: f("nope", {"image": digits})),
            "unknown_signature_name": error_of(lambda f=infer: f("digits.nope", {"image": digits})),
            "unknown_version": error_of(lambda f=infer: f("digits", {"image": digits}, model_version="7")),
            "bad_datatype": error_of(lambda f=infer: f("digits", {"image": as_double})),
            "bad_shape": error_of(lambda f=infer: f("digits", {"image": flat})),
            "unknown_input": error_of(lambda f=infer: f("digits", {"pixels": digits})),
            "unknown_output": error_of(lambda f=infer: f("digits", {"image": digits}, outputs=["logits"])),
            "signature_parameter": error_of(
                lambda f=infer: f("digits", {"image": digits}, parameters={"signature_name": "nope"})),
            "metadata_unknown_model": error_of(lambda c=client: c.get_model_metadata("nope")),
            "load_unknown_model": error_of(lambda c=client: c.load_model("ghost")),
            "load_triton_config": error_of(lambda c=client: c.load_model("ghost", config='{"max_batch_size": 8}')),
            "unload_unknown_model": error_of(lambda c=client: c.unload_model("ghost")),
            "classification_negative": error_of(
                lambda f=infer: f("digits", {"image": digits}, outputs=["probabilities"], class_count=-1)),
            "classification_bytes_output": error_of(
                lambda f=infer: f("tagged", tagged, outputs=["echoed"], class_count=2)),
            "classification_rank_3": error_of(
                lambda f=infer: f("catdog.explain", {"image": catdog}, outputs=["heatmap"], class_count=2)),
        }
    # A class count that is not an integer: only tritonclient.http sends one (grpc's int64_param refuses it).
    out["errors"]["http"]["classification_not_integer"] = error_of(
        lambda: http_infer(http, "digits", {"image": digits}, True, ["probabilities"], class_count=2.5))

    # The model repository extension, last: it changes what is served.
    repository: dict[str, Any] = {"index_before": http.get_model_repository_index()}
    grpc.unload_model("sentiment")
    repository["after_unload"] = {
        "http_ready": http.is_model_ready("sentiment"),
        "infer": error_of(lambda: http_infer(http, "sentiment", {"text": texts}, True)),
        "index": grpc.get_model_repository_index(as_json=True),
        "server_ready": http.is_server_ready(),
    }
    http.load_model("sentiment")  # its last known config
    repository["after_load"] = {
        "grpc_ready": grpc.is_model_ready("sentiment"),
        "infer": http_infer(http, "sentiment", {"text": texts}, True),
    }
    grpc.load_model("digits2", config=json.dumps({"base_path": new_base_path}))
    repository["new_model"] = {
        "infer": grpc_infer(grpc, "digits2", {"image": digits}),
        "index": http.get_model_repository_index(),
    }
    http.unload_model("digits2")
    repository["new_model_unloaded"] = error_of(lambda: grpc_infer(grpc, "digits2", {"image": digits}))
    out["repository"] = repository
    print(json.dumps(out))


if __name__ == "__main__":
    main()
