"""`manifest.json`: what one exported model version holds and how to serve it without TensorFlow.

Written by `export/` (which imports this module), read by the ONNX backend and the repository.
A version folder without one (the user's bare `model.onnx` or SavedModel) is served too, with
nothing to check its files against (see `serving.backends.version_platform`).
Schema (version 1), all keys required unless marked optional:

    {
      "schema_version": 1,
      "name": "digits", "version": 3, "created": "2026-11-27T05:00:00Z",
      "task": "image_classification" | "text_classification"   # ours
              | "classification" | "prediction",             # `python -m export convert` (labels or not)
      "labels": ["0", ..., "9"],                      # class order of `probabilities`
      "producer": {"tensorflow": "2.21.0", "keras": "3.15.1", "tf2onnx": "1.17.0", "opset": 17},
      "signatures": {
        "serving_default": {
          "method": "tensorflow/serving/predict",
          "inputs":  {"image": {"dtype": "float32", "shape": [-1, 28, 28, 1]}},
          "outputs": {"probabilities": {"dtype": "float32", "shape": [-1, 10]}},
          "onnx": {"file": "model.onnx",
                   "inputs":  {"image": "image"},                  # tensor name -> ONNX input name
                   "outputs": {"probabilities": "probabilities"}}, # signature output -> ONNX output
          "preprocess": null | {                                   # optional, server-side, no TF
              "kind": "image_bytes" | "text",
              "input": "image_bytes",     # request tensor it consumes (used when present)
              "output": "image",          # tensor it produces, then bound through onnx.inputs
              "params": {...}             # image_bytes: height, width, channels, resize ("bilinear")
          }                               # text: vocabulary (relative path), sequence_length, ...
          "explainer": null | {"kind": "token_occlusion"}   # optional: the signature is computed by
        },                                  # an explainer around the ONNX graph (see onnx_backend)
        ...
      },
      "metrics": {...},     # free-form: test accuracy, per-class accuracy, recipe...
      "parity": {...},      # free-form: max_abs_diff, batch sizes, argmax_agreement, passed: true
      "files": {"model.onnx": "<sha256>", "saved_model.pb": "<sha256>", ...}
    }

dtype names are numpy's (`float32`, `int64`, ...) plus `string` for DT_STRING tensors.

`files` is the complete list of the version's files (every file under the folder but those named
manifest.json, as `export.pipeline.sha256_tree` writes it). `read_manifest(verify_files=True)` holds the
folder to it: every listed file exists, lies inside the folder and has its sha256, and no other
file is there (an unlisted file is one nobody checked: a partial copy, an external-data file the
engine would read unverified). The server runs this check before any engine opens a file. It
guards against corrupt, truncated and half-copied versions, not against someone who can write to
the model folder: they can rewrite the manifest too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"


class VersionFilesError(ValueError):
    """A model version's files cannot be served: the manifest is missing or malformed, a file does
    not match it, or the engine rejects a file. The message names the file and the cause."""


class ManifestError(VersionFilesError):
    """The manifest is missing, malformed, or does not match the files beside it."""


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # numpy dtype name, or "string"
    shape: tuple[int, ...]  # -1 where unknown; batch dimension first

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TensorSpec:
        return cls(dtype=str(raw["dtype"]), shape=tuple(int(d) for d in raw["shape"]))


@dataclass(frozen=True)
class OnnxBinding:
    file: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OnnxBinding:
        return cls(file=str(raw["file"]), inputs=dict(raw["inputs"]), outputs=dict(raw["outputs"]))


@dataclass(frozen=True)
class Preprocess:
    kind: str
    input: str
    output: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Preprocess:
        return cls(
            kind=str(raw["kind"]),
            input=str(raw["input"]),
            output=str(raw["output"]),
            params=dict(raw.get("params") or {}),
        )


@dataclass(frozen=True)
class SignatureManifest:
    method: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    onnx: OnnxBinding
    preprocess: Preprocess | None = None
    explainer: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SignatureManifest:
        pre = raw.get("preprocess")
        return cls(
            explainer=dict(raw["explainer"]) if raw.get("explainer") else None,
            method=str(raw.get("method", PREDICT_METHOD)),
            inputs={k: TensorSpec.from_json(v) for k, v in raw["inputs"].items()},
            outputs={k: TensorSpec.from_json(v) for k, v in raw["outputs"].items()},
            onnx=OnnxBinding.from_json(raw["onnx"]),
            preprocess=Preprocess.from_json(pre) if pre else None,
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    task: str
    labels: tuple[str, ...]
    signatures: Mapping[str, SignatureManifest]
    producer: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    parity: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Manifest:
        try:
            version = int(raw["schema_version"])
            if version != SCHEMA_VERSION:
                raise ManifestError(f"unsupported manifest schema_version {version}")
            return cls(
                name=str(raw["name"]),
                version=int(raw["version"]),
                task=str(raw["task"]),
                labels=tuple(str(label) for label in raw["labels"]),
                signatures={k: SignatureManifest.from_json(v) for k, v in raw["signatures"].items()},
                producer=dict(raw.get("producer") or {}),
                metrics=dict(raw.get("metrics") or {}),
                parity=dict(raw.get("parity") or {}),
                files=dict(raw.get("files") or {}),
                created=str(raw.get("created", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a field of the wrong JSON type
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {exc!r}") from exc

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["labels"] = list(self.labels)
        return raw


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(version_dir: Path, verify_files: bool = True) -> Manifest:
    """Read `version_dir/manifest.json`; with `verify_files`, hold the folder to its `files` list
    (every listed sha256 matches, nothing unlisted is there: see the module docstring)."""
    path = version_dir / MANIFEST_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} does not exist") from exc
    except OSError as exc:
        raise ManifestError(f"{path} cannot be read: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} is not a JSON object")
    manifest = Manifest.from_json(raw)
    if verify_files:
        verify_files_of(version_dir, manifest)
    return manifest


def verify_files_of(version_dir: Path, manifest: Manifest) -> None:
    """Raise ManifestError unless the files under `version_dir` are exactly `manifest.files`."""
    for rel in manifest.files:
        relative = PurePosixPath(rel)
        if relative.is_absolute() or not relative.parts or ".." in relative.parts or "\\" in rel:
            raise ManifestError(f"{version_dir / MANIFEST_FILE}: {rel!r} is not a path inside the folder")
    present = set(files_under(version_dir))
    unlisted = sorted(present - set(manifest.files))
    if unlisted:
        raise ManifestError(
            f"{version_dir}: {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''} "
            "not listed in the manifest (no sha256 to check it against)"
        )
    for rel, expected in sorted(manifest.files.items()):
        file = version_dir / rel
        if rel not in present:
            raise ManifestError(f"{file} is listed in the manifest but missing")
        try:
            actual = sha256_file(file)
        except OSError as exc:
            raise ManifestError(f"{file} cannot be read: {exc}") from exc
        if actual != expected:
            raise ManifestError(f"{file}: sha256 {actual} does not match the manifest's {expected}")


def files_under(version_dir: Path) -> list[str]:
    """Relative posix paths of the files under `version_dir` that the manifest lists: every file
    but those named manifest.json (the exporter's `sha256_tree` leaves those out at any depth)."""
    found = []
    for root, _dirs, names in os.walk(version_dir):
        for name in names:
            path = Path(root) / name
            if name != MANIFEST_FILE and path.is_file():
                found.append(path.relative_to(version_dir).as_posix())
    return sorted(found)


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    """Write the manifest last, so a version folder without one is known to be incomplete."""
    path = version_dir / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
