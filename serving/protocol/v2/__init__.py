"""The Open Inference Protocol (KServe V2) beside TF Serving's API, over the same data plane.

`rest.py` serves `/v2/...` on the REST port (JSON and the binary tensor data extension), `grpc.py`
`inference.GRPCInferenceService` on the gRPC port, both built from `serving.protocol.Services`, so
auth, admission, limits, errors and metrics are the ones TF Serving's API uses. `common.py` holds
what they share (datatypes, names, tensors, the classification extension, model metadata
properties), `repository.py` the model repository extension. The clients are `clients.v2_client`.
"""
