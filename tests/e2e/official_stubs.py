"""Runs in a subprocess: TF Serving's own Python stubs (tensorflow-serving-api) on either side.

    python official_stubs.py client TARGET INPUT.npy OUTPUT.npz
        Predict + GetModelMetadata + GetModelStatus against TARGET with the official stubs and
        tf.make_tensor_proto; writes what came back.
    python official_stubs.py server SAVED_MODEL_BASE PORT_FILE
        A minimal PredictionService built from the official servicer base class that runs the
        SavedModel with TensorFlow: stands in for stock tensorflow_model_server, so our client can
        be checked against TF's own message classes.

TensorFlow's descriptor pool and ours cannot share a process, hence the subprocess.
"""

from __future__ import annotations

import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def client(target: str, input_path: str, output_path: str) -> None:
    images = np.load(input_path)
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.model_spec.signature_name = "serving_default"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.float32))
        response = stub.Predict(request, timeout=30)
        probabilities = tf.make_ndarray(response.outputs["probabilities"])

        explain = predict_pb2.PredictRequest()
        explain.CopyFrom(request)
        explain.model_spec.signature_name = "explain"
        heatmap = tf.make_ndarray(stub.Predict(explain, timeout=30).outputs["heatmap"])

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata_request.model_spec.name = "digits"
        metadata = stub.GetModelMetadata(metadata_request, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "digits"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)

        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = "digits"
        bad.inputs["image"].CopyFrom(tf.make_tensor_proto(images[:, :20], dtype=tf.float32))
        try:
            stub.Predict(bad, timeout=30)
            bad_code = "OK"
        except grpc.RpcError as error:
            bad_code = error.code().name
    np.savez(
        output_path,
        probabilities=probabilities,
        heatmap=heatmap,
        version=response.model_spec.version.value,
        signatures=np.array(sorted(signatures.signature_def)),
        input_shape=np.array(
            [d.size for d in signatures.signature_def["serving_default"].inputs["image"].tensor_shape.dim]
        ),
        states=np.array([s.state for s in status.model_version_status]),
        bad_code=np.array(bad_code),
    )


class SavedModelService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, base: Path) -> None:
        self.version = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
        self.loaded = tf.saved_model.load(str(base / str(self.version)))

    def Predict(self, request, context):  # type: ignore[no-untyped-def]
        function = self.loaded.signatures[request.model_spec.signature_name or "serving_default"]
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        outputs = function(**inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.version
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def server(base: str, port_file: str) -> None:
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        SavedModelService(Path(base)), grpc_server
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    Path(port_file).write_text(str(port))
    grpc_server.wait_for_termination(timeout=120)


if __name__ == "__main__":
    {"client": client, "server": server}[sys.argv[1]](*sys.argv[2:])
