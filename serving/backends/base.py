"""The `Backend` protocol: what the data plane needs from an inference engine, and nothing more.

Two implementations: ONNX Runtime (`onnx_backend`, the default, no TensorFlow) and TensorFlow
SavedModel (`tensorflow_backend`, optional extra). Each imports its engine lazily, so that choosing
one never loads the other.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.preprocess import PreprocessLimits


@dataclass(frozen=True)
class TensorMeta:
    dtype: np.dtype  # np.dtype(object) for strings
    shape: tuple[int, ...]  # -1 where unknown; batch dimension first
    # The engine takes a tensor of any shape here (a SavedModel's TF1 feed or unknown-rank input,
    # see `tensorflow_backend.GraphTensor`): requests are not held to `shape`.
    any_shape: bool = False

    @functools.cached_property
    def known_tail(self) -> tuple[int, ...] | None:
        """The dimensions after the batch one when the batch is free and all of them are known
        (a tensor fits when its shape ends with exactly these), else None."""
        if self.shape and self.shape[0] < 0 and all(size >= 0 for size in self.shape[1:]):
            return self.shape[1:]
        return None


@dataclass(frozen=True)
class Signature:
    name: str
    method: str  # "tensorflow/serving/predict" or ".../classify"
    inputs: Mapping[str, TensorMeta]
    outputs: Mapping[str, TensorMeta]
    # Inputs a request may send instead of one of `inputs` (e.g. `image_bytes` instead of `image`):
    # alternative name -> the input it replaces. The backend converts them in `prepare`. They are not
    # part of the published SignatureDef.
    alternatives: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def needs_prepare(self) -> bool:
        """Whether requests need `Backend.prepare` (decoding, tokenizing) before the engine."""
        return bool(self.alternatives) or any(m.dtype == np.dtype(object) for m in self.inputs.values())


@dataclass(frozen=True)
class BackendOptions:
    intra_op_threads: int = 0  # 0: the engine's default
    inter_op_threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Fail the load instead of running on the CPU when no requested accelerator initialises.
    require_accelerator: bool = False
    # --per_process_gpu_memory_fraction: the CUDA provider's arena cap, as a fraction of the device.
    gpu_memory_fraction: float = 0.0
    preprocess: PreprocessLimits = field(default_factory=PreprocessLimits)


class Backend(Protocol):
    platform: str
    labels: tuple[str, ...]

    def signatures(self) -> Mapping[str, Signature]:
        """Signature name -> what it takes and returns."""
        ...

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Turn validated request tensors into the tensors `run` takes (decode images, tokenize).

        Runs before batching, per request; raises InvalidArgument for undecodable input.
        """
        ...

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one (possibly batched) call; `outputs` None means all of the signature's outputs."""
        ...

    def close(self) -> None: ...

