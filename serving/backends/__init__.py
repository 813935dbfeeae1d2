"""Inference engines behind one protocol (`serving.backends.base.Backend`)."""

from serving.backends.base import Backend, BackendOptions, Signature, TensorMeta, load_backend

__all__ = ["Backend", "BackendOptions", "Signature", "TensorMeta", "load_backend"]
