"""ONNX Runtime backend: serves `model.onnx` / `explain.onnx` as the manifest describes them.

The only module that imports onnxruntime. One InferenceSession per ONNX file, shared by every
signature bound to it; `run` is thread-safe (ONNX Runtime allows concurrent `run` calls) and
releases the GIL, so the data plane calls it from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendOptions, Signature, TensorMeta
from serving.codec import dtype_from_name
from serving.manifest import Manifest, SignatureManifest, TensorSpec, read_manifest
from serving.preprocess import Preprocessor, build_preprocessor


def _meta(spec: TensorSpec) -> TensorMeta:
    return TensorMeta(dtype=dtype_from_name(spec.dtype), shape=spec.shape)


class OnnxBackend:
    platform = "onnx"

    def __init__(self, version_dir: Path, options: BackendOptions) -> None:
        import onnxruntime as ort

        self.version_dir = version_dir
        self.manifest: Manifest = read_manifest(version_dir)
        self.labels = self.manifest.labels
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        # Idle worker threads must not spin: a server spends most of its time waiting for requests.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = set(ort.get_available_providers())
        providers = [p for p in options.providers if p in available] or ["CPUExecutionProvider"]
        self.providers = tuple(providers)

        self._sessions: dict[str, Any] = {}
        self._signatures: dict[str, Signature] = {}
        self._bindings: dict[str, SignatureManifest] = {}
        self._preprocessors: dict[str, Preprocessor] = {}
        for name, sig in self.manifest.signatures.items():
            if sig.onnx.file not in self._sessions:
                path = version_dir / sig.onnx.file
                self._sessions[sig.onnx.file] = ort.InferenceSession(
                    str(path), sess_options=session_options, providers=providers
                )
            alternatives: dict[str, str] = {}
            if sig.preprocess is not None:
                self._preprocessors[name] = build_preprocessor(
                    sig.preprocess.kind, version_dir, sig.preprocess.params
                )
                if sig.preprocess.input not in sig.inputs:
                    alternatives[sig.preprocess.input] = sig.preprocess.output
            self._bindings[name] = sig
            self._signatures[name] = Signature(
                name=name,
                method=sig.method,
                inputs={k: _meta(v) for k, v in sig.inputs.items()},
                outputs={k: _meta(v) for k, v in sig.outputs.items()},
                alternatives=alternatives,
            )

    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._bindings[signature]
        pre = binding.preprocess
        if pre is not None and pre.input in inputs:
            inputs = dict(inputs)
            inputs[pre.output] = self._preprocessors[signature](inputs.pop(pre.input))
        return inputs

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        binding = self._bindings[signature]
        session = self._sessions[binding.onnx.file]
        feed = {binding.onnx.inputs[name]: value for name, value in inputs.items()}
        wanted = list(outputs) if outputs is not None else list(binding.onnx.outputs)
        results = session.run([binding.onnx.outputs[name] for name in wanted], feed)
        return dict(zip(wanted, results, strict=True))

    def close(self) -> None:
        self._sessions.clear()
