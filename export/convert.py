"""`python -m export convert --model-dir PATH --name NAME`: publish the user's own model as a version.

PATH is a Keras model file (`.keras`, or a legacy `.h5`) or a SavedModel folder (`saved_model.pb`).
The model goes through the same pipeline as ours (`export.pipeline.publish`): re-saved as a
SavedModel with named signatures (so stock TF Serving serves the version too), converted to ONNX
with tf2onnx, checked for parity (the reloaded SavedModel and ONNX Runtime on the same inputs, at
batch sizes 1 and 16), described by a manifest (input/output specs with -1 for unknown
dimensions, labels, parity figures, sha256s) and published as the next version under
`--models-dir/NAME/`. A model that fails parity is not published.

Signatures:
- a Keras model gets `serving_default`: its inputs under their Keras names, its outputs under the
  model's output names (`probabilities` for a single output when `--labels` is given, so
  `Classify` and `:classify` answer with those labels);
- a SavedModel keeps its signatures (all of them, or those named by `--signature`), inputs and
  outputs under the names they have (with `--labels`, a signature's single output is renamed
  `probabilities`).

Parity inputs are generated from each signature's input spec (seeded, so a run is reproducible):
floats uniform in [0, 1), integers 0 or 1 (valid indices for any embedding), booleans, short
ASCII strings; each unknown dimension but the batch one is 8. `--parity-inputs FILE.npz` gives
real examples instead (one array per input name, first dimension: examples). Tolerance: `--atol`
times the largest |value| of the output on those inputs (at least `--atol`); the classes
(argmax of `probabilities`) must agree too when the inputs are real ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GENERATED_EXAMPLES = 32
UNKNOWN_DIM_SIZE = 8  # size given to unknown non-batch dimensions in generated inputs
DEFAULT_ATOL = 1e-4
PARITY_BATCH_SIZES = (1, 16)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class ConvertError(RuntimeError):
    """The model cannot be converted as given; nothing was published. The message says why."""


@dataclass(frozen=True)
class UserSignature:
    """One signature to publish: a `tf.function` with a named input_signature returning a dict."""

    name: str
    function: Any
    output_names: tuple[str, ...]


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line, in class order (blank lines ignored)."""
    try:
        labels = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"cannot read the labels file {path}: {exc}") from exc
    if not labels:
        raise ConvertError(f"the labels file {path} holds no label")
    if len(set(labels)) != len(labels):
        raise ConvertError(f"the labels file {path} repeats a label")
    return labels


def _output_names(raw: Sequence[str], labels: tuple[str, ...], where: str) -> tuple[str, ...]:
    """The published output names: `raw`, or `probabilities` for a single output with labels."""
    names = tuple(raw)
    if labels:
        if len(names) == 1:
            return ("probabilities",)
        if "probabilities" not in names:
            raise ConvertError(
                f"{where} has {len(names)} outputs ({', '.join(names)}) and none is named "
                "'probabilities': --labels needs a single output, or one named 'probabilities'"
            )
    return names


def keras_signatures(model: Any, labels: tuple[str, ...]) -> list[UserSignature]:
    """`serving_default` around a Keras model: its inputs in, its outputs out, by name."""
    import tensorflow as tf

    inputs = list(model.inputs)
    specs = [
        tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype), name=getattr(t, "name", None) or f"input_{i}")
        for i, t in enumerate(inputs)
    ]
    if len({spec.name for spec in specs}) != len(specs):
        raise ConvertError(f"the model's inputs have repeated names: {[s.name for s in specs]}")
    outputs = model.outputs
    raw = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(outputs))])
    if len(raw) != len(outputs):
        raw = [f"output_{i}" for i in range(len(outputs))]
    names = _output_names(raw, labels, "the Keras model")

    @tf.function(input_signature=specs)
    def serving_default(*tensors: Any) -> dict[str, Any]:
        result = model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
        if isinstance(result, Mapping):
            result = [result[key] for key in raw]
        elif not isinstance(result, (list, tuple)):
            result = [result]
        return dict(zip(names, result, strict=True))

    return [UserSignature("serving_default", serving_default, names)]


def saved_model_signatures(
    loaded: Any, wanted: Sequence[str], labels: tuple[str, ...], path: Path
) -> list[UserSignature]:
    """The loaded SavedModel's signatures (or those `wanted`), re-wrapped as named tf.functions."""
    import tensorflow as tf

    available = dict(loaded.signatures)
    if not available:
        raise ConvertError(f"{path} has no signatures (save it with signatures=..., or pass a .keras file)")
    names = list(wanted) or sorted(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConvertError(
            f"{path} has no signature {', '.join(unknown)} (it has {', '.join(sorted(available))})"
        )
    signatures = []
    for name in names:
        concrete = available[name]
        _, kwargs = concrete.structured_input_signature
        keys = sorted(kwargs)
        specs = [tf.TensorSpec(kwargs[key].shape, kwargs[key].dtype, name=key) for key in keys]
        raw = sorted(concrete.structured_outputs)
        published = _output_names(raw, labels, f"signature {name!r}")
        rename = dict(zip(raw, published, strict=True))

        signatures.append(UserSignature(name, _wrap_concrete(concrete, specs, keys, rename), published))
    return signatures


def _wrap_concrete(concrete: Any, specs: list[Any], keys: list[str], rename: Mapping[str, str]) -> Any:
    """A tf.function over positional named specs that calls a SavedModel signature by keyword."""
    import tensorflow as tf

    @tf.function(input_signature=specs)
    def signature(*tensors: Any) -> dict[str, Any]:
        result = concrete(**dict(zip(keys, tensors, strict=True)))
        return {rename[key]: value for key, value in result.items()}

    return signature


def generated_inputs(function: Any, examples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a parity check from a tf.function's input_signature (see the module docstring)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in function.input_signature:
        dims = spec.shape.as_list()
        if not dims:
            raise ConvertError(f"input {spec.name!r} is a scalar: a served input needs a batch dimension")
        shape = (examples, *(UNKNOWN_DIM_SIZE if d is None else int(d) for d in dims[1:]))
        if spec.dtype == tf.string:
            words = np.array([b"alpha", b"beta", b"gamma", b"delta"], dtype=object)
            inputs[spec.name] = words[rng.integers(0, len(words), size=shape)]
        elif spec.dtype == tf.bool:
            inputs[spec.name] = rng.random(shape) < 0.5
        elif spec.dtype.is_integer:
            inputs[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype.as_numpy_dtype)
        elif spec.dtype.is_floating:
            inputs[spec.name] = rng.random(shape).astype(spec.dtype.as_numpy_dtype)
        else:
            raise ConvertError(f"input {spec.name!r} has dtype {spec.dtype.name}: no parity inputs for it")
    return inputs


def parity_inputs_from(path: Path, function: Any) -> dict[str, np.ndarray]:
    """The user's examples for one signature from an `.npz` (one array per input name)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot read the parity inputs {path}: {exc}") from exc
    names = [spec.name for spec in function.input_signature]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ConvertError(
            f"{path} has no array for input(s) {', '.join(missing)} (it has {', '.join(arrays)})"
        )
    inputs = {}
    for spec in function.input_signature:
        array = arrays[spec.name]
        inputs[spec.name] = (
            array.astype(object) if array.dtype.kind in "SU" else array.astype(spec.dtype.as_numpy_dtype)
        )
    return inputs


def tolerances(function: Any, inputs: Mapping[str, np.ndarray], atol: float) -> dict[str, float]:
    """Per output: `atol` scaled by the largest |value| the model gives on `inputs` (at least 1)."""
    import tensorflow as tf

    outputs = function(*(tf.constant(inputs[spec.name]) for spec in function.input_signature))
    scale = {}
    for name, tensor in outputs.items():
        if tensor.dtype == tf.string:
            raise ConvertError(f"output {name!r} is a string tensor: ONNX parity cannot compare it")
        values = np.abs(tensor.numpy().astype(np.float64))
        scale[name] = atol * max(1.0, float(values.max(initial=0.0)))
    return scale


def load_user_model(
    path: Path, wanted: Sequence[str], labels: tuple[str, ...]
) -> tuple[Any, list[UserSignature], str]:
    """(trackable, signatures, source format) of a `.keras`/`.h5` file or a SavedModel folder."""
    if path.is_file() and path.suffix in KERAS_SUFFIXES:
        import keras

        if wanted and list(wanted) != ["serving_default"]:
            raise ConvertError("a Keras model has one signature, serving_default: drop --signature")
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises ValueError, OSError, TypeError... for bad files
            raise ConvertError(f"Keras cannot load {path}: {exc}") from exc
        return model, keras_signatures(model, labels), "keras"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TensorFlow's own error classes
            raise ConvertError(f"TensorFlow cannot load the SavedModel {path}: {exc}") from exc
        return loaded, saved_model_signatures(loaded, wanted, labels, path), "saved_model"
    raise ConvertError(
        f"{path} is neither a Keras model file ({', '.join(KERAS_SUFFIXES)}) nor a SavedModel folder "
        "(one holding saved_model.pb)"
    )


def build_spec(
    model_path: Path,
    name: str,
    labels: tuple[str, ...] = (),
    signatures: Sequence[str] = (),
    atol: float = DEFAULT_ATOL,
    parity_inputs: Path | None = None,
    opset: int | None = None,
) -> Any:
    """The `ExportSpec` of the user's model (see the module docstring)."""
    from export.pipeline import DEFAULT_OPSET, ExportSpec, ParityCheck, Signature

    if not name or "/" in name or name.startswith("."):
        raise ConvertError(f"--name {name!r} is not a model name (a folder name, not starting with '.')")
    if not atol > 0:
        raise ConvertError(f"--atol must be positive, got {atol}")
    trackable, user_signatures, source_format = load_user_model(model_path, signatures, labels)
    checks = []
    for signature in user_signatures:
        if labels:
            classes = signature.function.get_concrete_function().structured_outputs["probabilities"].shape
            if classes.rank is None or classes.rank < 1 or classes[-1] not in (None, len(labels)):
                raise ConvertError(
                    f"signature {signature.name!r}: probabilities has shape {classes}, "
                    f"not [..., {len(labels)}] for the {len(labels)} labels given"
                )
        if parity_inputs is not None:
            inputs = parity_inputs_from(parity_inputs, signature.function)
        else:
            inputs = generated_inputs(signature.function, GENERATED_EXAMPLES)
        checks.append(
            ParityCheck(
                signature.name,
                inputs,
                tolerances(signature.function, inputs, atol),
                batch_sizes=PARITY_BATCH_SIZES,
                # Generated inputs can sit on a tie between classes; real ones are what argmax is for.
                argmax=("probabilities",) if labels and parity_inputs is not None else (),
            )
        )
    onnx_file = {
        s.name: "model.onnx" if s.name == "serving_default" else f"{s.name}.onnx" for s in user_signatures
    }
    return ExportSpec(
        name=name,
        task="classification" if labels else "prediction",
        labels=labels,
        trackable=trackable,
        signatures=tuple(Signature(s.name, s.function, onnx_file[s.name]) for s in user_signatures),
        parity=tuple(checks),
        metrics={
            "source": str(model_path),
            "source_format": source_format,
            "parity_inputs": str(parity_inputs) if parity_inputs else "generated",
        },
        opset=opset or DEFAULT_OPSET,
    )


def main(argv: Sequence[str], default_models_dir: Path, describe: Callable[[Any], str]) -> int:
    """The `convert` subcommand; `describe` formats what was published (export's own summary)."""
    parser = argparse.ArgumentParser(
        prog="python -m export convert",
        description="Publish your own Keras model or SavedModel as the next version of NAME "
        "(SavedModel + ONNX + parity check + manifest).",
    )
    parser.add_argument(
        "--model-dir", type=Path, required=True, help="a .keras/.h5 file or a SavedModel folder"
    )
    parser.add_argument("--name", required=True, help="model name: the version goes to MODELS_DIR/NAME/<v>")
    parser.add_argument(
        "--models-dir", type=Path, default=default_models_dir, help="model repository (default: models)"
    )
    parser.add_argument(
        "--labels", type=Path, help="class names, one per line, in output order (for classify)"
    )
    parser.add_argument(
        "--signature",
        action="append",
        default=[],
        help="a SavedModel signature to publish (repeatable; default: all of them)",
    )
    parser.add_argument("--parity-inputs", type=Path, help=".npz of real examples, one array per input name")
    parser.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help="parity tolerance, relative to outputs above 1"
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17, at most 18)")
    args = parser.parse_args(argv)

    from training.common import configure_cpu

    configure_cpu()
    from export.pipeline import ExportError, publish

    try:
        labels = read_labels(args.labels) if args.labels else ()
        spec = build_spec(
            args.model_dir, args.name, labels, args.signature, args.atol, args.parity_inputs, args.opset
        )
        published = publish(spec, args.models_dir)
    except (ConvertError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe(published), flush=True)
    return 0
