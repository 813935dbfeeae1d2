"""ONNX Runtime backend: serves `model.onnx` / `explain.onnx` as the manifest describes them.

The only module that imports onnxruntime. One InferenceSession per ONNX file, shared by every
signature bound to it. A signature may also be an explainer around a graph: `token_occlusion`
(sentiment's `explain`) tokenizes each text, runs the classifier on the text and on each one-token
occlusion of it, and returns `probabilities`, `tokens` and `importance` (see `serving.text`).
Sessions are thread-safe (ONNX Runtime allows concurrent `run` calls) and
releases the GIL, so the data plane calls it from worker threads.

What it reads from the version folder: `manifest.json` (JSON), the ONNX files the manifest binds
(parsed by ONNX Runtime: a graph of operators, no code; no custom-op libraries are registered) and
a text preprocessor's vocabulary (plain text). Each of those files must be listed in the manifest's
`files`, which the repository has checked against the folder (sha256, nothing unlisted) before this
backend is built (`serving.repository.check_version_files`); a file ONNX Runtime rejects fails the
load with a `VersionFilesError` naming it.

A folder with `model.onnx` and no manifest (the user's own model) is served as Triton serves one:
one signature, `serving_default`, whose inputs and outputs are the graph's (names, dtypes, shapes
with -1 for symbolic or unknown dimensions; see `graph_manifest`), no labels, nothing to check the
file against (ONNX Runtime reads it, and any external-data files it names, as they are).

Providers: `serving.backends.providers` picks them from `--onnx_providers` and this build's list,
and checks what each session really got (`session.get_providers()`, kept in `providers`):
a provider ONNX Runtime could not initialise is logged, or fails the load under
`--onnx_require_accelerator`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, cast

import numpy as np

from serving.backends.base import BackendOptions, Signature, TensorMeta
from serving.backends.gpu_memory import with_memory_limit
from serving.backends.providers import check_session_providers, choose_providers
from serving.codec import STRING, dtype_from_name
from serving.errors import InvalidArgument
from serving.manifest import (
    MANIFEST_FILE,
    PREDICT_METHOD,
    Manifest,
    ManifestError,
    OnnxBinding,
    SignatureManifest,
    TensorSpec,
    VersionFilesError,
    read_manifest,
)
from serving.preprocess import Preprocessor, build_preprocessor

log = logging.getLogger(__name__)

Explainer = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

BARE_ONNX_FILE = "model.onnx"  # what a version folder without a manifest is served from

# ONNX Runtime's type strings (`NodeArg.type`) -> manifest dtype names (numpy's, or "string").
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def _meta(spec: TensorSpec) -> TensorMeta:
    return TensorMeta(dtype=dtype_from_name(spec.dtype), shape=spec.shape)


def graph_spec(arg: Any) -> TensorSpec | None:
    """A session input/output (`NodeArg`: name, type "tensor(float)", shape of ints, names of
    symbolic dimensions or None) as a TensorSpec; None for types a TensorProto cannot carry
    (sequences, maps, bfloat16...)."""
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        return None
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(dtype=dtype, shape=shape)


def graph_manifest(version_dir: Path, session: Any) -> Manifest:
    """The manifest of a bare `model.onnx`: `serving_default` with the graph's inputs and outputs
    under their ONNX names. Outputs of non-tensor types are left out (with a warning); an input of
    such a type makes the model unservable."""
    path = version_dir / BARE_ONNX_FILE
    inputs: dict[str, TensorSpec] = {}
    for arg in session.get_inputs():
        spec = graph_spec(arg)
        if spec is None:
            raise VersionFilesError(
                f"{path}: input {arg.name!r} has type {arg.type}, which requests cannot carry"
            )
        inputs[arg.name] = spec
    outputs: dict[str, TensorSpec] = {}
    for arg in session.get_outputs():
        spec = graph_spec(arg)
        if spec is None:
            log.warning(
                "%s: output %r has type %s, which responses cannot carry: left out", path, arg.name, arg.type
            )
        else:
            outputs[arg.name] = spec
    if not outputs:
        raise VersionFilesError(f"{path}: no output of a tensor type to serve")
    signature = SignatureManifest(
        method=PREDICT_METHOD,
        inputs=inputs,
        outputs=outputs,
        onnx=OnnxBinding(BARE_ONNX_FILE, {n: n for n in inputs}, {n: n for n in outputs}),
    )
    name = version_dir.name
    return Manifest(
        name=version_dir.parent.name,
        version=int(name) if name.isdigit() else 0,
        task="",
        labels=(),
        signatures={"serving_default": signature},
    )


def _ort_strings(name: str, value: np.ndarray) -> np.ndarray:
    """A string input (object array of `bytes`) as ONNX Runtime's Python API takes it: `str`
    elements, which it writes as UTF-8 (it would write a `bytes` element as its repr, "b'...'")."""
    flat = np.empty(value.size, dtype=STRING)
    try:
        flat[:] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"input '{name}': ONNX Runtime takes strings as UTF-8 text; byte {exc.start} of an element is not UTF-8"
        ) from None
    return flat.reshape(value.shape)


def _served_strings(value: np.ndarray) -> np.ndarray:
    """A string output of ONNX Runtime (`str` elements) as the server's object array of `bytes`."""
    flat = np.empty(value.size, dtype=STRING)
    flat[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in value.reshape(-1)]
    return flat.reshape(value.shape)


@functools.cache
def _ort_errors() -> Any:
    """onnxruntime's exception classes (imported lazily, like the engine itself)."""
    from onnxruntime.capi import onnxruntime_pybind11_state

    return onnxruntime_pybind11_state


def session_runner(session: Any) -> Callable[[list[str], dict[str, Any]], list[Any]]:
    """How to run `session`: `run(output_names, feed)`.

    On the CPU provider alone, the engine's own `run` (`InferenceSession._sess`, the C++ session
    that `InferenceSession.run` calls): the Python wrapper around it re-checks the feed's names
    against the graph through several pybind calls (this backend feeds exactly the signature's
    inputs, checked by `dataplane.validate_inputs`), checks WebGPU graph capture and OrtValue
    ownership (neither is used here), and retries on another provider after an EPFail (there is
    none to retry on). Measured on a digits call: 39.4-40.9 -> 38.3-38.9 us in a loop; under load
    (h2load, 32 streams of 1 image, interleaved rounds) 2,781-2,796 -> 2,834 req/s in one sitting,
    within the rounds' spread in another. Any other provider, or an onnxruntime without `_sess`:
    the wrapper.
    """
    engine = getattr(session, "_sess", None)
    if engine is None or not callable(getattr(engine, "run", None)) or list(session.get_providers()) != ["CPUExecutionProvider"]:
        return cast(Callable[[list[str], dict[str, Any]], list[Any]], session.run)
    engine_run = engine.run

    def run(output_names: list[str], feed: dict[str, Any]) -> list[Any]:
        return cast(list[Any], engine_run(output_names, feed, None))

    return run


class OnnxBackend:
    platform = "onnx"

    def __init__(self, version_dir: Path, options: BackendOptions) -> None:
        import onnxruntime as ort

        self.version_dir = version_dir
        # A folder with only model.onnx (the user's own model) has no manifest: it is served with
        # the one signature its graph declares, read from the session (`graph_manifest`).
        self.bare = not (version_dir / MANIFEST_FILE).exists()
        # Verified by the repository before the engine is built (one sha256 pass per load).
        self.manifest: Manifest = (
            Manifest(name=version_dir.parent.name, version=0, task="", labels=(), signatures={})
            if self.bare
            else read_manifest(version_dir, verify_files=False)
        )
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        # Idle worker threads must not spin: a server spends most of its time waiting for requests.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        choice = choose_providers(
            options.providers, ort.get_available_providers(), options.require_accelerator
        )
        for warning in choice.warnings:
            log.warning("%s: %s", version_dir, warning)
        # --per_process_gpu_memory_fraction: a byte cap on the CUDA provider's memory arena.
        providers, memory_warning = with_memory_limit(choice.providers, options.gpu_memory_fraction)
        if memory_warning:
            log.warning("%s: %s", version_dir, memory_warning)
        # What the sessions actually run on (`session.get_providers()`), set by `_open`.
        self.providers: tuple[str, ...] = ()

        def _open(path: Path) -> Any:
            try:
                session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
            except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, Fail, ...)
                raise VersionFilesError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
            actual = tuple(session.get_providers())
            fallback = check_session_providers(choice.providers, actual, options.require_accelerator)
            if fallback:
                log.warning("%s: %s", path, fallback)
            self.providers = actual
            return session

        self._sessions: dict[str, Any] = {}
        self._runs: dict[str, Callable[[list[str], dict[str, Any]], list[Any]]] = {}  # file -> `session_runner`
        self._signatures: dict[str, Signature] = {}
        self._bindings: dict[str, SignatureManifest] = {}
        self._outputs: dict[str, tuple[list[str], list[str]]] = {}
        self._preprocessors: dict[str, Preprocessor] = {}
        self._explainers: dict[str, Explainer] = {}
        if self.bare:
            session = self._sessions[BARE_ONNX_FILE] = _open(version_dir / BARE_ONNX_FILE)
            self.manifest = graph_manifest(version_dir, session)
        self.labels = self.manifest.labels
        for name, sig in self.manifest.signatures.items():
            if sig.onnx.file not in self._sessions:
                self._sessions[sig.onnx.file] = _open(version_dir / self._listed(name, sig.onnx.file))
            if sig.preprocess is not None and "vocabulary" in sig.preprocess.params:
                self._listed(name, str(sig.preprocess.params["vocabulary"]))
            alternatives: dict[str, str] = {}
            if sig.explainer is not None:
                self._explainers[name] = self._build_explainer(name, sig)
            elif sig.preprocess is not None:
                self._preprocessors[name] = build_preprocessor(
                    sig.preprocess.kind, version_dir, sig.preprocess.params, options.preprocess
                )
                if sig.preprocess.input not in sig.inputs:
                    alternatives[sig.preprocess.input] = sig.preprocess.output
            self._bindings[name] = sig
            self._runs[sig.onnx.file] = session_runner(self._sessions[sig.onnx.file])
            # The signature's output names and their graph names, in order (`run` without a filter).
            self._outputs[name] = (list(sig.onnx.outputs), list(sig.onnx.outputs.values()))
            self._signatures[name] = Signature(
                name=name,
                method=sig.method,
                inputs={k: _meta(v) for k, v in sig.inputs.items()},
                outputs={k: _meta(v) for k, v in sig.outputs.items()},
                alternatives=alternatives,
            )

    def _listed(self, signature: str, file: str) -> str:
        """`file` if the manifest lists it (so it lies inside the folder and its sha256 was checked)."""
        if PurePosixPath(file).as_posix() not in self.manifest.files:
            raise ManifestError(
                f"{self.version_dir}: signature '{signature}' reads {file!r}, which the manifest's "
                "files do not list (no sha256 to check it against)"
            )
        return file

    def _build_explainer(self, name: str, sig: SignatureManifest) -> Explainer:
        kind = sig.explainer.get("kind") if sig.explainer else None
        if kind != "token_occlusion" or sig.preprocess is None or sig.preprocess.kind != "text":
            raise ManifestError(
                f"signature '{name}': unknown explainer {sig.explainer!r} (or no text preprocess)"
            )
        from serving.text import Tokenizer, explain_batch

        tokenizer = Tokenizer.from_params(self.version_dir, sig.preprocess.params)
        session = self._sessions[sig.onnx.file]
        ids_name = sig.onnx.inputs[sig.preprocess.output]
        probabilities_name = sig.onnx.outputs["probabilities"]

        def explain(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            texts = list(inputs[sig.preprocess.input])  # type: ignore[union-attr]

            def run_probabilities(token_ids: np.ndarray) -> np.ndarray:
                return session.run([probabilities_name], {ids_name: token_ids})[0]

            return explain_batch(run_probabilities, tokenizer, texts)

        return explain

    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self._bindings[signature]
        pre = binding.preprocess
        if pre is not None and pre.input in inputs and signature not in self._explainers:
            inputs = dict(inputs)
            inputs[pre.output] = self._preprocessors[signature](inputs.pop(pre.input))
        return inputs

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        binding = self._bindings[signature]
        if signature in self._explainers:
            results = self._explainers[signature](inputs)
            return {name: results[name] for name in (outputs or binding.outputs)}
        run = self._runs[binding.onnx.file]
        onnx_inputs = binding.onnx.inputs
        feed = {
            onnx_inputs[name]: _ort_strings(name, value) if value.dtype.kind == "O" else value
            for name, value in inputs.items()
        }
        if outputs is None:  # every output: the names are listed once per signature
            wanted, onnx_outputs = self._outputs[signature]
        else:
            wanted = list(outputs)
            onnx_outputs = [binding.onnx.outputs[name] for name in wanted]
        try:
            arrays: list[np.ndarray] = run(onnx_outputs, feed)
        except (_ort_errors().InvalidArgument, _ort_errors().Fail) as exc:
            # An op refused these values although the signature accepts their shapes (a Reshape
            # that does not divide, say): the input's fault, as TF Serving passes an op's
            # INVALID_ARGUMENT through. Engine faults (RuntimeException, EPFail...) stay INTERNAL.
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidArgument(f"the model cannot run on this input: {message}") from exc
        return {
            name: _served_strings(result) if result.dtype.kind == "O" else result
            for name, result in zip(wanted, arrays, strict=True)
        }

    def close(self) -> None:
        self._sessions.clear()
        self._runs.clear()
