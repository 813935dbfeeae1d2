"""Model server speaking TensorFlow Serving's gRPC and REST APIs, backed by ONNX Runtime.

Nothing in this package imports TensorFlow, except `serving.backends.tensorflow_backend`, lazily.
"""

__version__ = "0.1.0"
