"""TensorFlow SavedModel backend (optional extra `[tf]`): serves `saved_model.pb` directly.

The only module of the server that imports TensorFlow, and only when `--backend tensorflow` is
chosen. Signatures come from the SavedModel itself, so string ops (image decoding, TextVectorization)
run in the graph and `prepare` has nothing to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendOptions, Signature, TensorMeta
from serving.codec import STRING
from serving.manifest import PREDICT_METHOD, ManifestError, read_manifest


class TensorFlowBackend:
    platform = "tensorflow"

    def __init__(self, version_dir: Path, options: BackendOptions) -> None:
        import tensorflow as tf

        if options.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
        if options.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
        self._tf = tf
        self._loaded = tf.saved_model.load(str(version_dir))
        try:
            self.labels: tuple[str, ...] = read_manifest(version_dir, verify_files=False).labels
        except ManifestError:
            self.labels = ()
        self._functions: dict[str, Any] = dict(self._loaded.signatures)
        self._signatures: dict[str, Signature] = {}
        for name, function in self._functions.items():
            _, kwargs = function.structured_input_signature
            inputs = {key: self._meta(spec) for key, spec in kwargs.items()}
            outputs = {key: self._meta(spec) for key, spec in function.structured_outputs.items()}
            self._signatures[name] = Signature(name, PREDICT_METHOD, inputs, outputs)

    def _meta(self, spec: Any) -> TensorMeta:
        dtype = STRING if spec.dtype == self._tf.string else np.dtype(spec.dtype.as_numpy_dtype)
        shape = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
        return TensorMeta(dtype, shape)

    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        tf = self._tf
        feed = {
            name: tf.constant(value.tolist() if value.dtype == STRING else value, dtype=tf.string)
            if value.dtype == STRING
            else tf.constant(value)
            for name, value in inputs.items()
        }
        results = self._functions[signature](**feed)
        wanted = list(outputs) if outputs is not None else list(results)
        return {name: results[name].numpy() for name in wanted}

    def close(self) -> None:
        self._functions.clear()
