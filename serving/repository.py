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
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from serving.backends import Backend, BackendOptions, Signature, load_backend
from serving.batching import Batcher
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


@dataclass(frozen=True)
class EngineCost:
    """Seconds one engine call takes for a signature, measured at warm-up: `fixed + per_row * rows`.

    Measured on the loading thread before the version serves (minimum of a few runs, so other
    work on the machine inflates it little); the data plane uses it to decide whether a call is
    cheap enough to run on the event loop (see `DataPlane`).
    """

    fixed: float
    per_row: float

    def seconds(self, rows: int) -> float:
        return self.fixed + self.per_row * max(rows - 1, 0)


@dataclass(eq=False)
class ModelVersion:
    """One loaded model version: a servable that owns its engine, batchers and statistics.

    Requests lease it (`acquire` / `release`, on the event loop) from resolution until their answer
    is computed, batch queue included; `unload` waits for the leases to end before it closes the
    engine, so a version change never fails a request that already chose this version.
    """

    name: str
    version: int
    path: Path
    state: State = State.START
    error: str = ""
    backend: Backend | None = None
    loaded_at: float = 0.0
    engine_costs: dict[str, EngineCost] = field(default_factory=dict)
    batchers: dict[str, Batcher] = field(default_factory=dict)
    in_flight: int = 0
    _released: asyncio.Event | None = field(default=None, repr=False)

    def signatures(self) -> Mapping[str, Signature]:
        """The engine's signatures (read-only; empty once unloaded)."""
        return self.backend.signatures() if self.backend else {}

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._released is not None:
            self._released.set()

    async def unload(self, timeout: float) -> None:
        """UNLOADING (no new request resolves to it), wait for leases up to `timeout`, then END."""
        self.state = State.UNLOADING
        if self.in_flight:
            self._released = asyncio.Event()
            try:
                await asyncio.wait_for(self._released.wait(), timeout)
            except TimeoutError:
                log.warning(
                    "%s version %d: %d requests still running after %.1fs; unloading anyway",
                    self.name,
                    self.version,
                    self.in_flight,
                    timeout,
                )
        batchers = list(self.batchers.values())
        self.batchers.clear()
        await asyncio.gather(*(batcher.close() for batcher in batchers))
        self.engine_costs.clear()
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        self.state = State.END


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


def warm_up(backend: Backend, repeats: int = 3) -> dict[str, EngineCost]:
    """Run every signature on dummy batches of 1 and 8 rows, so the first real request is not slow,
    and return what each call costs (signatures with string or variable-size inputs are skipped:
    they have no meaningful dummy value, and are warmed by use)."""
    costs: dict[str, EngineCost] = {}
    for name, signature in backend.signatures().items():
        if any(meta.dtype == STRING for meta in signature.inputs.values()):
            continue
        if any(d < 0 for meta in signature.inputs.values() for d in meta.shape[1:]):
            continue
        seconds = {}
        for rows in (1, 8):
            dummy = {
                key: np.zeros((rows, *meta.shape[1:]), dtype=meta.dtype)
                for key, meta in signature.inputs.items()
            }
            prepared = backend.prepare(name, dummy)
            backend.run(name, prepared)  # the first call allocates; not timed
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                backend.run(name, prepared)
                timings.append(time.perf_counter() - started)
            seconds[rows] = min(timings)
        costs[name] = EngineCost(seconds[1], max(seconds[8] - seconds[1], 0.0) / 7)
    return costs


# With `--tensorflow_intra_op_parallelism` left at 0 (auto), a version loads with one engine
# thread; if one row of its slowest signature takes longer than this, it is reloaded with one
# thread per CPU this process may use (`available_cpus`). Under concurrent load one thread per call
# is the most throughput per core (calls run side by side on the other cores, and the thread pool's
# hand-offs cost a small model more than they gain: digits 0.1 ms, the 224-px catdog MobileNet
# 0.7 ms on this repository's reference machine); only models slow enough that one request's
# latency matters more than that (ResNet-class, tens of ms) get a thread pool. The margin is wide
# on purpose: the timing is taken on a possibly busy machine.
SINGLE_THREAD_MAX_SECONDS = 5e-3


def available_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a Kubernetes
    CPU limit), which ONNX Runtime's default (one thread per physical core of the node) ignores."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


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
        unload_timeout_seconds: float = 30.0,
    ) -> None:
        self.models: dict[str, Model] = {c.name: Model(c) for c in configs}
        self.platform = platform
        self.options = options
        self.executor = executor
        self.loader = loader
        # How long an unloading version waits for the requests that hold it (then it closes anyway).
        self.unload_timeout_seconds = unload_timeout_seconds
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
                raise Unavailable(f"model '{name}' version {version} is {found.state.name}, not AVAILABLE")
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
        # Unload only after the new versions are AVAILABLE, so requests always find one.
        await asyncio.gather(
            *(
                self._unload(version)
                for version in list(model.versions.values())
                if version.version not in wanted and version.state == State.AVAILABLE
            )
        )

    async def _load(self, model: Model, version: int) -> None:
        path = model.config.base_path / str(version)
        entry = ModelVersion(model.config.name, version, path, State.LOADING)
        model.versions[version] = entry
        self.on_change(entry)
        log.info("loading %s version %d from %s", entry.name, version, path)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            backend, costs = await loop.run_in_executor(self.executor, self._load_and_warm, path)
        except Exception as exc:  # any failure to load is reported as the version's status
            log.exception("failed to load %s version %d", entry.name, version)
            entry.state, entry.error = State.END, f"{type(exc).__name__}: {exc}"
        else:
            entry.backend, entry.engine_costs, entry.loaded_at = backend, costs, time.time()
            entry.state = State.AVAILABLE
            log.info(
                "%s version %d AVAILABLE (%s, %.2fs, signatures %s)",
                entry.name,
                version,
                self.platform,
                time.perf_counter() - started,
                sorted(backend.signatures()),
            )
        self.on_change(entry)

    def _load_and_warm(self, path: Path) -> tuple[Backend, dict[str, EngineCost]]:
        """Load and warm up a version (in a worker thread); picks engine threads when on auto."""
        auto_threads = self.options.intra_op_threads == 0
        options = replace(self.options, intra_op_threads=1) if auto_threads else self.options
        backend = self.loader(self.platform, path, options)
        costs = warm_up(backend)
        slowest = max((cost.fixed for cost in costs.values()), default=0.0)
        if auto_threads and slowest > SINGLE_THREAD_MAX_SECONDS:
            log.info(
                "%s: %.2f ms per row on one engine thread: reloading with one per CPU",
                path,
                slowest * 1e3,
            )
            backend.close()
            backend = self.loader(self.platform, path, replace(self.options, intra_op_threads=available_cpus()))
            costs = warm_up(backend)
        return backend, costs

    async def _unload(self, entry: ModelVersion) -> None:
        log.info("unloading %s version %d (%d requests in flight)", entry.name, entry.version, entry.in_flight)
        entry.state = State.UNLOADING
        self.on_change(entry)
        await entry.unload(self.unload_timeout_seconds)
        self.on_change(entry)
        log.info("%s version %d unloaded", entry.name, entry.version)

    async def close(self, timeout: float = 0.0) -> None:
        """Unload every version (the server is stopping: requests have been drained already)."""
        await asyncio.gather(
            *(
                entry.unload(timeout)
                for model in self.models.values()
                for entry in model.versions.values()
                if entry.backend is not None
            )
        )
