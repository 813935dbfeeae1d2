"""TensorFlow SavedModel backend (optional extra `[tf]`): serves `saved_model.pb` directly.

The only module of the server that imports TensorFlow, and only when a version needs it (`--backend
tensorflow`, or a bare SavedModel). String ops (image decoding, TextVectorization, `parse_example`)
run in the graph, so `prepare` has nothing to do.

Signatures are read from the SavedModel's own `SignatureDef`s (the MetaGraph tagged `serve`), as TF
Serving reads them: method name (predict / classify / regress), the graph tensor names (`x:0`), and
the declared shapes, unknown rank included, for `GetModelMetadata`. Both kinds of SavedModel load
through `tf.saved_model.load`:
- TF2 (`tf.saved_model.save`): each signature is a `tf.function` that checks its inputs against its
  input signature, so requests are validated against those shapes.
- TF1 (`tf.compat.v1` graphs written by `SavedModelBuilder`, like TF Serving's `half_plus_two`):
  each signature is the graph pruned from its feeds to its fetches. Like a `Session.run` feed in TF
  Serving, a feed may have any shape (a `[-1, 1]` tensor takes `[3]`): the graph decides, and an op
  that cannot take it fails the request with INVALID_ARGUMENT. Such inputs are `GraphTensor`s with
  `any_shape`, and the data plane checks only their dtype (and that they have a batch axis).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendOptions, Signature, TensorMeta
from serving.codec import STRING, numpy_dtype
from serving.errors import InvalidArgument
from serving.manifest import ManifestError, VersionFilesError, read_manifest

log = logging.getLogger(__name__)

SERVE_TAG = "serve"


@dataclass(frozen=True)
class GraphTensor(TensorMeta):
    """A signature tensor of a SavedModel, as its SignatureDef declares it.

    `shape` is the declared shape (-1 for unknown dimensions; `()` when the rank is unknown), what
    `GetModelMetadata` reports; `any_shape` says the engine takes a tensor of any shape here (a TF1
    graph's feed, or an unknown-rank tf.function input), so requests are not held to `shape`.
    """

    tensor_name: str = ""  # the graph tensor, e.g. "x:0"
    unknown_rank: bool = False


class TensorFlowBackend:
    platform = "tensorflow"

    def __init__(self, version_dir: Path, options: BackendOptions) -> None:
        import tensorflow as tf

        if options.intra_op_threads:
            _set_threads(tf.config.threading.set_intra_op_parallelism_threads, options.intra_op_threads)
        if options.inter_op_threads:
            _set_threads(tf.config.threading.set_inter_op_parallelism_threads, options.inter_op_threads)
        self._tf = tf
        meta_graph = _serving_meta_graph(tf, version_dir)
        # TF1 SavedModels have no object graph: their signatures are pruned graphs (see the module doc).
        tf2 = len(meta_graph.object_graph_def.nodes) > 0
        self._loaded = tf.saved_model.load(str(version_dir), tags=[SERVE_TAG])
        try:
            self.labels: tuple[str, ...] = read_manifest(version_dir, verify_files=False).labels
        except ManifestError:
            self.labels = ()
        self._functions: dict[str, Any] = {}
        self._signatures: dict[str, Signature] = {}
        loaded = dict(self._loaded.signatures)
        for name, definition in sorted(meta_graph.signature_def.items()):
            function = loaded.get(name)
            if function is None:  # the loader could not build it (e.g. sparse inputs): not served
                continue
            _, specs = function.structured_input_signature
            try:
                inputs = {
                    key: _graph_tensor(info, specs.get(key) if tf2 else None, enforced=tf2)
                    for key, info in definition.inputs.items()
                }
                outputs = {key: _graph_tensor(info, None, enforced=False) for key, info in definition.outputs.items()}
            except InvalidArgument as exc:  # a dtype no wire format carries (DT_RESOURCE, DT_VARIANT)
                log.warning("%s: signature '%s' is not served: %s", version_dir, name, exc.message)
                continue
            self._functions[name] = function
            self._signatures[name] = Signature(name, definition.method_name, inputs, outputs)

    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        tf = self._tf
        feed = {
            name: tf.constant(value.tolist(), dtype=tf.string) if value.dtype == STRING else tf.constant(value)
            for name, value in inputs.items()
        }
        try:
            results = self._functions[signature](**feed)
        except tf.errors.InvalidArgumentError as exc:
            # An op refused these values (parse_example on bytes that are no tf.Example, a reshape
            # that does not divide): the input's fault, as TF Serving passes it on.
            raise InvalidArgument(_op_message(exc.message)) from exc
        except (TypeError, ValueError) as exc:
            # A tf.function whose input signature does not take these shapes or dtypes.
            raise InvalidArgument(f"signature '{signature}' cannot take these inputs: {_first_line(str(exc))}") from exc
        wanted = list(outputs) if outputs is not None else list(results)
        return {name: results[name].numpy() for name in wanted}

    def close(self) -> None:
        self._functions.clear()


def _set_threads(setter: Any, threads: int) -> None:
    """Set a process-wide TensorFlow thread count; TF refuses once its runtime has started (a
    second version loading in the same process), and the first setting then stays."""
    with contextlib.suppress(RuntimeError):
        setter(threads)


def _serving_meta_graph(tf: Any, version_dir: Path) -> Any:
    """The MetaGraphDef tagged `serve` from `saved_model.pb` (or `saved_model.pbtxt`)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    binary, text = version_dir / "saved_model.pb", version_dir / "saved_model.pbtxt"
    try:
        if binary.is_file():
            saved_model.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse(text.read_text(), saved_model)
    except (OSError, text_format.ParseError, ValueError) as exc:  # DecodeError is a ValueError
        raise VersionFilesError(f"{version_dir}: cannot read the SavedModel: {exc}") from exc
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise VersionFilesError(f"{version_dir}: the SavedModel has no MetaGraph tagged '{SERVE_TAG}' (tags: {tags})")


def _graph_tensor(info: Any, spec: Any, enforced: bool) -> GraphTensor:
    """A SignatureDef TensorInfo as a GraphTensor; `spec` is the tf.function's TensorSpec for it
    (TF2), whose shape the function enforces on calls."""
    dtype = numpy_dtype(info.dtype)
    unknown_rank = info.tensor_shape.unknown_rank
    declared = () if unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    any_shape = not enforced or spec is None or spec.shape.rank is None
    if not any_shape:
        declared = tuple(-1 if d is None else int(d) for d in spec.shape.as_list())
    return GraphTensor(
        dtype=dtype, shape=declared, tensor_name=info.name, unknown_rank=unknown_rank, any_shape=any_shape
    )


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "the model refused the input"


def _op_message(message: str) -> str:
    """The failing op's own words from an eager TensorFlow error: the line before its
    `[[{{node ...}}]]` marker, without the Python stack TensorFlow puts in front of it."""
    lines = [line for line in message.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.lstrip().startswith("[[") and index > 0:
            return f"{lines[index - 1].strip()} {line.strip()}"
    useful = [line.strip() for line in lines if not line.startswith("  ") and "Graph execution error" not in line]
    return useful[-1] if useful else _first_line(message)
