"""TF Serving's warm-up file: TFRecord reading and writing, and its replay when a version loads.

A version folder may hold `assets.extra/tf_serving_warmup_requests`: a TFRecord file of
`tensorflow.serving.PredictionLog` records (`protos/serving/proto/prediction_log.proto`), the format
stock `tensorflow_model_server` replays before a SavedModel serves (saved_model_warmup_util.cc).
This server replays it the same way, before the version turns AVAILABLE:
- every record, in file order, `iterations` times each (TF Serving's num_request_iterations, 1 by
  default), through the engine path a request takes: the TensorProtos decoded by `serving.codec`,
  validated against the signature like any request, prepared (images decoded, text tokenized), run;
- Predict, Classify, Regress and MultiInference logs are run, as TF Serving runs them: Classify,
  Regress and MultiInference with the data plane's own checks, engine inputs and output reading
  (`serving.dataplane.run_tasks_now`: serialized tf.Examples for a SavedModel's classify/regress
  signatures, features fed by name on ONNX), so a record the request path would refuse fails the
  load with the request path's error; PredictStreamed and SessionRun logs fail the load with
  UNIMPLEMENTED, as in TF Serving;
- any failure fails the load of the version, with TF Serving's status code and wording: a
  truncated record or a CRC mismatch is DATA_LOSS ("... Please verify your warmup data is in
  TFRecord format."), a record that is no PredictionLog or more than 1000 records INVALID_ARGUMENT,
  a request the model refuses its own error;
- TF Serving's `model_warmup_latency` and `model_warmup_records_read` metrics record the replay.

TFRecord framing (TensorFlow's record_writer.cc): per record, the length as uint64 little-endian,
the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data (each CRC uint32 LE).
Both CRCs are verified on read. CRC-32C comes from `google_crc32c` when it is installed, otherwise
from the table-driven function below (warm-up files are small: a few requests).
"""

from __future__ import annotations

import functools
import io
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from serving.backends import Backend, Signature
from serving.codec import STRING
from serving.errors import ServingError
from serving.proto import prediction_log_pb2

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"  # inside a version folder
MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords
DEFAULT_SIGNATURE = "serving_default"

# -- CRC-32C (Castagnoli), as TFRecord uses it --------------------------------------------------

_CASTAGNOLI = 0x82F63B78  # the reflected polynomial


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def _crc32c_table(data: bytes) -> int:
    """CRC-32C of `data`, one table lookup per byte (reflected, init and final xor 0xFFFFFFFF)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_function() -> Callable[[bytes], int]:
    try:
        import google_crc32c  # optional, much faster on large files
    except ImportError:
        return _crc32c_table
    return lambda data: int(google_crc32c.value(data))


crc32c = _crc32c_function()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: the CRC rotated right by 15 bits plus a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- TFRecord files -----------------------------------------------------------------------------


class WarmupError(Exception):
    """The warm-up file cannot be replayed: `code` is TF Serving's status code name for the cause."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> str:
        """The status as TF Serving's metrics label it (absl::Status::ToString)."""
        return str(self)


def write_records(path: Path, records: Iterable[bytes]) -> Path:
    """Write `records` as a TFRecord file (uncompressed), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for data in records:
            length = struct.pack("<Q", len(data))
            out.write(length)
            out.write(struct.pack("<I", masked_crc32c(length)))
            out.write(data)
            out.write(struct.pack("<I", masked_crc32c(data)))
    return path


def read_records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, each CRC verified; WarmupError DATA_LOSS (TensorFlow's
    wording: "truncated record at OFFSET", "corrupted record at OFFSET") when one is damaged."""
    with path.open("rb") as source:
        offset = 0
        while True:
            header = source.read(12)
            if not header:
                return
            if len(header) < 12:
                raise WarmupError("DATA_LOSS", f"truncated record at {offset}")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc32c(length_bytes) != length_crc:
                raise WarmupError("DATA_LOSS", f"corrupted record at {offset}")
            (length,) = struct.unpack("<Q", length_bytes)
            body = source.read(length + 4)
            if len(body) < length + 4:
                raise WarmupError("DATA_LOSS", f"truncated record at {offset}")
            data, data_crc = body[:length], struct.unpack("<I", body[length:])[0]
            if masked_crc32c(data) != data_crc:
                raise WarmupError("DATA_LOSS", f"corrupted record at {offset}")
            yield data
            offset += 12 + length + 4


# -- replay -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmupSettings:
    """How versions are warmed up (from the server's flags; the defaults are TF Serving's).

    `enabled`: --enable_model_warmup (off: neither the file nor the synthetic warm-up runs, and no
    engine cost is measured). `iterations`: replays of each record. `observe`: receives each replay's
    (model_path, status, seconds, records) for TF Serving's warm-up metrics.
    """

    enabled: bool = True
    iterations: int = 1
    observe: Callable[[str, str, float, int], None] | None = None
    # --enable_signature_method_name_check, which TF Serving applies to warm-up requests too.
    signature_method_name_check: bool = False


DEFAULT_WARMUP = WarmupSettings()


@dataclass(frozen=True)
class ReplayResult:
    records: int
    replayed: dict[str, int]  # log kind (predict_log, classify_log, ...) -> records run
    seconds: float


@dataclass
class LoadingVersion:
    """The version being warmed up, as the data plane's task planning sees a version (it is not
    served yet, so not in the repository); name and number only appear in error messages."""

    name: str
    version: int
    backend: Backend | None

    def signatures(self) -> Mapping[str, Signature]:
        return self.backend.signatures() if self.backend is not None else {}


def predict_log(
    inputs: dict[str, np.ndarray], signature: str = DEFAULT_SIGNATURE, model: str = ""
) -> prediction_log_pb2.PredictionLog:
    """A PredictionLog holding one PredictRequest of `inputs` (numpy, bytes objects for strings)."""
    from serving import codec

    record = prediction_log_pb2.PredictionLog()
    request = record.predict_log.request
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        codec.from_numpy(value, request.inputs[name])
    return record


def replay(
    backend: Backend, version_dir: Path, settings: WarmupSettings = DEFAULT_WARMUP
) -> ReplayResult | None:
    """Replay the version's warm-up file, if it has one (None when not); raises WarmupError."""
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return None
    started = time.perf_counter()
    records = 0
    replayed: dict[str, int] = {}
    try:
        for data in read_records(path):
            try:
                record = prediction_log_pb2.PredictionLog.FromString(data)
            except DecodeError:
                raise WarmupError(
                    "INVALID_ARGUMENT",
                    f"Failed to parse warmup record {records} (not a PredictionLog) from {path}",
                ) from None
            kind = record.WhichOneof("log_type")
            for _ in range(max(settings.iterations, 1)):
                _run(backend, record, kind, path, records, settings.signature_method_name_check)
            if kind is not None:
                replayed[kind] = replayed.get(kind, 0) + 1
            records += 1
            if records > MAX_RECORDS:
                raise WarmupError(
                    "INVALID_ARGUMENT",
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                )
    except WarmupError as exc:
        if exc.code == "DATA_LOSS":  # TF Serving records a failed read in its metrics, then fails
            _observe(settings, version_dir, exc.status, time.perf_counter() - started, records)
            raise WarmupError(
                exc.code, f"{exc.message}. Please verify your warmup data is in TFRecord format."
            ) from None
        raise
    seconds = time.perf_counter() - started
    _observe(settings, version_dir, "OK", seconds, records)
    log.info(
        "%s: replayed %d warm-up record(s) x%d in %.3fs (%s)",
        path,
        sum(replayed.values()),
        settings.iterations,
        seconds,
        ", ".join(f"{count} {kind}" for kind, count in sorted(replayed.items())) or "none",
    )
    return ReplayResult(records, replayed, seconds)


def _observe(settings: WarmupSettings, version_dir: Path, status: str, seconds: float, records: int) -> None:
    if settings.observe is not None:
        settings.observe(str(version_dir), status, seconds, records)


def _run(
    backend: Backend, record: Any, kind: str | None, path: Path, index: int, method_name_check: bool = False
) -> None:
    if kind is None:
        return  # an empty log: TF Serving skips it too
    if kind in _EXAMPLE_LOGS:
        _run_examples(backend, getattr(record, kind).request, kind, path, index, method_name_check)
        return
    if kind != "predict_log":
        # TF Serving's answer (saved_model_warmup.cc) for the kinds it cannot replay either.
        number = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind].number
        raise WarmupError(
            "UNIMPLEMENTED", f"Unsupported log_type for warmup: {number} (record {index} of {path})"
        )
    from serving import codec
    from serving.dataplane import validate_inputs

    request = record.predict_log.request
    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    try:
        signatures = backend.signatures()
        if name not in signatures:
            raise WarmupError(
                "FAILED_PRECONDITION",
                f'Serving signature key "{name}" not found (record {index} of {path}); '
                f"signatures are {sorted(signatures)}",
            )
        signature = signatures[name]
        inputs = {key: codec.to_numpy(tensor, key) for key, tensor in request.inputs.items()}
        validate_inputs(signature, inputs)
        outputs = list(request.output_filter) or None
        unknown = [output for output in outputs or () if output not in signature.outputs]
        if unknown:
            raise WarmupError(
                "INVALID_ARGUMENT", f"output_filter names {unknown}, which signature '{name}' does not have"
            )
        prepared = backend.prepare(name, inputs) if signature.needs_prepare else inputs
        backend.run(name, prepared, outputs)
    except ServingError as exc:
        raise WarmupError(exc.grpc_code.name, f"{exc.message} (warm-up record {index} of {path})") from exc


_EXAMPLE_LOGS = ("classify_log", "regress_log", "multi_inference_log")


def _run_examples(
    backend: Backend, request: Any, kind: str, path: Path, index: int, method_name_check: bool
) -> None:
    """A Classify, Regress or MultiInference request run as the request path runs it (TF Serving's
    warm-up calls RunClassify, RunRegress, RunMultiInference on the session the same way)."""
    from serving.dataplane import CLASSIFY_METHOD, REGRESS_METHOD, TaskSpec, run_tasks_now
    from serving.protocol.grpc.server import request_examples

    if kind == "multi_inference_log":
        tasks = [TaskSpec(t.model_spec.name, t.model_spec.signature_name, t.method_name) for t in request.tasks]
        model = tasks[0].model if tasks else ""
    else:
        method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
        tasks = [TaskSpec(request.model_spec.name, request.model_spec.signature_name, method)]
        model = request.model_spec.name
    number = int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0
    version = LoadingVersion(model, number, backend)
    try:
        run_tasks_now(
            version,
            tasks,
            request_examples(request.input),
            multi=kind == "multi_inference_log",
            method_name_check=method_name_check,
        )
    except ServingError as exc:
        raise WarmupError(exc.grpc_code.name, f"{exc.message} (warm-up record {index} of {path})") from exc


# -- synthetic warm-up (no warm-up file) --------------------------------------------------------

SENTENCE = b"A short sentence to warm the model up."
# Input names that suggest image bytes: tried with an image first, then with text.
_IMAGE_HINTS = ("image", "img", "jpeg", "jpg", "png", "photo", "picture", "bytes")
VARIABLE_SIZES = (1, 32)  # tried in turn for dimensions of unknown size


@functools.cache
def tiny_png() -> bytes:
    """A valid 8x8 RGB PNG, made with Pillow: what an image-bytes input is warmed up with."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 96, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Dummy:
    """Inputs a signature accepts: `batch(rows)` gives prepared engine inputs of that many rows;
    `fixed` says whether every dimension but the batch is known (only then is a cost measured)."""

    values: dict[str, bytes]  # string input -> the element it is filled with
    size: int  # the size given to dimensions of unknown size
    fixed: bool

    def inputs(self, signature: Signature, rows: int) -> dict[str, np.ndarray]:
        batch: dict[str, np.ndarray] = {}
        for key, meta in signature.inputs.items():
            shape = (rows, *(d if d >= 0 else self.size for d in meta.shape[1:]))
            if meta.dtype == STRING:
                value = np.empty(shape, dtype=STRING)
                value.fill(self.values[key])
            else:
                value = np.zeros(shape, dtype=meta.dtype)
            batch[key] = value
        return batch


def find_dummy(backend: Backend, name: str, signature: Signature) -> Dummy | None:
    """Dummy inputs `signature` runs on, found by trying: zeros for numbers, for each string input a
    sentence or a tiny PNG (the input's name says which first), unknown sizes 1 then 32. Each try
    (only for signatures with string or unknown-size inputs) is one engine call of one row, which
    warms it. None, with the reasons logged, when nothing fits."""
    strings = [key for key, meta in signature.inputs.items() if meta.dtype == STRING]
    fixed = all(d >= 0 for meta in signature.inputs.values() for d in meta.shape[1:])
    if not strings and fixed:
        return Dummy({}, 1, True)  # zeros always fit: a failure on them is the model's (not caught)
    choices: list[dict[str, bytes]] = []
    for first in ("text", "image"):
        choice = {}
        for key in strings:
            hinted_image = any(hint in key.lower() for hint in _IMAGE_HINTS)
            as_text = (first == "text") != hinted_image
            choice[key] = SENTENCE if as_text else tiny_png()
        if choice not in choices:
            choices.append(choice)
    reasons = []
    for size in (1,) if fixed else VARIABLE_SIZES:
        for values in choices or [{}]:
            dummy = Dummy(values, size, fixed)
            try:
                backend.run(name, backend.prepare(name, dummy.inputs(signature, 1)))
            except Exception as exc:  # this dummy does not fit: try the next one
                reasons.append(
                    f"{_describe(values, size, fixed)}: {type(exc).__name__}: {exc}".splitlines()[0]
                )
                continue
            return dummy
    log.warning(
        "signature '%s' has no dummy input that runs, so it warms up on first use (%s)",
        name,
        "; ".join(reasons),
    )
    return None


def _describe(values: dict[str, bytes], size: int, fixed: bool) -> str:
    kinds = ", ".join(f"{key}={'text' if value == SENTENCE else 'png'}" for key, value in values.items())
    return " ".join(part for part in (kinds, "" if fixed else f"unknown sizes {size}") if part) or "zeros"
