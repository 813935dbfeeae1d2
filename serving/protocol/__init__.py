"""Wire protocols in front of the data plane: `grpc/` (TF Serving's gRPC API) and `rest/` (its REST API)."""
