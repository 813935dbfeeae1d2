"""The one data plane between the protocols and the engines.

gRPC and REST both decode their wire format into numpy and call `predict`, `classify`, `regress`,
`multi_inference`, `metadata` or `status` here. A request is validated fully (model, version, signature, input names, dtypes,
shapes, sizes, finite values) and prepared (images decoded, text tokenized) before it reaches a
batch queue, so one bad request can never fail a batch that other callers share.
"""

from __future__ import annotations

import asyncio
import functools
import math
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
from google.protobuf import text_format

from serving.accesslog import CURRENT, RequestRecord
from serving.backends import Backend, Signature, TensorMeta
from serving.batching import Batcher, rows_of
from serving.codec import STRING, data_type, dtype_name, example_bytes
from serving.config import BatchingConfig, Limits
from serving.errors import FailedPrecondition, InvalidArgument, Unimplemented
from serving.metrics import Metrics
from serving.proto import tensor_pb2
from serving.repository import ModelVersion, Repository

DEFAULT_SIGNATURE = "serving_default"


class Result(NamedTuple):  # (a tuple: made once per request, at a tuple's cost)
    version: ModelVersion
    signature: str
    outputs: dict[str, np.ndarray]


def validate_inputs(
    signature: Signature, inputs: Mapping[str, np.ndarray], limits: Limits | None = None
) -> int:
    """Raise InvalidArgument unless `inputs` is exactly what `signature` takes, within `limits`;
    returns the number of rows."""
    limits = limits or Limits()
    if not inputs:
        raise InvalidArgument(
            f"request has no inputs; signature '{signature.name}' takes {_describe(signature)}"
        )
    if inputs.keys() != signature.inputs.keys():  # (exactly the signature's inputs: nothing to check)
        _check_names(signature, set(inputs))

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


def _check_names(signature: Signature, given: set[str]) -> None:
    """InvalidArgument naming the unknown and missing inputs (an alternative may replace its input)."""
    expected = set(signature.inputs)
    for alternative, replaced in signature.alternatives.items():
        if alternative in given:
            expected = (expected - {replaced}) | {alternative}
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


def _check_tensor(name: str, value: np.ndarray, meta: TensorMeta, max_string_bytes: int) -> None:
    if value.dtype is not meta.dtype and value.dtype != meta.dtype:  # (`is`: the usual, cheap answer)
        raise InvalidArgument(
            f"input '{name}' must be {dtype_name(meta.dtype)}, got {dtype_name(value.dtype)}"
        )
    if meta.any_shape:
        # The engine takes any shape here (a TF1 graph's feed, an unknown-rank input: see
        # `serving.backends.tensorflow_backend.GraphTensor`); only the batch axis is needed.
        if value.ndim == 0:
            raise InvalidArgument(f"input '{name}' is a scalar: it needs a batch dimension")
    else:
        if value.ndim != len(meta.shape):
            raise InvalidArgument(
                f"input '{name}' must have rank {len(meta.shape)} (shape {_shape(meta.shape)}), got shape {list(value.shape)}"
            )
        tail = meta.known_tail
        if tail is None or value.shape[1:] != tail:  # (else it fits: one comparison)
            for axis, (want, got) in enumerate(zip(meta.shape, value.shape, strict=True)):
                if want >= 0 and want != got:
                    raise InvalidArgument(
                        f"input '{name}' must have shape {_shape(meta.shape)}, got {list(value.shape)} (axis {axis})"
                    )
    if value.shape[0] == 0:
        raise InvalidArgument(f"input '{name}' is an empty batch (0 rows)")
    if value.dtype.kind in "fc" and not all_finite(value):
        raise InvalidArgument(f"input '{name}' contains NaN or infinite values")
    if value.dtype.kind == "O":  # (STRING: the only object dtype)
        for element in value.reshape(-1):
            if not isinstance(element, bytes):
                raise InvalidArgument(f"input '{name}' holds a non-bytes element")
            if len(element) > max_string_bytes:
                raise InvalidArgument(
                    f"input '{name}' has an element of {len(element)} bytes, over the {max_string_bytes}-byte "
                    f"limit (--max_string_bytes)"
                )


# Arrays up to this many elements are checked for NaN and infinities on their bytes, without a numpy
# ufunc. On a request path that otherwise touches little of numpy, `np.isfinite(v).all()` on one
# digits image costs ~1 us when timed alone but ~25 us of event-loop time per request under load
# (h2load, 32 streams, 2-core VM: 2,404 -> 2,585 req/s with the byte test; the ufunc machinery's
# code and data are evicted between requests). The byte test costs ~0.8 ns per element, so past
# this size the ufunc is cheaper again.
FINITE_BY_BYTES_MAX_ELEMENTS = 8192
# Per IEEE 754 type: (bytes per value, the byte values that hold the sign and the top exponent bits
# of a NaN or an infinity). A value whose top byte is not one of them is finite; one whose top
# byte is may still be (the exponent's low bits are in the next byte): the ufunc then decides.
_NON_FINITE_TOP_BYTES = {
    2: bytes([0x7C, 0x7D, 0x7E, 0x7F, 0xFC, 0xFD, 0xFE, 0xFF]),  # float16: 5 exponent bits
    4: b"\x7f\xff",  # float32 (and complex64's parts): 8 exponent bits
    8: b"\x7f\xff",  # float64 (and complex128's parts): 11 exponent bits
}


def all_finite(value: np.ndarray) -> bool:
    """Whether a float or complex array holds no NaN and no infinity."""
    dtype = value.dtype
    width = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize  # the real and imaginary parts
    tops = _NON_FINITE_TOP_BYTES.get(width)
    if tops is not None and value.size <= FINITE_BY_BYTES_MAX_ELEMENTS:
        big_endian = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
        top = value.tobytes()[0 if big_endian else width - 1 :: width]  # (C order; any layout)
        for byte in tops:
            if byte in top:
                break  # maybe not finite: the ufunc decides
        else:
            return True
    return bool(np.isfinite(value).all())


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


# -- Classify / Regress / MultiInference ---------------------------------------------------------

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
# TF Serving's signature keys for them (TensorFlow's signature_constants).
EXAMPLES_INPUT = "inputs"
CLASSES_OUTPUT = "classes"
SCORES_OUTPUT = "scores"
REGRESS_OUTPUT = "outputs"

# Examples as both protocols decode them: feature name -> values (float32, int64 or bytes objects),
# one mapping per example, the context's features already merged in (an example's own win).
Examples = Sequence[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class TaskSpec:
    """What a Classify, a Regress or one MultiInference task asks for."""

    model: str
    signature: str  # "" means serving_default
    method: str  # CLASSIFY_METHOD or REGRESS_METHOD (MultiInference: as the client sent it)


@dataclass(frozen=True)
class ExampleTask:
    """A task checked against its signature, ready to run."""

    signature: Signature
    method: str
    serialized: bool  # True: the serialized tf.Examples feed `inputs`; False: features feed inputs by name
    outputs: tuple[str, ...]  # the outputs it reads
    labels: tuple[str, ...] = ()  # class names of `probabilities` (ONNX classify)


@dataclass(frozen=True)
class TaskAnswer:
    result: Result
    method: str
    classes: list[list[tuple[str, float]]] | None = None  # classify: (label, score) per class per example
    values: list[float] | None = None  # regress: one per example


def _examples_to_inputs(signature: Signature, examples: Examples) -> dict[str, np.ndarray]:
    """Stack each feature over the examples into the signature input of the same name."""
    names = set(examples[0])
    if any(set(e) != names for e in examples):
        raise InvalidArgument("all examples must have the same features")
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        meta = signature.inputs.get(name) or TensorMeta(STRING, (-1,))  # unknown names: validate_inputs says so
        values = [e[name] for e in examples]
        if (meta.dtype == STRING) != any(v.dtype == STRING for v in values):
            raise InvalidArgument(
                f"feature '{name}' must hold {'bytes' if meta.dtype == STRING else 'numbers'} for input "
                f"'{name}' ({dtype_name(meta.dtype)})"
            )
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
    return inputs


def _labelled_classes(probabilities: np.ndarray, labels: tuple[str, ...]) -> list[list[tuple[str, float]]]:
    return [[(labels[i], float(row[i])) for i in range(len(labels))] for row in probabilities]


def _classifications(outputs: Mapping[str, np.ndarray], examples: int) -> list[list[tuple[str, float]]]:
    """A classify signature's `classes` and/or `scores` as TF Serving reads them (classifier.cc)."""
    classes, scores = outputs.get(CLASSES_OUTPUT), outputs.get(SCORES_OUTPUT)
    for tensor, dtype, what in ((classes, STRING, "classes"), (scores, np.dtype(np.float32), "scores")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise InvalidArgument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_debug_shape(tensor.shape)}"
            )
        if tensor.dtype != dtype:
            raise InvalidArgument(
                f"Expected {what} Tensor of {_data_type_name(dtype)}. Got: {_data_type_name(tensor.dtype)}"
            )
        if tensor.shape[0] != examples:
            raise InvalidArgument(f"Expected {what} output batch size of {examples}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    count = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    return [
        [
            (
                _label(classes[row, c]) if classes is not None else "",
                float(scores[row, c]) if scores is not None else 0.0,
            )
            for c in range(count)
        ]
        for row in range(examples)
    ]


def _label(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _regressions(output: np.ndarray, examples: int) -> list[float]:
    """A regress signature's output as TF Serving reads it (regressor.cc)."""
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_debug_shape(output.shape)}"
        )
    if output.shape[0] != examples:
        raise InvalidArgument(
            f"Input batch size did not match output batch size: {examples} vs. {output.shape[0]}"
        )
    if output.dtype != np.float32:
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_data_type_name(output.dtype)}")
    return [float(v) for v in output.reshape(-1)]


def _debug_shape(shape: Sequence[int]) -> str:
    """A shape as TensorFlow's TensorShape::DebugString writes it: [2,?,10]."""
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


def _data_type_name(dtype: np.dtype) -> str:
    try:
        return tensor_pb2.DataType.Name(data_type(dtype))
    except InvalidArgument:
        return str(dtype)


def _signature_text(signature: Signature) -> str:
    """The SignatureDef in protobuf text format, as TF Serving's errors quote it."""
    from serving.protocol.messages import signature_def  # not at import: serving.protocol imports this module

    return text_format.MessageToString(signature_def(signature.name, signature))


class VersionLike(Protocol):
    """What planning needs of a model version: a served `ModelVersion`, or one still loading (its
    warm-up replay, see `serving.warmup`)."""

    name: str
    version: int
    backend: Backend | None

    def signatures(self) -> Mapping[str, Signature]: ...


def find_signature(version: VersionLike, name: str) -> Signature:
    signatures = version.signatures()
    try:
        return signatures[name or DEFAULT_SIGNATURE]
    except KeyError:
        # TF Serving's code and wording (predict_util.cc), then what this version does have.
        raise FailedPrecondition(
            f'Serving signature key "{name}" not found. Model \'{version.name}\' version '
            f"{version.version} has signatures {sorted(signatures)}"
        ) from None


def plan_tasks(
    version: VersionLike, tasks: Sequence[TaskSpec], *, multi: bool, method_name_check: bool = False
) -> list[ExampleTask]:
    """Check that `version` can answer `tasks` (one Classify or Regress, or MultiInference's), before
    anything runs; `method_name_check` is --enable_signature_method_name_check."""
    if multi:
        return _plan_multi(version, tasks, method_name_check)
    return [_plan(version, tasks[0], method_name_check)]


def task_inputs(planned: Sequence[ExampleTask], examples: Examples) -> list[dict[str, np.ndarray]]:
    """The engine inputs of each planned task: the serialized examples (one string tensor, shared),
    or their features as inputs by name."""
    if not examples:
        raise InvalidArgument("Input is empty.")  # TF Serving's words
    serialized: np.ndarray | None = None
    if any(task.serialized for task in planned):
        serialized = np.empty(len(examples), dtype=STRING)
        serialized[:] = [example_bytes(example) for example in examples]
    inputs = []
    for task in planned:
        if task.serialized:
            assert serialized is not None
            inputs.append({EXAMPLES_INPUT: serialized})
        else:
            inputs.append(_examples_to_inputs(task.signature, examples))
    return inputs


def task_answer(task: ExampleTask, result: Result, examples: int) -> TaskAnswer:
    """A task's outputs read as TF Serving reads them (classes and scores, or one value each)."""
    if task.method == CLASSIFY_METHOD:
        classes = (
            _classifications(result.outputs, examples)
            if task.serialized
            else _labelled_classes(result.outputs["probabilities"], task.labels)
        )
        return TaskAnswer(result, task.method, classes=classes)
    (output,) = result.outputs.values()
    return TaskAnswer(result, task.method, values=_regressions(output, examples))


def run_tasks_now(
    version: VersionLike,
    tasks: Sequence[TaskSpec],
    examples: Examples,
    *,
    multi: bool = False,
    method_name_check: bool = False,
) -> list[TaskAnswer]:
    """Classify, Regress or MultiInference run right here on `version`'s engine, with the checks and
    answers of the request path but no batch queue, lease or metrics: a version's warm-up replay
    (TF Serving's warm-up, too, calls RunClassify / RunRegress / RunMultiInference on the session)."""
    backend = version.backend
    assert backend is not None
    planned = plan_tasks(version, tasks, multi=multi, method_name_check=method_name_check)
    answers = []
    for task, inputs in zip(planned, task_inputs(planned, examples), strict=True):
        sig = task.signature
        validate_inputs(sig, inputs)
        prepared = backend.prepare(sig.name, inputs) if sig.needs_prepare else inputs
        outputs = backend.run(sig.name, prepared, list(task.outputs))
        result = Result(version, sig.name, {name: outputs[name] for name in task.outputs})  # type: ignore[arg-type]
        answers.append(task_answer(task, result, len(examples)))
    return answers


def _plan_multi(version: VersionLike, tasks: Sequence[TaskSpec], method_name_check: bool) -> list[ExampleTask]:
    """MultiInference's checks, in TF Serving's order and words (multi_inference.cc)."""
    planned = []
    seen: set[str] = set()
    for task in tasks:
        if not task.model:
            raise InvalidArgument("Found ModelSpec with an empty model name.")
        if task.model != tasks[0].model:
            raise InvalidArgument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.signature or DEFAULT_SIGNATURE
        if name in seen:
            raise InvalidArgument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        if name not in version.signatures():
            raise InvalidArgument(f"Requested signature not found in model graph: {name}")
        if task.method not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise Unimplemented(f"Unsupported signature method_name: {task.method}")
        planned.append(_plan(version, task, method_name_check))
    return planned

def _plan(version: VersionLike, task: TaskSpec, method_name_check: bool) -> ExampleTask:
    """Check that `task.signature` can answer `task.method`, before anything runs."""
    backend = version.backend
    assert backend is not None  # resolve() returns AVAILABLE versions; the lease keeps it so
    if backend.platform == "tensorflow":
        return _plan_signature_def(version, task, method_name_check)
    return _plan_features(version, task, backend.labels)

def _plan_signature_def(version: VersionLike, task: TaskSpec, method_name_check: bool) -> ExampleTask:
    """A SavedModel signature, with TF Serving's checks and errors (classifier.cc, regressor.cc)."""
    name = task.signature or DEFAULT_SIGNATURE
    signatures = version.signatures()
    if name not in signatures:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    sig = signatures[name]
    classify = task.method == CLASSIFY_METHOD
    kind = "classification" if classify else "regression"
    if method_name_check and sig.method != task.method:
        raise InvalidArgument(f"Expected {kind} signature method_name to be {task.method}. Was: {sig.method}")
    if len(sig.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if classify and len(sig.outputs) not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if not classify and len(sig.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if EXAMPLES_INPUT not in sig.inputs:
        raise InvalidArgument(f"No {kind} inputs found in SignatureDef: {_signature_text(sig)}")
    if classify:
        outputs = tuple(key for key in (CLASSES_OUTPUT, SCORES_OUTPUT) if key in sig.outputs)
        if not outputs:
            raise InvalidArgument(
                f'Expected classification signature outputs to contain at least one of "{CLASSES_OUTPUT}" or '
                f'"{SCORES_OUTPUT}". Signature was: {_signature_text(sig)}'
            )
    else:
        outputs = (REGRESS_OUTPUT,)
        if REGRESS_OUTPUT not in sig.outputs:
            raise InvalidArgument(f"No regression outputs found in SignatureDef: {_signature_text(sig)}")
    given = sig.inputs[EXAMPLES_INPUT].dtype
    if given != STRING:
        # TensorFlow would refuse the string feed; say why in the request's terms.
        raise InvalidArgument(
            f"signature '{name}' takes '{EXAMPLES_INPUT}' as {dtype_name(given)}, not the serialized "
            f"tf.Examples (string) that {'Classify' if classify else 'Regress'} feeds it: use Predict"
        )
    return ExampleTask(sig, task.method, serialized=True, outputs=outputs)

def _plan_features(version: VersionLike, task: TaskSpec, labels: tuple[str, ...]) -> ExampleTask:
    """An ONNX signature: features are fed as its inputs (see `_examples_to_inputs`)."""
    sig = find_signature(version, task.signature)
    if task.method == CLASSIFY_METHOD:
        if "probabilities" not in sig.outputs or not labels:
            raise FailedPrecondition(
                f"signature '{sig.name}' of model '{version.name}' has no labelled 'probabilities' output "
                "to classify with"
            )
        return ExampleTask(sig, task.method, serialized=False, outputs=("probabilities",), labels=labels)
    if len(sig.outputs) != 1:
        raise InvalidArgument(
            f"Expected one output Tensor. Signature '{sig.name}' of model '{version.name}' has "
            f"{sorted(sig.outputs)}"
        )
    ((output, meta),) = sig.outputs.items()
    if meta.dtype != np.float32:
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_data_type_name(meta.dtype)}")
    if not (len(meta.shape) == 1 or (len(meta.shape) == 2 and meta.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_debug_shape(meta.shape)} (output '{output}' of signature '{sig.name}')"
        )
    return ExampleTask(sig, task.method, serialized=False, outputs=(output,))


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
        signature_method_name_check: bool = False,
        preferred_batch_size: int = 0,
    ) -> None:
        self.repository = repository
        # --preferred_batch_size: with batching, the most rows requests are merged into (0: no cap).
        self.preferred_batch_size = preferred_batch_size
        # --enable_signature_method_name_check: Classify and Regress on a SavedModel need a
        # signature of that method, not just one of the right form (TF Serving's default: off).
        self.signature_method_name_check = signature_method_name_check
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
        # model -> the value its queued-rows gauge was last set to (see `_batcher`)
        self._queued_published: dict[str, float] = {}

    # -- resolution ------------------------------------------------------------------------------

    def signature_of(self, version: ModelVersion, name: str) -> Signature:
        return find_signature(version, name)

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
        api: str | None = "Predict",
    ) -> Result:
        """Validate, prepare and run one request. `api` labels its TF Serving runtime_latency sample
        ("Predict", "Classify", "Regress"; None: not recorded, as TF Serving records none for
        MultiInference)."""
        sig = self.signature_of(resolved, signature)
        rows = validate_inputs(sig, inputs, self.limits)
        record = CURRENT.get()  # this request's access-log / trace record (None: both off)
        if record is not None:
            record.describe(resolved.name, resolved.version, sig.name, rows)
        if self.batching is not None and rows > self.batching.max_batch_size:
            # TF Serving's answer: max_batch_size is the largest request, split or not (with
            # enable_large_batch_splitting the batcher splits requests over max_execution_batch_size).
            raise InvalidArgument(
                f"Task size {rows} is larger than maximum input batch size {self.batching.max_batch_size}"
            )
        if output_filter:
            for name in output_filter:
                if not isinstance(name, str) or name not in sig.outputs:
                    raise InvalidArgument(
                        f"output_filter names {name!r}, which signature '{sig.name}' does not have; "
                        f"outputs are {sorted(sig.outputs)}"
                    )
        # A string element costs its bytes plus a fixed overhead: a million empty strings are not free.
        overhead = self.limits.string_element_overhead
        total = 0
        for v in inputs.values():
            total += v.nbytes if v.dtype.kind != "O" else sum(map(len, v.reshape(-1))) + overhead * v.size
        if total > self.max_tensor_bytes:
            raise InvalidArgument(f"inputs total {total} bytes, over the {self.max_tensor_bytes}-byte limit")

        backend = resolved.backend
        assert backend is not None  # resolve() returns AVAILABLE versions; the lease keeps it so
        # TF Serving's runtime_latency spans the request's Session::Run: with batching its wait in the
        # batch queue and its batch's run; image decoding and tokenizing (`prepare`), which a
        # SavedModel does in its graph, included.
        started = time.perf_counter()
        prepared = (
            await asyncio.get_running_loop().run_in_executor(self.executor, backend.prepare, sig.name, inputs)
            if sig.needs_prepare
            else inputs
        )
        if record is not None:  # the engine side (batcher, `_run`) says when it ran: queue, compute
            if sig.needs_prepare:
                record.phase("preprocess", started, time.perf_counter())
            record.dispatch()
        if self.batching is not None:
            answer = self._batcher(resolved, sig.name).begin(prepared)
            outputs = answer if isinstance(answer, dict) else await answer
        elif self._inline(resolved, sig.name, rows_of(prepared)):
            outputs = self._run(resolved, backend, sig.name, prepared, record)
        else:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._run, resolved, backend, sig.name, prepared, record
            )
        if api is not None:
            self.metrics.observe_runtime(resolved.name, api, time.perf_counter() - started)
        if output_filter:
            outputs = {name: outputs[name] for name in output_filter}
        return Result(resolved, sig.name, outputs)

    def _run(
        self,
        version: ModelVersion,
        backend: Backend,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        record: RequestRecord | None = None,
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = backend.run(signature, inputs)
        rows = rows_of(inputs)
        self.metrics.engine(version.name, signature).observe(rows, rows, time.perf_counter() - started)
        if record is not None:
            record.computed(started, time.perf_counter())
        return outputs

    def _batcher(self, version: ModelVersion, signature: str) -> Batcher:
        """The version's batcher for `signature`, made on first use; the version owns and closes it."""
        batcher = version.batchers.get(signature)
        if batcher is None:
            assert self.batching is not None and version.backend is not None
            backend = version.backend
            queued = self.metrics.queued_rows.labels(version.name)
            published = self._queued_published  # the gauges' values: set only when they change

            def queue_changed() -> None:
                now = float(sum(b.queued_rows for b in version.batchers.values()))
                if published.get(version.name) != now:
                    queued.set(now)
                    published[version.name] = now

            metrics = self.metrics
            engine = metrics.engine(version.name, signature)
            batcher = Batcher(
                functools.partial(backend.run, signature),
                self.batching,
                self.executor,
                engine.observe,
                inline=lambda rows, requests: self._inline(version, signature, rows, requests),
                on_submit=metrics.batching_submitted,
                on_dequeue=metrics.batching_dequeued,
                preferred_rows=self.preferred_batch_size,
                on_queue_change=queue_changed,
                observe_at_once=engine.observe_at_once,
            )
            version.batchers[signature] = batcher
        return batcher

    # -- classify, regress, multi-inference ------------------------------------------------------

    async def classify(
        self,
        model: str,
        examples: Examples,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
    ) -> tuple[Result, list[list[tuple[str, float]]]]:
        """Classify tf.Examples; returns (label, score) per class for each example.

        On a SavedModel, TF Serving's Classify: a classify signature (`inputs` -> `classes` and/or
        `scores`) is fed the serialized examples. On an ONNX model (no tf.Example signature), each
        example's features are named like the signature's inputs and stacked into a batch, and the
        signature's `probabilities` are scored with the model's labels, in label order.
        """
        (answer,) = await self._run_tasks(model, [TaskSpec(model, signature, CLASSIFY_METHOD)], examples, version, label)
        assert answer.classes is not None
        return answer.result, answer.classes

    async def regress(
        self,
        model: str,
        examples: Examples,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "",
    ) -> tuple[Result, list[float]]:
        """Regress tf.Examples: one float per example.

        On a SavedModel, TF Serving's Regress: a regress signature (`inputs` -> `outputs`) is fed
        the serialized examples. On an ONNX model, a signature with one float32 output of shape [N]
        or [N, 1] is fed the examples' features as its inputs (as `classify` does).
        """
        (answer,) = await self._run_tasks(model, [TaskSpec(model, signature, REGRESS_METHOD)], examples, version, label)
        assert answer.values is not None
        return answer.result, answer.values

    async def multi_inference(
        self,
        tasks: Sequence[TaskSpec],
        examples: Examples,
        *,
        version: int | None = None,
        label: str | None = None,
    ) -> list[TaskAnswer]:
        """TF Serving's MultiInference: several classify/regress signatures of one model on the
        same examples, answered in the order of `tasks`; `version` and `label` are the first
        task's. Every task is checked before any runs (same model, distinct signatures, methods)."""
        model = tasks[0].model if tasks else ""
        return await self._run_tasks(model, tasks, examples, version, label, multi=True)

    async def _run_tasks(
        self,
        model: str,
        tasks: Sequence[TaskSpec],
        examples: Examples,
        version: int | None,
        label: str | None,
        multi: bool = False,
    ) -> list[TaskAnswer]:
        resolved = self.repository.resolve(model, version, label)
        resolved.acquire()  # as in predict: the version stays open until every task has its answer
        try:
            planned = plan_tasks(resolved, tasks, multi=multi, method_name_check=self.signature_method_name_check)
            answers = []
            for task, inputs in zip(planned, task_inputs(planned, examples), strict=True):
                # TF Serving records runtime_latency for Classify and Regress, not for MultiInference.
                api = None if multi else ("Classify" if task.method == CLASSIFY_METHOD else "Regress")
                result = await self._predict(resolved, inputs, task.signature.name, task.outputs, api)
                answers.append(task_answer(task, result, len(examples)))
            if multi:  # TF Serving counts examples for MultiInference only (multi_inference.cc)
                self.metrics.observe_examples(resolved.name, len(examples))
            return answers
        finally:
            resolved.release()

    # -- metadata and status ---------------------------------------------------------------------

    def metadata(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> tuple[ModelVersion, Mapping[str, Signature]]:
        resolved = self.repository.resolve(model, version, label)
        if (record := CURRENT.get()) is not None:
            record.describe(resolved.name, resolved.version, "")
        return resolved, resolved.signatures()


