"""Export: Keras model -> SavedModel (named signatures) -> ONNX -> parity check -> manifest -> publish.

`export.pipeline` holds the generic steps, `export.gradcam` the convertible Grad-CAM builder,
`python -m export <model>` publishes a model version and `python -m export.evaluate` scores the
published ONNX models without TensorFlow. Importing this package does not import TensorFlow.
"""
