"""TensorFlow Serving's gRPC API over grpc.aio."""
