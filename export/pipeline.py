"""The export pipeline: SavedModel -> ONNX -> parity check -> manifest -> publish, as small steps.

A model plugs in with an `ExportSpec` (what to save, how to check it); `publish(spec, models_dir)`
then does, in `models/<name>/.tmp-<v>/`:

1. `save_saved_model`: `tf.saved_model.save` with named signatures (`serving_default`, `explain`, ...),
   each a `tf.function` whose `input_signature` names its request tensors and which returns a dict of
   named outputs, so stock TensorFlow Serving serves the folder as is.
2. `convert_to_onnx`: `tf2onnx.convert.from_function` for every signature with `convert=True`
   (opset <= 18, batch dimension left dynamic, ONNX input/output names equal to the signature's).
3. Extra checks the spec brings (e.g. Grad-CAM against `tf.GradientTape`), then `check_parity`:
   the reloaded SavedModel signature and ONNX Runtime on the same real inputs, at every batch size.
4. `write_warmup_requests`: `assets.extra/tf_serving_warmup_requests`, TF Serving's warm-up file
   (a TFRecord of PredictionLogs): a few of the parity inputs per signature, replayed before the
   version serves, by this server and by stock TF Serving alike (see `serving.warmup`).
5. `write_manifest` (`serving.manifest`) with labels, input/output specs, metrics, parity figures,
   producer versions and the sha256 of every file, written last.
6. Rename `.tmp-<v>` to `<v>` (v = largest existing integer version + 1).

Any failure (a parity check above its tolerance included) raises and removes the temporary folder:
a version that fails its checks is never published and the server never sees half a version.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from serving.manifest import (
    MANIFEST_FILE,
    PREDICT_METHOD,
    Manifest,
    OnnxBinding,
    Preprocess,
    SignatureManifest,
    TensorSpec,
    sha256_file,
    write_manifest,
)
from serving.warmup import WARMUP_FILE, predict_log, write_records

DEFAULT_OPSET = 17
MAX_OPSET = 18
TMP_PREFIX = ".tmp-"

OnnxFeed = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class ExportError(RuntimeError):
    """A step of the export failed; nothing was published."""


class ParityError(ExportError):
    """ONNX Runtime and the SavedModel disagree beyond the tolerance (or an extra check failed)."""


@dataclass(frozen=True)
class Signature:
    """One SavedModel signature and the ONNX file that serves it.

    `function` is a `tf.function` with an `input_signature` of named `tf.TensorSpec`s (the request tensor
    names) returning `{output name: tensor}`. When `convert` is true, `onnx_function` (default: `function`)
    is converted into `onnx_file`; a signature with `convert=False` reuses a file another signature
    produced, typically with a server-side `preprocess` (e.g. image bytes -> `image`); such a signature
    must give `onnx_inputs` (e.g. `{"image": "image"}`, the preprocess output bound to the ONNX input).
    A `ParityCheck` with an `onnx_feed` can still compare it (e.g. decoding the bytes as the server will).
    """

    name: str
    function: Any
    onnx_file: str
    convert: bool = True
    onnx_function: Any | None = None
    onnx_inputs: Mapping[str, str] | None = None  # request tensor -> ONNX input; default: same names
    onnx_outputs: Mapping[str, str] | None = None  # signature output -> ONNX output; default: same names
    preprocess: Preprocess | None = None
    method: str = PREDICT_METHOD


@dataclass(frozen=True)
class ParityCheck:
    """Compare one signature of the reloaded SavedModel with its ONNX file on real inputs.

    `inputs` are request tensors (first dimension: examples), fed in slices of every batch size.
    `onnx_feed` turns a request batch into the ONNX feed when they differ (default: rename through
    the signature's `onnx_inputs`). `atol` gives each compared output its max |difference|; outputs
    named in `argmax` must also predict the same class for every example.
    """

    signature: str
    inputs: Mapping[str, np.ndarray]
    atol: Mapping[str, float]
    batch_sizes: tuple[int, ...] = (1, 64)
    argmax: tuple[str, ...] = ("probabilities",)
    onnx_feed: OnnxFeed | None = None


@dataclass(frozen=True)
class ExtraCheck:
    """A named check run before parity; `run()` returns figures for the manifest and `"passed": bool`."""

    name: str
    run: Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class ExportSpec:
    """Everything model-specific the pipeline needs; the rest is generic."""

    name: str
    task: str  # "image_classification" | "text_classification"
    labels: tuple[str, ...]
    trackable: Any  # owns the variables the signatures use (the Keras model)
    signatures: tuple[Signature, ...]
    parity: tuple[ParityCheck, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    extra_checks: tuple[ExtraCheck, ...] = ()
    opset: int = DEFAULT_OPSET
    # Signatures that only the ONNX server offers: an explainer around a published ONNX file (e.g.
    # token occlusion for text), with no SavedModel counterpart. Written to the manifest as given.
    explainers: Mapping[str, SignatureManifest] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    version: int
    path: Path
    manifest: Manifest


# ---------------------------------------------------------------------------------------------- steps


def existing_versions(model_dir: Path) -> list[int]:
    """Integer version folders under `model_dir` (other names, `.tmp-*` included, are ignored)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    )


def next_version(model_dir: Path) -> int:
    """Largest existing version + 1 (1 for a new model)."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def input_names(function: Any) -> list[str]:
    """The request tensor names of a `tf.function`'s `input_signature`."""
    specs = function.input_signature
    if not specs:
        raise ExportError(f"{function} has no input_signature")
    names = [spec.name for spec in specs]
    if any(not name for name in names):
        raise ExportError(f"every TensorSpec of {function}'s input_signature needs a name: {names}")
    return names


def tensor_spec(spec: Any) -> TensorSpec:
    """`tf.TensorSpec`/`tf.Tensor` -> manifest `TensorSpec` (dtype name, -1 for unknown dimensions)."""
    dtype = "string" if spec.dtype == tf.string else spec.dtype.as_numpy_dtype().dtype.name
    return TensorSpec(dtype=dtype, shape=tuple(-1 if d is None else int(d) for d in spec.shape.as_list()))


def save_saved_model(directory: Path, trackable: Any, signatures: Sequence[Signature]) -> dict[str, Any]:
    """`tf.saved_model.save` with named signatures; returns {signature name: concrete function}."""
    root = tf.Module()
    root.model = trackable  # tracks the variables the signature functions capture
    concrete = {sig.name: sig.function.get_concrete_function() for sig in signatures}
    for name, fn in concrete.items():
        if not isinstance(fn.structured_outputs, dict):
            raise ExportError(f"signature {name!r} must return a dict of named outputs")
    tf.saved_model.save(root, str(directory), signatures=concrete)
    return concrete


def convert_to_onnx(function: Any, path: Path, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a `tf.function` with ONNX input/output names equal to its tensor names; keep batch dynamic."""
    if not 7 <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is outside 7..{MAX_OPSET}")
    model_proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=opset, output_path=str(path)
    )
    onnx.checker.check_model(model_proto)
    expected_inputs = input_names(function)
    actual_inputs = [i.name for i in model_proto.graph.input]
    outputs = function.get_concrete_function().structured_outputs
    expected_outputs = sorted(outputs)
    actual_outputs = sorted(o.name for o in model_proto.graph.output)
    if sorted(actual_inputs) != sorted(expected_inputs) or actual_outputs != expected_outputs:
        raise ExportError(
            f"{path.name}: ONNX inputs {actual_inputs} / outputs {actual_outputs} "
            f"do not match the function's {expected_inputs} / {expected_outputs}"
        )
    for graph_input in model_proto.graph.input:
        first = graph_input.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise ExportError(
                f"{path.name}: input {graph_input.name!r} has a fixed batch size {first.dim_value}"
            )
    return model_proto


def _onnx_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(version_dir: Path, spec: ExportSpec, check: ParityCheck) -> dict[str, Any]:
    """Run `check` against the SavedModel in `version_dir` (reloaded) and its ONNX file; return figures."""
    signature = next((s for s in spec.signatures if s.name == check.signature), None)
    if signature is None:
        raise ExportError(f"parity check for unknown signature {check.signature!r}")
    served = tf.saved_model.load(str(version_dir)).signatures[check.signature]
    session = _onnx_session(version_dir / signature.onnx_file)
    onnx_inputs = dict(signature.onnx_inputs or {})
    onnx_outputs = dict(signature.onnx_outputs or {})
    compared = list(check.atol)
    onnx_names = [onnx_outputs.get(name, name) for name in compared]
    count = {len(v) for v in check.inputs.values()}
    if len(count) != 1:
        raise ExportError(f"parity inputs of {check.signature!r} differ in length: {count}")
    n = count.pop()
    worst = dict.fromkeys(compared, 0.0)
    disagreements = dict.fromkeys(check.argmax, 0)
    for batch_size in check.batch_sizes:
        for start in range(0, n, batch_size):
            batch = {name: values[start : start + batch_size] for name, values in check.inputs.items()}
            expected = served(**{name: tf.constant(values) for name, values in batch.items()})
            feed = (
                check.onnx_feed(batch)
                if check.onnx_feed
                else {onnx_inputs.get(name, name): values for name, values in batch.items()}
            )
            actual = dict(zip(compared, session.run(onnx_names, dict(feed)), strict=True))
            for name in compared:
                reference = expected[name].numpy()
                if actual[name].shape != reference.shape:
                    raise ParityError(
                        f"{signature.onnx_file}:{name} has shape {actual[name].shape}, the SavedModel {reference.shape}"
                    )
                difference = np.abs(actual[name] - reference)
                # NaN anywhere fails the check: Python's max() would silently skip it.
                largest = (
                    float(np.max(difference, initial=0.0)) if np.isfinite(difference).all() else float("inf")
                )
                worst[name] = max(worst[name], largest)
            for name in check.argmax:
                reference_classes = expected[name].numpy().argmax(axis=-1)
                disagreements[name] += int(np.sum(actual[name].argmax(axis=-1) != reference_classes))
    passed = all(worst[name] <= check.atol[name] for name in compared) and not any(disagreements.values())
    return {
        "signature": check.signature,
        "onnx_file": signature.onnx_file,
        "n_examples": n,
        "batch_sizes": list(check.batch_sizes),
        "max_abs_diff": worst,
        "atol": dict(check.atol),
        "argmax_disagreements": disagreements,
        "passed": passed,
    }


def sha256_tree(directory: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `directory` except the manifest."""
    return {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


def producer_versions(opset: int) -> dict[str, Any]:
    import keras

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": opset,
    }


def signature_manifest(signature: Signature, concrete: Any) -> SignatureManifest:
    """Manifest entry of one signature, from its concrete function's inputs and outputs."""
    inputs = {spec.name: tensor_spec(spec) for spec in signature.function.input_signature}
    outputs = {name: tensor_spec(tensor) for name, tensor in concrete.structured_outputs.items()}
    onnx_function = signature.onnx_function or signature.function
    onnx_input_names = input_names(onnx_function) if signature.convert else list(inputs)
    binding = OnnxBinding(
        file=signature.onnx_file,
        inputs=dict(signature.onnx_inputs or {name: name for name in onnx_input_names}),
        outputs=dict(signature.onnx_outputs or {name: name for name in outputs}),
    )
    return SignatureManifest(
        method=signature.method, inputs=inputs, outputs=outputs, onnx=binding, preprocess=signature.preprocess
    )


# ----------------------------------------------------------------------------------------- pipeline


# Rows of the warm-up requests written per signature: one single-row request and one batch.
WARMUP_ROWS = (1, 4)


def write_warmup_requests(directory: Path, spec: ExportSpec) -> Path | None:
    """Step 4: TF Serving's warm-up file, `assets.extra/tf_serving_warmup_requests`, one PredictLog
    per request: for each SavedModel signature that has parity inputs (real examples: images, image
    bytes, text), the first row and the first few rows. Signatures only the ONNX server offers
    (`explainers`) are left out: stock TF Serving would fail the version on a signature it lacks.
    None when there is nothing to write."""
    served = {signature.name for signature in spec.signatures}
    records: list[bytes] = []
    written: set[str] = set()
    for check in spec.parity:
        if check.signature not in served or check.signature in written:
            continue
        written.add(check.signature)
        available = min(len(value) for value in check.inputs.values())
        for rows in sorted({min(rows, available) for rows in WARMUP_ROWS}):
            inputs = {name: np.asarray(value[:rows]) for name, value in check.inputs.items()}
            records.append(predict_log(inputs, check.signature, spec.name).SerializeToString())
    if not records:
        return None
    return write_records(directory / WARMUP_FILE, records)


def build_version(spec: ExportSpec, directory: Path, version: int) -> Manifest:
    """Steps 1-4 into `directory` (which must not exist yet); raises on any failed check."""
    concrete = save_saved_model(directory, spec.trackable, spec.signatures)
    for signature in spec.signatures:
        if signature.convert:
            convert_to_onnx(
                signature.onnx_function or signature.function, directory / signature.onnx_file, spec.opset
            )
    checks: dict[str, Any] = {}
    for extra in spec.extra_checks:
        result = dict(extra.run())
        checks[extra.name] = result
        if not result.get("passed"):
            raise ParityError(f"check {extra.name!r} failed: {result}")
    parity = [check_parity(directory, spec, check) for check in spec.parity]
    failed = [result for result in parity if not result["passed"]]
    if failed:
        raise ParityError(f"ONNX Runtime and the SavedModel disagree: {failed}")
    write_warmup_requests(directory, spec)
    manifest = Manifest(
        name=spec.name,
        version=version,
        task=spec.task,
        labels=tuple(spec.labels),
        signatures={
            **{sig.name: signature_manifest(sig, concrete[sig.name]) for sig in spec.signatures},
            **spec.explainers,
        },
        producer=producer_versions(spec.opset),
        metrics=dict(spec.metrics),
        parity={"passed": True, "checks": parity, **checks},
        files=sha256_tree(directory),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    write_manifest(directory, manifest)
    return manifest


def publish(spec: ExportSpec, models_dir: Path) -> Published:
    """Build the next version of `spec.name` in `models_dir/<name>/.tmp-<v>` and rename it to `<v>`."""
    model_dir = Path(models_dir) / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    tmp = model_dir / f"{TMP_PREFIX}{version}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left behind by an interrupted export
    try:
        manifest = build_version(spec, tmp, version)
        final = model_dir / str(version)
        if final.exists():
            raise ExportError(f"{final} appeared while exporting (another export running?)")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Published(version=version, path=final, manifest=manifest)
