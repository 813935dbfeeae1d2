"""The one data plane between the protocols and the engines.

gRPC and REST both decode their wire format into numpy and call `predict`, `classify`, `metadata`
or `status` here. A request is validated fully (model, version, signature, input names, dtypes,
shapes, sizes, finite values) and prepared (images decoded, text tokenized) before it reaches a
batch queue, so one bad request can never fail a batch that other callers share.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from serving.backends import Backend, Signature, TensorMeta
from serving.batching import Batcher, rows_of
from serving.codec import STRING, dtype_name
from serving.config import BatchingConfig, Limits
from serving.errors import FailedPrecondition, InvalidArgument
from serving.metrics import Metrics
from serving.repository import ModelVersion, Repository

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class Result:
    version: ModelVersion
    signature: str
    outputs: dict[str, np.ndarray]


def validate_inputs(
    signature: Signature, inputs: Mapping[str, np.ndarray], limits: Limits | None = None
) -> int:
    """Raise InvalidArgument unless `inputs` is exactly what `signature` takes, within `limits`;
    returns the number of rows."""
    limits = limits or Limits()
    given = set(inputs)
    expected = set(signature.inputs)
    for alternative, replaced in signature.alternatives.items():
        if alternative in given:
            expected = (expected - {replaced}) | {alternative}
    if not given:
        raise InvalidArgument(
            f"request has no inputs; signature '{signature.name}' takes {_describe(signature)}"
        )
    unknown, missing = sorted(given - expected), sorted(expected - given)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise InvalidArgument(
            f"{'; '.join(parts)}: signature '{signature.name}' takes {_describe(signature)}"
        )

    batch: int | None = None
    for name, value in inputs.items():
        meta = signature.inputs.get(name) or TensorMeta(STRING, (-1,))
        _check_tensor(name, value, meta, limits.max_string_bytes)
        rows = value.shape[0]
        if batch is not None and rows != batch:
            raise InvalidArgument(f"inputs disagree on batch size: '{name}' has {rows} rows, others {batch}")
        batch = rows
    assert batch is not None
    if batch > limits.max_request_rows:
        raise InvalidArgument(
            f"request has {batch} rows, over the limit of {limits.max_request_rows} rows per request "
            f"(--max_request_rows): split it"
        )
    return batch


def _check_tensor(name: str, value: np.ndarray, meta: TensorMeta, max_string_bytes: int) -> None:
    if value.dtype != meta.dtype:
        raise InvalidArgument(
            f"input '{name}' must be {dtype_name(meta.dtype)}, got {dtype_name(value.dtype)}"
        )
    if value.ndim != len(meta.shape):
        raise InvalidArgument(
            f"input '{name}' must have rank {len(meta.shape)} (shape {_shape(meta.shape)}), got shape {list(value.shape)}"
        )
    for axis, (want, got) in enumerate(zip(meta.shape, value.shape, strict=True)):
        if want >= 0 and want != got:
            raise InvalidArgument(
                f"input '{name}' must have shape {_shape(meta.shape)}, got {list(value.shape)} (axis {axis})"
            )
    if value.shape[0] == 0:
        raise InvalidArgument(f"input '{name}' is an empty batch (0 rows)")
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        raise InvalidArgument(f"input '{name}' contains NaN or infinite values")
    if value.dtype == STRING:
        for element in value.reshape(-1):
            if not isinstance(element, bytes):
                raise InvalidArgument(f"input '{name}' holds a non-bytes element")
            if len(element) > max_string_bytes:
                raise InvalidArgument(
                    f"input '{name}' has an element of {len(element)} bytes, over the {max_string_bytes}-byte "
                    f"limit (--max_string_bytes)"
                )


def _shape(shape: Sequence[int]) -> str:
    return (
        "["
        + ", ".join("N" if i == 0 and d < 0 else ("?" if d < 0 else str(d)) for i, d in enumerate(shape))
        + "]"
    )


def _describe(signature: Signature) -> str:
    parts = [f"'{k}' {dtype_name(m.dtype)} {_shape(m.shape)}" for k, m in signature.inputs.items()]
    parts += [f"or '{k}' string [N] instead of '{r}'" for k, r in signature.alternatives.items()]
    return ", ".join(parts)


class DataPlane:
    def __init__(
        self,
        repository: Repository,
        metrics: Metrics,
        executor: Executor | None = None,
        batching: BatchingConfig | None = None,
        max_tensor_bytes: int = 1 << 30,
        inline_engine_seconds: float = 200e-6,
        limits: Limits | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.executor = executor
        self.batching = batching
        self.max_tensor_bytes = max_tensor_bytes
        self.limits = limits or Limits()
        # Engine calls expected to take less than this run on the event loop: for them the hop to
        # a worker thread (a future, two thread wake-ups, GIL hand-offs) costs more CPU than the
        # call itself. The expectation is the version's warm-up measurement (`EngineCost`), taken
        # before it served, so it is not inflated by the contention of worker threads under load.
        self.inline_engine_seconds = inline_engine_seconds

    # -- resolution ------------------------------------------------------------------------------

    def signature_of(self, version: ModelVersion, name: str) -> Signature:
        signatures = version.signatures()
        try:
            return signatures[name or DEFAULT_SIGNATURE]
        except KeyError:
            # TF Serving's code and wording (predict_util.cc), then what this version does have.
            raise FailedPrecondition(
                f'Serving signature key "{name}" not found. Model \'{version.name}\' version '
                f"{version.version} has signatures {sorted(signatures)}"
            ) from None

    def _inline(self, version: ModelVersion, signature: str, rows: int, requests: int = 1) -> bool:
        """Whether an engine call of `rows` rows answering `requests` requests runs on the event loop.

        A batch is run inline when its cost per request is under the threshold: each of its requests
        would have run inline on its own, so running them as one call takes the loop less time.
        """
        cost = version.engine_costs.get(signature)
        return cost is not None and cost.seconds(rows) < self.inline_engine_seconds * requests

    # -- predict ---------------------------------------------------------------------------------

    async def predict(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
        output_filter: Sequence[str] = (),
    ) -> Result:
        resolved = self.repository.resolve(model, version, label)
        # The lease keeps this version's engine open until the answer is computed, even if a newer
        # version replaces it meanwhile (no await between resolve and acquire: no gap to race).
        resolved.acquire()
        try:
            return await self._predict(resolved, inputs, signature, output_filter)
        finally:
            resolved.release()

    async def _predict(
        self,
        resolved: ModelVersion,
        inputs: dict[str, np.ndarray],
        signature: str,
        output_filter: Sequence[str],
    ) -> Result:
        sig = self.signature_of(resolved, signature)
        rows = validate_inputs(sig, inputs, self.limits)
        if self.batching is not None and rows > self.batching.max_batch_size:
            # TF Serving's answer (without large batch splitting, which is not offered here).
            raise InvalidArgument(
                f"Task size {rows} is larger than maximum input batch size {self.batching.max_batch_size}"
            )
        for name in output_filter:
            if not isinstance(name, str) or name not in sig.outputs:
                raise InvalidArgument(
                    f"output_filter names {name!r}, which signature '{sig.name}' does not have; "
                    f"outputs are {sorted(sig.outputs)}"
                )
        # A string element costs its bytes plus a fixed overhead: a million empty strings are not free.
        overhead = self.limits.string_element_overhead
        total = sum(
            v.nbytes if v.dtype != STRING else sum(map(len, v.reshape(-1))) + overhead * v.size
            for v in inputs.values()
        )
        if total > self.max_tensor_bytes:
            raise InvalidArgument(f"inputs total {total} bytes, over the {self.max_tensor_bytes}-byte limit")

        backend = resolved.backend
        assert backend is not None  # resolve() returns AVAILABLE versions; the lease keeps it so
        loop = asyncio.get_running_loop()
        prepared = (
            await loop.run_in_executor(self.executor, backend.prepare, sig.name, inputs)
            if sig.needs_prepare
            else inputs
        )
        if self.batching is not None:
            outputs = await self._batcher(resolved, sig.name).submit(prepared)
        elif self._inline(resolved, sig.name, rows_of(prepared)):
            outputs = self._run(resolved, backend, sig.name, prepared)
        else:
            outputs = await loop.run_in_executor(
                self.executor, self._run, resolved, backend, sig.name, prepared
            )
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        return Result(resolved, sig.name, outputs)

    def _run(
        self, version: ModelVersion, backend: Backend, signature: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = backend.run(signature, inputs)
        self.metrics.engine(version.name, signature).observe(
            rows_of(inputs), rows_of(inputs), time.perf_counter() - started
        )
        return outputs

    def _batcher(self, version: ModelVersion, signature: str) -> Batcher:
        """The version's batcher for `signature`, made on first use; the version owns and closes it."""
        batcher = version.batchers.get(signature)
        if batcher is None:
            assert self.batching is not None and version.backend is not None
            backend = version.backend
            engine = self.metrics.engine(version.name, signature)
            queued = self.metrics.queued_rows.labels(version.name)

            def observe(rows: int, padded: int, seconds: float) -> None:
                engine.observe(rows, padded, seconds)
                queued.set(sum(b.queued_rows for b in version.batchers.values()))

            batcher = Batcher(
                lambda tensors: backend.run(signature, tensors),
                self.batching,
                self.executor,
                observe,
                inline=lambda rows, requests: self._inline(version, signature, rows, requests),
            )
            version.batchers[signature] = batcher
        return batcher

    # -- classify --------------------------------------------------------------------------------

    async def classify(
        self,
        model: str,
        examples: list[dict[str, np.ndarray]],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
    ) -> tuple[Result, list[list[tuple[str, float]]]]:
        """Classify tf.Examples through a predict signature that returns `probabilities`.

        Each example's features are named like the signature's inputs; their values are stacked
        into a batch. Returns (label, score) per class in label order, as TF Serving's Classify.
        """
        if not examples:
            raise InvalidArgument("Classify needs at least one example")
        resolved = self.repository.resolve(model, version, label)
        sig = self.signature_of(resolved, signature)
        if "probabilities" not in sig.outputs or not resolved.backend or not resolved.backend.labels:
            raise FailedPrecondition(
                f"signature '{sig.name}' of model '{model}' has no labelled 'probabilities' output to classify with"
            )
        names = set(examples[0])
        if any(set(e) != names for e in examples):
            raise InvalidArgument("all examples must have the same features")
        inputs: dict[str, np.ndarray] = {}
        for name in names:
            meta = sig.inputs.get(name) or TensorMeta(STRING, (-1,))
            values = [e[name] for e in examples]
            per_row = math.prod(d for d in meta.shape[1:]) if all(d >= 0 for d in meta.shape[1:]) else None
            if meta.dtype == STRING:
                if any(v.size != 1 for v in values):
                    raise InvalidArgument(f"feature '{name}' must hold exactly one bytes value per example")
                stacked = np.empty(len(values), dtype=STRING)
                stacked[:] = [v.reshape(-1)[0] for v in values]
            else:
                if per_row is None or any(v.size != per_row for v in values):
                    raise InvalidArgument(
                        f"feature '{name}' must hold {per_row} values per example (shape {_shape(meta.shape)})"
                    )
                stacked = np.stack([v.astype(meta.dtype).reshape(meta.shape[1:]) for v in values])
            inputs[name] = stacked
        labels = resolved.backend.labels  # read now: the version may be unloaded once predict returns
        result = await self.predict(model, inputs, version=resolved.version, signature=sig.name)
        probabilities = result.outputs["probabilities"]
        classes = [[(labels[i], float(row[i])) for i in range(len(labels))] for row in probabilities]
        return result, classes

    # -- metadata and status ---------------------------------------------------------------------

    def metadata(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> tuple[ModelVersion, Mapping[str, Signature]]:
        resolved = self.repository.resolve(model, version, label)
        return resolved, resolved.signatures()


