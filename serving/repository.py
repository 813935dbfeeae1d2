"""The model repository: which versions of which models are loaded, and their states.

Follows TF Serving's lifecycle: each version found under `base_path` and selected by the version
policy goes START -> LOADING -> AVAILABLE (after a warm-up call per signature), and UNLOADING -> END
when a newer version replaces it; a version that fails to load ends in END with its error. A poller
picks up newly published versions (export writes a version folder atomically) without a restart.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.backends.base import Backend, BackendOptions, Signature, load_backend
from serving.codec import STRING
from serving.config import ModelConfig
from serving.errors import NotFound, Unavailable
from serving.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    """ModelVersionStatus.State numbers."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    state: State = State.START
    error: str = ""
    backend: Backend | None = None
    loaded_at: float = 0.0

    def signatures(self) -> dict[str, Signature]:
        return dict(self.backend.signatures()) if self.backend else {}


@dataclass
class Model:
    config: ModelConfig
    versions: dict[int, ModelVersion] = field(default_factory=dict)


def discover_versions(base_path: Path, platform: str) -> list[int]:
    """Integer-named subfolders that hold a complete export for the backend in use."""
    if not base_path.is_dir():
        return []
    marker = MANIFEST_FILE if platform == "onnx" else "saved_model.pb"
    found = []
    for child in base_path.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0 and (child / marker).is_file():
            found.append(int(child.name))
    return sorted(found)


def warm_up(backend: Backend) -> None:
    """Run every signature once on a dummy batch of one, so the first real request is not slow."""
    for name, signature in backend.signatures().items():
        if any(meta.dtype == STRING for meta in signature.inputs.values()):
            continue  # encoded inputs have no meaningful dummy value; the preprocess path is warmed by use
        if any(d < 0 for meta in signature.inputs.values() for d in meta.shape[1:]):
            continue
        dummy = {
            key: np.zeros((1, *meta.shape[1:]), dtype=meta.dtype) for key, meta in signature.inputs.items()
        }
        backend.run(name, backend.prepare(name, dummy))


Loader = Callable[[str, Path, BackendOptions], Backend]


class Repository:
    """Holds the models; load/unload run in the executor, state reads are lock-free."""

    def __init__(
        self,
        configs: Iterable[ModelConfig],
        platform: str,
        options: BackendOptions,
        executor: Executor | None = None,
        loader: Loader = load_backend,
    ) -> None:
        self.models: dict[str, Model] = {c.name: Model(c) for c in configs}
        self.platform = platform
        self.options = options
        self.executor = executor
        self.loader = loader
        self.on_change: Callable[[ModelVersion], None] = lambda version: None
        self._lock = asyncio.Lock()

    # -- lookup ----------------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        if not name:
            raise NotFound("model_spec.name is required")
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"Servable not found for request: model '{name}' is not served") from None

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ModelVersion:
        """The version a request means: explicit version, a label, or the newest AVAILABLE one."""
        model = self.model(name)
        if label:
            if label not in model.config.version_labels:
                raise NotFound(f"model '{name}' has no version label '{label}'")
            version = model.config.version_labels[label]
        if version is not None:
            found = model.versions.get(version)
            if found is None or found.state == State.END:
                raise NotFound(f"Servable not found for request: model '{name}' version {version}")
            if found.state != State.AVAILABLE:
                raise Unavailable(
                    f"model '{name}' version {version} is {found.state.name}, not yet available"
                )
            return found
        available = [v for v in model.versions.values() if v.state == State.AVAILABLE]
        if not available:
            if any(v.state in (State.START, State.LOADING) for v in model.versions.values()):
                raise Unavailable(f"model '{name}' is still loading")
            raise Unavailable(f"model '{name}' has no loadable version under {model.config.base_path}")
        return max(available, key=lambda v: v.version)

    def statuses(self, name: str, version: int | None = None, label: str | None = None) -> list[ModelVersion]:
        model = self.model(name)
        if label:
            if label not in model.config.version_labels:
                raise NotFound(f"model '{name}' has no version label '{label}'")
            version = model.config.version_labels[label]
        if version is not None:
            if version not in model.versions:
                raise NotFound(f"model '{name}' version {version} is not known")
            return [model.versions[version]]
        return sorted(model.versions.values(), key=lambda v: v.version)

    def all_available(self) -> bool:
        """True once every model has at least one AVAILABLE version (readiness)."""
        return all(any(v.state == State.AVAILABLE for v in m.versions.values()) for m in self.models.values())

    # -- loading ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Bring every model in line with its folder and version policy (load new, unload old)."""
        async with self._lock:
            await asyncio.gather(*(self._sync_model(model) for model in self.models.values()))

    async def _sync_model(self, model: Model) -> None:
        config = model.config
        wanted = set(config.version_policy.select(discover_versions(config.base_path, self.platform)))
        # Labels must point at served versions: keep labelled versions that exist on disk.
        on_disk = set(discover_versions(config.base_path, self.platform))
        wanted |= {v for v in config.version_labels.values() if v in on_disk}
        loads = [
            self._load(model, v)
            for v in sorted(wanted)
            if v not in model.versions
            or (model.versions[v].state == State.END and not model.versions[v].error)
        ]
        await asyncio.gather(*loads)
        for version in list(model.versions.values()):
            if version.version not in wanted and version.state == State.AVAILABLE:
                await self._unload(version)

    async def _load(self, model: Model, version: int) -> None:
        path = model.config.base_path / str(version)
        entry = ModelVersion(model.config.name, version, path, State.LOADING)
        model.versions[version] = entry
        self.on_change(entry)
        log.info("loading %s version %d from %s", entry.name, version, path)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            backend = await loop.run_in_executor(self.executor, self._load_and_warm, path)
        except Exception as exc:  # any failure to load is reported as the version's status
            log.exception("failed to load %s version %d", entry.name, version)
            entry.state, entry.error = State.END, f"{type(exc).__name__}: {exc}"
        else:
            entry.backend, entry.state, entry.loaded_at = backend, State.AVAILABLE, time.time()
            log.info(
                "%s version %d AVAILABLE (%s, %.2fs, signatures %s)",
                entry.name,
                version,
                self.platform,
                time.perf_counter() - started,
                sorted(backend.signatures()),
            )
        self.on_change(entry)

    def _load_and_warm(self, path: Path) -> Backend:
        backend = self.loader(self.platform, path, self.options)
        warm_up(backend)
        return backend

    async def _unload(self, entry: ModelVersion) -> None:
        log.info("unloading %s version %d", entry.name, entry.version)
        entry.state = State.UNLOADING
        self.on_change(entry)
        backend, entry.backend = entry.backend, None
        if backend is not None:
            backend.close()
        entry.state = State.END
        self.on_change(entry)

    async def poll_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception:
                log.exception("model repository poll failed; will retry")

    async def close(self) -> None:
        for model in self.models.values():
            for entry in model.versions.values():
                if entry.backend is not None:
                    entry.backend.close()
                    entry.backend = None
