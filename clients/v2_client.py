"""Clients for the Open Inference Protocol (KServe V2), with the calls and values of the TF Serving ones.

    with V2GrpcClient("localhost:8500") as client:              # inference.GRPCInferenceService
        probabilities = client.predict("digits", {"image": images})["probabilities"]  # [N, 10]
    with V2RestClient("http://localhost:8501") as client:       # /v2/..., binary tensor data
        client.classify("digits", [{"image": image}])             # [[("0", 0.01), ("1", 0.0), ...]]

`V2GrpcClient` and `V2RestClient` subclass `clients.base.Client`, so code written for `GrpcClient`
and `RestClient` (and `ml-client --protocol v2`) runs on them unchanged, against this server or any
V2 server (Triton, KServe, MLServer) for the calls the protocol has:

- `predict` is `infer`: `signature` travels as the `signature_name` request parameter (this server's
  reading, see `serving.protocol.v2.common`), `version` as the version string, and a version `label`
  in the version's place, as this server reads versions that are not numbers; `output_filter` is the
  requested `outputs`. Tensors go as raw little-endian bytes (gRPC `raw_input_contents`, REST's binary
  tensor data extension), the way `tritonclient` sends them; `V2RestClient(binary=False)` sends JSON
  (but BYTES that are not UTF-8, such as an encoded photo, binary: JSON cannot hold them).
- `classify` asks for the `probabilities` output (or a signature's only output) through the
  classification extension (`classification` = the class count) and returns every class in index
  order with its label, as Classify does.
- `metadata` reads the model's V2 metadata, and that of every other signature the server lists in the
  metadata's `signatures` property (this server: `<model>.<signature>`); `status` reads the model
  repository index (READY -> AVAILABLE, UNAVAILABLE -> END, as TF Serving names states).
- V2's own calls: `live`, `ready`, `server_metadata`, `model_metadata`, `infer` (any parameters),
  and the repository extension's `repository_index`, `load`, `unload`.

Failures are `ClientError`s with the gRPC code name and the HTTP status, retried as the TF Serving
clients retry (UNAVAILABLE / RESOURCE_EXHAUSTED, HTTP 429 / 503) within the call's deadline.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Unpack
from urllib.parse import quote

import numpy as np
import orjson

from clients.base import (
    Classes,
    Client,
    ExampleLike,
    ModelStatus,
    TensorLike,
    as_tensor,
    check_version_choice,
)
from clients.errors import ClientError
from clients.grpc_client import GrpcChannel, GrpcOptions
from clients.rest_client import HttpOptions, HttpTransport
from serving import codec, v2_codec
from serving.errors import InvalidArgument
from serving.proto import inference_pb2, inference_pb2_grpc

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_PARAMETER = v2_codec.SIGNATURE_PARAMETER
# This server's model metadata properties: the model's signature names (comma-separated) and the
# version the metadata describes (the one a label or "" resolved to).
SIGNATURES_PROPERTY = "signatures"
VERSION_PROPERTY = "version"
CLASSIFIED_OUTPUT = "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"
# What the repository index's states are in TF Serving's words (ModelStatus.state).
_STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNLOADING": "UNLOADING", "UNAVAILABLE": "END"}
PREDICT_METHOD = "tensorflow/serving/predict"
_NO_LIMIT = 1 << 62  # the byte bound of tensors decoded from an answer already received

# (name, parameters) of one requested output.
RequestedOutput = tuple[str, Mapping[str, Any]]


def version_string(version: int | None, label: str | None) -> str:
    """The V2 version of a TF Serving version choice: the number, the label, or "" (the newest)."""
    check_version_choice(version, label)
    if version is not None:
        return str(version)
    return label or ""


def _input_array(name: str, value: TensorLike) -> np.ndarray:
    array = as_tensor(name, value)
    try:
        v2_codec.datatype_of(array.dtype)
    except InvalidArgument as exc:
        raise ClientError("INVALID_ARGUMENT", None, f"input '{name}': {exc.message}") from exc
    return array


def _tensor_description(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A V2 tensor metadata entry as `Client.metadata` describes tensors: {"dtype", "shape"}."""
    try:
        dtype = codec.dtype_name(v2_codec.dtype_of(entry.get("datatype"), str(entry.get("name"))))
    except InvalidArgument:
        dtype = "unknown"
    return {"dtype": dtype, "shape": [int(d) for d in entry.get("shape", [])]}


def _signature_description(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "method": PREDICT_METHOD,
        "inputs": {e["name"]: _tensor_description(e) for e in sorted(metadata["inputs"], key=lambda e: e["name"])},
        "outputs": {e["name"]: _tensor_description(e) for e in sorted(metadata["outputs"], key=lambda e: e["name"])},
    }


def parse_classes(values: np.ndarray, labelled: Sequence[str] | None = None) -> Classes:
    """The classification extension's "<score>:<index>[:<label>]" strings, per row -> (label, score)
    for every class, in class index order (the label is the index when the model has none)."""
    rows: Classes = []
    for row in np.asarray(values, dtype=object).reshape(values.shape[0], -1):
        entries: list[tuple[int, str, float]] = []
        for element in row:
            text = element.decode("utf-8") if isinstance(element, bytes) else str(element)
            parts = text.split(":", 2)
            try:
                score, index = float(parts[0]), int(parts[1])
            except (IndexError, ValueError):
                raise ClientError("INTERNAL", None, f"not a classification '<score>:<index>[:<label>]': {text!r}") from None
            label = parts[2] if len(parts) == 3 else (labelled[index] if labelled else str(index))
            entries.append((index, label, score))
        rows.append([(label, score) for _, label, score in sorted(entries)])
    return rows


def _feature_array(value: Any) -> np.ndarray:
    """One example's feature as an array; a single str/bytes is a 0-d string (no numpy 'S' padding)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, bytes | str):
        scalar = np.empty((), dtype=codec.STRING)
        scalar[()] = value
        return scalar
    return np.asarray(value)


def _example_inputs(examples: Sequence[ExampleLike], input_types: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Examples (feature name -> value) as one batch tensor per feature, cast to the input's datatype."""
    if not examples:
        raise ClientError("INVALID_ARGUMENT", None, "classify needs at least one example")
    names = list(examples[0])
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        rows = []
        for example in examples:
            if name not in example:
                raise ClientError("INVALID_ARGUMENT", None, f"every example needs feature '{name}'")
            rows.append(as_tensor(name, _feature_array(example[name])))
        batch = np.stack(rows)
        datatype = input_types.get(name)
        if datatype is not None and datatype != "BYTES" and batch.dtype != codec.STRING:
            batch = batch.astype(v2_codec.DATATYPES[datatype], copy=False)
        inputs[name] = batch
    return inputs


def _served_version(metadata: Mapping[str, Any], wanted: str) -> int:
    """The version a metadata answer describes: this server's `version` property, else the one asked
    for, else the newest listed (0 when none is a number)."""
    served = str(metadata.get("properties", {}).get(VERSION_PROPERTY, ""))
    if served.isdigit():
        return int(served)
    if wanted.isdigit():
        return int(wanted)
    numbers = [int(v) for v in metadata.get("versions", []) if str(v).isdigit()]
    return max(numbers, default=0)


class V2Client(Client):
    """What both V2 transports share: the TF Serving-shaped calls, built on the V2 ones."""

    def __init__(self) -> None:
        self._metadata_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- the protocol's calls (per transport) ------------------------------------------------------

    @abc.abstractmethod
    def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server is live."""

    @abc.abstractmethod
    def ready(self, model: str | None = None, version: str = "", *, timeout: float | None = None) -> bool:
        """Whether the server (`model` None) or a model version is ready for inference."""

    @abc.abstractmethod
    def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        """{"name", "version", "extensions"}."""

    @abc.abstractmethod
    def model_metadata(self, name: str, version: str = "", *, timeout: float | None = None) -> dict[str, Any]:
        """{"name", "versions", "platform", "inputs": [{"name", "datatype", "shape"}], "outputs", "properties"}."""

    @abc.abstractmethod
    def infer(
        self,
        name: str,
        inputs: Mapping[str, TensorLike],
        *,
        version: str = "",
        outputs: Sequence[RequestedOutput] = (),
        parameters: Mapping[str, str | int | bool] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference; output name -> array, in the answer's order."""

    @abc.abstractmethod
    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list[dict[str, str]]:
        """[{"name", "version", "state", "reason"}, ...] from the model repository extension."""

    @abc.abstractmethod
    def load(self, model: str, config: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> None:
        """Load (or reload) a model through the model repository extension; `config` (e.g.
        {"base_path": "/models/x"}) travels as the `config` parameter, JSON, as tritonclient sends it."""

    @abc.abstractmethod
    def unload(self, model: str, *, timeout: float | None = None) -> None:
        """Unload a model through the model repository extension."""

    # -- TF Serving's calls ------------------------------------------------------------------------

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
        outputs = self.infer(
            model,
            inputs,
            version=version_string(version, label),
            outputs=[(name, {}) for name in output_filter or ()],
            parameters={SIGNATURE_PARAMETER: signature} if signature else None,
            timeout=timeout,
        )
        return dict(sorted(outputs.items()))

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
        described = self._cached_metadata(model, signature or DEFAULT_SIGNATURE, version_string(version, label), timeout)
        outputs = {e["name"]: e for e in described["outputs"]}
        name = CLASSIFIED_OUTPUT if CLASSIFIED_OUTPUT in outputs else next(iter(outputs)) if len(outputs) == 1 else None
        if name is None:
            raise ClientError(
                "FAILED_PRECONDITION", 400, f"model '{model}' has no '{CLASSIFIED_OUTPUT}' output to classify ({sorted(outputs)})"
            )
        shape = outputs[name]["shape"]
        if len(shape) != 2 or shape[-1] <= 0:
            raise ClientError(
                "FAILED_PRECONDITION", 400, f"output '{name}' has shape {shape}, not [batch, classes] with a known class count"
            )
        inputs = _example_inputs(examples, {e["name"]: e["datatype"] for e in described["inputs"]})
        answer = self.infer(
            model,
            inputs,
            version=version_string(version, label),
            outputs=[(name, {"classification": int(shape[-1])})],
            parameters={SIGNATURE_PARAMETER: signature} if signature else None,
            timeout=timeout,
        )
        return parse_classes(answer[name])

    def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        wanted = version_string(version, label)
        default = self.model_metadata(model, wanted, timeout=timeout)
        self._remember(model, DEFAULT_SIGNATURE, wanted, default)
        signatures = {DEFAULT_SIGNATURE: _signature_description(default)}
        listed = default.get("properties", {}).get(SIGNATURES_PROPERTY, "")
        for name in (s for s in listed.split(",") if s and s != DEFAULT_SIGNATURE):
            described = self.model_metadata(f"{model}.{name}", wanted, timeout=timeout)
            self._remember(model, name, wanted, described)
            signatures[name] = _signature_description(described)
        return {"name": model, "version": _served_version(default, wanted), "signatures": dict(sorted(signatures.items()))}

    def status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float | None = None,
    ) -> list[ModelStatus]:
        check_version_choice(version, label)
        if label is not None:  # the index knows numbers only: ask which version the label names
            version = _served_version(self.model_metadata(model, label, timeout=timeout), label)
            if version == 0:
                raise ClientError("UNIMPLEMENTED", 501, f"the server does not say which version label '{label}' names")
        entries = [e for e in self.repository_index(timeout=timeout) if e.get("name") == model]
        if not entries:
            raise ClientError("NOT_FOUND", 404, f"model '{model}' is not in the server's repository index")
        found = [
            ModelStatus(int(e["version"]), _STATES.get(e.get("state", ""), "UNKNOWN"), e.get("reason") or None)
            for e in entries
            if str(e.get("version", "")).isdigit() and (version is None or int(e["version"]) == version)
        ]
        if version is not None and not found:
            raise ClientError("NOT_FOUND", 404, f"model '{model}' has no version {version}")
        return sorted(found, key=lambda s: s.version)

    def _remember(self, model: str, signature: str, version: str, described: dict[str, Any]) -> None:
        with self._lock:
            self._metadata_cache[(f"{model}/{signature}", version)] = described

    def _cached_metadata(self, model: str, signature: str, version: str, timeout: float | None) -> dict[str, Any]:
        key = (f"{model}/{signature}", version)
        with self._lock:
            found = self._metadata_cache.get(key)
        if found is None:
            name = model if signature == DEFAULT_SIGNATURE else f"{model}.{signature}"
            found = self.model_metadata(name, version, timeout=timeout)
            self._remember(model, signature, version, found)
        return found


# -- gRPC ------------------------------------------------------------------------------------------


def _parameter(value: str | int | bool) -> inference_pb2.InferParameter:
    if isinstance(value, bool):
        return inference_pb2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return inference_pb2.InferParameter(int64_param=value)
    return inference_pb2.InferParameter(string_param=value)


def decode_infer_response(answer: inference_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """A ModelInferResponse's outputs -> output name -> array: `raw_output_contents` where the server
    answered raw (this server and Triton do for raw requests), else each output's typed `contents`."""
    result: dict[str, np.ndarray] = {}
    try:
        for index, tensor in enumerate(answer.outputs):
            shape = [int(d) for d in tensor.shape]
            if index < len(answer.raw_output_contents):
                raw = answer.raw_output_contents[index]
                result[tensor.name] = v2_codec.decode_raw(tensor.datatype, shape, raw, tensor.name, len(raw))
            else:
                # The answer is in memory already, and its values are counted before the shape
                # allocates anything: no byte limit to apply.
                result[tensor.name] = v2_codec.decode_contents(
                    tensor.datatype, shape, tensor.contents, tensor.name, _NO_LIMIT
                )
    except InvalidArgument as exc:
        raise ClientError("INTERNAL", None, f"undecodable output in the answer: {exc.message}") from exc
    return result


class V2GrpcClient(V2Client):
    """Blocking client of `inference.GRPCInferenceService`; one channel, thread-safe."""

    def __init__(self, target: str, **options: Unpack[GrpcOptions]) -> None:
        """`options`: those of `GrpcClient` (`clients.grpc_client.GrpcChannel`), with the same meaning."""
        super().__init__()
        self._grpc = GrpcChannel(target, **options)
        self.target = target
        self._stub = inference_pb2_grpc.GRPCInferenceServiceStub(self._grpc.channel)

    def live(self, *, timeout: float | None = None) -> bool:
        return bool(self._grpc.call(self._stub.ServerLive, inference_pb2.ServerLiveRequest(), timeout).live)

    def ready(self, model: str | None = None, version: str = "", *, timeout: float | None = None) -> bool:
        if model is None:
            return bool(self._grpc.call(self._stub.ServerReady, inference_pb2.ServerReadyRequest(), timeout).ready)
        try:
            request = inference_pb2.ModelReadyRequest(name=model, version=version)
            return bool(self._grpc.call(self._stub.ModelReady, request, timeout).ready)
        except ClientError as exc:
            if exc.code == "UNAVAILABLE":  # known, not loaded (yet)
                return False
            raise

    def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        answer = self._grpc.call(self._stub.ServerMetadata, inference_pb2.ServerMetadataRequest(), timeout)
        return {"name": answer.name, "version": answer.version, "extensions": list(answer.extensions)}

    def model_metadata(self, name: str, version: str = "", *, timeout: float | None = None) -> dict[str, Any]:
        request = inference_pb2.ModelMetadataRequest(name=name, version=version)
        answer = self._grpc.call(self._stub.ModelMetadata, request, timeout)

        def tensors(entries: Iterable[Any]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]} for t in entries]

        return {
            "name": answer.name,
            "versions": list(answer.versions),
            "platform": answer.platform,
            "inputs": tensors(answer.inputs),
            "outputs": tensors(answer.outputs),
            "properties": dict(answer.properties),
        }

    def infer(
        self,
        name: str,
        inputs: Mapping[str, TensorLike],
        *,
        version: str = "",
        outputs: Sequence[RequestedOutput] = (),
        parameters: Mapping[str, str | int | bool] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = inference_pb2.ModelInferRequest(model_name=name, model_version=version, id=request_id)
        for key, setting in (parameters or {}).items():
            request.parameters[key].CopyFrom(_parameter(setting))
        for input_name, value in inputs.items():
            array = _input_array(input_name, value)
            request.inputs.add(name=input_name, datatype=v2_codec.datatype_of(array.dtype), shape=array.shape)
            request.raw_input_contents.append(v2_codec.encode_raw(array))
        for output_name, output_parameters in outputs:
            entry = request.outputs.add(name=output_name)
            for key, setting in output_parameters.items():
                entry.parameters[key].CopyFrom(_parameter(setting))
        return decode_infer_response(self._grpc.call(self._stub.ModelInfer, request, timeout))

    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list[dict[str, str]]:
        answer = self._grpc.call(self._stub.RepositoryIndex, inference_pb2.RepositoryIndexRequest(ready=ready_only), timeout)
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in answer.models]

    def load(self, model: str, config: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> None:
        request = inference_pb2.RepositoryModelLoadRequest(model_name=model)
        if config is not None:
            request.parameters["config"].string_param = orjson.dumps(config).decode()
        self._grpc.call(self._stub.RepositoryModelLoad, request, timeout)

    def unload(self, model: str, *, timeout: float | None = None) -> None:
        request = inference_pb2.RepositoryModelUnloadRequest(model_name=model)
        self._grpc.call(self._stub.RepositoryModelUnload, request, timeout)

    def close(self) -> None:
        self._grpc.close()


# -- REST ------------------------------------------------------------------------------------------


def _json_data(array: np.ndarray) -> list[Any] | None:
    """A tensor's values as V2 JSON `data` (flat, row-major); BYTES as UTF-8 text. None for BYTES
    that are not UTF-8 (an encoded photo): JSON cannot carry them, so they go as binary data."""
    flat = array.reshape(-1)
    if array.dtype == codec.STRING:
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
        except UnicodeDecodeError:
            return None
    return flat.tolist()


def _json_output(entry: Mapping[str, Any]) -> np.ndarray:
    name = str(entry.get("name"))
    dtype = v2_codec.dtype_of(entry.get("datatype"), name)
    shape = [int(d) for d in entry.get("shape", [])]
    data = entry.get("data", [])
    if dtype == codec.STRING:
        flat = np.empty(len(data), dtype=codec.STRING)
        flat[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in data]
        return flat.reshape(shape)
    return np.asarray(data, dtype=dtype).reshape(shape)


class V2RestClient(V2Client):
    """Blocking client of the V2 REST API; `binary` (default, as `tritonclient.http`) sends and asks
    for tensors as binary tensor data, `binary=False` as JSON `data`."""

    def __init__(self, base_url: str, *, binary: bool = True, **options: Unpack[HttpOptions]) -> None:
        """`options`: those of `RestClient` (`clients.rest_client.HttpTransport`), with the same meaning."""
        super().__init__()
        self.binary = binary
        self._http = HttpTransport(base_url, **options)
        self.base_url = self._http.base_url

    def _model_url(self, name: str, version: str, suffix: str = "") -> str:
        url = f"{self.base_url}/v2/models/{quote(name, safe='')}"
        if version:
            url += f"/versions/{quote(version, safe='')}"
        return url + suffix

    def _get(self, url: str, timeout: float | None) -> dict[str, Any]:
        return self._http.request_json("GET", url, deadline=self._http.deadline(timeout))

    def _post(self, url: str, body: Any, timeout: float | None) -> dict[str, Any]:
        return self._http.request_json("POST", url, body, deadline=self._http.deadline(timeout))

    def live(self, *, timeout: float | None = None) -> bool:
        # The status says it (Triton answers 200 with an empty body, this server {"live": true}).
        url = f"{self.base_url}/v2/health/live"
        response = self._http.send("GET", url, deadline=self._http.deadline(timeout), retry=False, accept=(503,))
        return response.status_code == 200

    def ready(self, model: str | None = None, version: str = "", *, timeout: float | None = None) -> bool:
        url = f"{self.base_url}/v2/health/ready" if model is None else self._model_url(model, version, "/ready")
        response = self._http.send("GET", url, deadline=self._http.deadline(timeout), retry=False, accept=(503,))
        return response.status_code == 200

    def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._get(f"{self.base_url}/v2", timeout)

    def model_metadata(self, name: str, version: str = "", *, timeout: float | None = None) -> dict[str, Any]:
        answer = self._get(self._model_url(name, version), timeout)
        for key, empty in (("inputs", []), ("outputs", []), ("properties", {})):
            answer.setdefault(key, empty)
        return answer

    def infer(
        self,
        name: str,
        inputs: Mapping[str, TensorLike],
        *,
        version: str = "",
        outputs: Sequence[RequestedOutput] = (),
        parameters: Mapping[str, str | int | bool] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        body, headers = encode_infer_body(
            inputs, binary=self.binary, outputs=outputs, parameters=parameters, request_id=request_id
        )
        response = self._http.send(
            "POST", self._model_url(name, version, "/infer"), data=body, headers=headers,
            deadline=self._http.deadline(timeout),
        )
        return decode_infer_answer(response.content, response.headers.get(HEADER_LENGTH), response.status_code)

    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list[dict[str, str]]:
        response = self._http.send(
            "POST", f"{self.base_url}/v2/repository/index", json={"ready": ready_only}, deadline=self._http.deadline(timeout)
        )
        try:
            entries = response.json()
        except ValueError:
            entries = None
        if not isinstance(entries, list):
            raise ClientError("INTERNAL", response.status_code, "the repository index is not a JSON list")
        return [{k: str(v) for k, v in e.items()} for e in entries if isinstance(e, dict)]

    def load(self, model: str, config: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> None:
        url = f"{self.base_url}/v2/repository/models/{quote(model, safe='')}/load"
        body = {"parameters": {"config": orjson.dumps(config).decode()}} if config is not None else {}
        self._http.send("POST", url, json=body, deadline=self._http.deadline(timeout))

    def unload(self, model: str, *, timeout: float | None = None) -> None:
        url = f"{self.base_url}/v2/repository/models/{quote(model, safe='')}/unload"
        self._http.send("POST", url, json={}, deadline=self._http.deadline(timeout))

    def close(self) -> None:
        self._http.close()


def encode_infer_body(
    inputs: Mapping[str, TensorLike],
    *,
    binary: bool = True,
    outputs: Sequence[RequestedOutput] = (),
    parameters: Mapping[str, str | int | bool] | None = None,
    request_id: str = "",
) -> tuple[bytes, dict[str, str]]:
    """An infer request's body and headers: JSON, then (`binary`) each input's raw bytes, with
    `Inference-Header-Content-Length` saying where the JSON ends; `binary` also asks for binary outputs."""
    body: dict[str, Any] = {"inputs": []}
    if request_id:
        body["id"] = request_id
    request_parameters: dict[str, Any] = dict(parameters or {})
    if binary:
        request_parameters.setdefault("binary_data_output", True)
    if request_parameters:
        body["parameters"] = request_parameters
    chunks: list[bytes] = []
    for input_name, value in inputs.items():
        array = _input_array(input_name, value)
        entry: dict[str, Any] = {"name": input_name, "datatype": v2_codec.datatype_of(array.dtype), "shape": list(array.shape)}
        data = None if binary else _json_data(array)
        if data is None:
            raw = v2_codec.encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = data
        body["inputs"].append(entry)
    if outputs:
        body["outputs"] = [{"name": n, "parameters": dict(p)} if p else {"name": n} for n, p in outputs]
    header = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    if chunks:
        headers[HEADER_LENGTH] = str(len(header))
    return header + b"".join(chunks), headers


def decode_infer_answer(content: bytes, header_length: str | None, status: int) -> dict[str, np.ndarray]:
    """An infer answer (JSON, or JSON + binary tensor data) -> output name -> array."""
    try:
        length = int(header_length) if header_length is not None else len(content)
        if not 0 <= length <= len(content):
            raise ValueError(header_length)
        payload = orjson.loads(content[:length])
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ClientError("INTERNAL", status, f"unreadable infer answer: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("outputs"), list):
        raise ClientError("INTERNAL", status, 'the infer answer has no "outputs" list')
    binary = memoryview(content)[length:]
    offset = 0
    result: dict[str, np.ndarray] = {}
    try:
        for entry in payload["outputs"]:
            name = str(entry.get("name"))
            size = (entry.get("parameters") or {}).get("binary_data_size")
            if size is None:
                result[name] = _json_output(entry)
                continue
            raw = bytes(binary[offset : offset + int(size)])
            offset += int(size)
            result[name] = v2_codec.decode_raw(entry.get("datatype"), entry.get("shape"), raw, name, len(raw))
    except (InvalidArgument, TypeError, ValueError) as exc:
        message = exc.message if isinstance(exc, InvalidArgument) else str(exc)
        raise ClientError("INTERNAL", status, f"undecodable output in the answer: {message}") from exc
    return result


__all__ = [
    "V2Client",
    "V2GrpcClient",
    "V2RestClient",
    "decode_infer_answer",
    "decode_infer_response",
    "encode_infer_body",
    "parse_classes",
    "version_string",
]
