"""Inference engines behind one protocol (`serving.backends.base.Backend`), and the one loader.

`load_backend` lives here, not in `base`, so the protocol module imports no engine module and the
engines import only the protocol: the arrows point one way (engines -> base, loader -> engines).
"""

from __future__ import annotations

from pathlib import Path

from serving.backends.base import Backend, BackendOptions, Signature, TensorMeta

__all__ = ["Backend", "BackendOptions", "Signature", "TensorMeta", "load_backend"]


def load_backend(platform: str, version_dir: Path, options: BackendOptions) -> Backend:
    """Load one model version with the named engine ("onnx" or "tensorflow"), importing only that one."""
    if platform == "onnx":
        from serving.backends.onnx_backend import OnnxBackend

        return OnnxBackend(version_dir, options)
    if platform == "tensorflow":
        from serving.backends.tensorflow_backend import TensorFlowBackend

        return TensorFlowBackend(version_dir, options)
    raise ValueError(f"unknown backend {platform!r} (expected 'onnx' or 'tensorflow')")
