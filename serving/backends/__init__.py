"""Inference engines behind one protocol (`serving.backends.base.Backend`), and the one loader.

`load_backend` lives here, not in `base`, so the protocol module imports no engine module and the
engines import only the protocol: the arrows point one way (engines -> base, loader -> engines).

`version_platform` picks the engine per version folder from the files it holds, so one server
serves exported versions, the user's bare `model.onnx` and the user's bare SavedModel side by side
whatever `--backend` says; TensorFlow is imported only when a version needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.backends.base import Backend, BackendOptions, Signature, TensorMeta
from serving.manifest import MANIFEST_FILE, VersionFilesError

__all__ = [
    "Backend",
    "BackendOptions",
    "EngineUnavailable",
    "Signature",
    "TensorMeta",
    "describe_runtime",
    "load_backend",
    "runtime_info",
    "version_platform",
]

ONNX_FILE = "model.onnx"
SAVED_MODEL_FILE = "saved_model.pb"


class EngineUnavailable(VersionFilesError):
    """The engine a version needs cannot be imported here (TensorFlow for a bare SavedModel).

    A VersionFilesError so that the repository reports it as it reports files it cannot serve:
    one log line and the version in END with this message, not a traceback.
    """


def version_platform(version_dir: Path, default: str) -> str | None:
    """The engine that serves `version_dir` ("onnx" or "tensorflow"), or None while the folder
    holds nothing servable yet (an export or a copy still being written).

    `default` (`--backend`) decides when the folder has what both engines need. Otherwise:
    `manifest.json` (an export) or a bare `model.onnx` -> onnx; a bare SavedModel (no manifest, no
    model.onnx) -> tensorflow. Under `--backend onnx` a folder with `saved_model.pb` and
    `model.onnx` but no manifest is an export being copied (exports hold all three): None.
    """
    has_manifest = (version_dir / MANIFEST_FILE).is_file()
    has_onnx = (version_dir / ONNX_FILE).is_file()
    has_saved_model = (version_dir / SAVED_MODEL_FILE).is_file()
    if default == "tensorflow":
        if has_saved_model:
            return "tensorflow"
        return "onnx" if has_manifest or has_onnx else None
    if has_manifest:
        return "onnx"
    if has_saved_model:
        return None if has_onnx else "tensorflow"
    return "onnx" if has_onnx else None


def load_backend(platform: str, version_dir: Path, options: BackendOptions) -> Backend:
    """Load one model version with the named engine ("onnx" or "tensorflow"), importing only that one."""
    if platform == "onnx":
        from serving.backends.onnx_backend import OnnxBackend

        return OnnxBackend(version_dir, options)
    if platform == "tensorflow":
        try:
            import tensorflow  # noqa: F401  (here only to tell a missing extra from a load failure)
        except ImportError as exc:
            raise EngineUnavailable(
                f"{version_dir} is a SavedModel, which needs TensorFlow, and TensorFlow cannot be "
                f"imported here ({exc}). Install the extra (pip install 'model-serving[tf]'), or "
                f"convert it to a version this server serves without TensorFlow: python -m export "
                f"convert --model-dir {version_dir} --name {version_dir.parent.name} "
                f"--models-dir {version_dir.parent.parent}"
            ) from exc
        from serving.backends.tensorflow_backend import TensorFlowBackend

        return TensorFlowBackend(version_dir, options)
    raise ValueError(f"unknown backend {platform!r} (expected 'onnx' or 'tensorflow')")


def runtime_info(backend: Backend) -> dict[str, Any]:
    """What a loaded version runs on: its engine and, for ONNX Runtime, the providers its sessions
    actually got (`session.get_providers()`, which may be fewer than were requested)."""
    info: dict[str, Any] = {"backend": backend.platform}
    providers = getattr(backend, "providers", None)
    if providers is not None:
        info["providers"] = list(providers)
    return info


def describe_runtime(backend: Backend) -> str:
    """`runtime_info` as a log line: "onnx on CUDAExecutionProvider, CPUExecutionProvider"."""
    info = runtime_info(backend)
    providers = info.get("providers")
    return f"{info['backend']} on {', '.join(providers)}" if providers else str(info["backend"])
