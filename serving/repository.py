"""The model repository: which versions of which models are loaded, and their states.

Follows TF Serving's lifecycle: each version found under `base_path` and selected by the version
policy goes START -> LOADING -> AVAILABLE (after a warm-up call per signature), and UNLOADING -> END
when a newer version replaces it; a version that fails to load ends in END with its error. A poller
picks up newly published versions (export writes a version folder atomically) without a restart.

Broken versions. Before any engine opens a file, the folder is checked against its manifest
(`check_version_files`: every file listed with its sha256, nothing unlisted; for the TensorFlow
backend a SavedModel without a manifest is taken as it is). A version whose check or load fails
ends in END with the cause as its error (GetModelStatus reports it), and it never replaces a
working one:
- the version policy picks among the loadable versions, so with `latest 1` a broken version 2 keeps
  version 1 serving (and at start-up, version 1 is loaded instead): the newest *loadable* version
  serves. Older versions are unloaded only once the versions that replace them are AVAILABLE.
- the failure is logged once, with its cause. A failed version is not tried again on every poll:
  it is retried when its files change (the name, size, mtime and inode of every file under its
  folder, one `stat` each per poll, no reading), e.g. when a copy finishes or the version is
  re-published; each version is tried at most once per poll.
- a folder with nothing servable (no `manifest.json`, no bare `model.onnx` or SavedModel; under
  `--backend onnx` a `model.onnx` beside a `saved_model.pb` waits for its manifest) is
  an export still being written: it is not loaded, and not reported, until the file appears (a
  warning says so once).
Models are independent: one model's broken versions or unreadable folder never stop another's.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from serving.backends import (
    ONNX_FILE,
    Backend,
    BackendOptions,
    Signature,
    describe_runtime,
    load_backend,
    version_platform,
)
from serving.batching import Batcher
from serving.config import ModelConfig
from serving.errors import NotFound, Unavailable
from serving.manifest import MANIFEST_FILE, VersionFilesError, read_manifest
from serving.warmup import DEFAULT_WARMUP, WarmupSettings, find_dummy, replay

log = logging.getLogger(__name__)


# (relative path, size, mtime_ns, inode) of each file of a version folder: see `fingerprint`.
Fingerprint = tuple[tuple[str, int, int, int], ...]


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
    # The folder's files when the load was tried: a failed version is retried once they change.
    fingerprint: Fingerprint = ()
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
    incomplete: set[int] = field(default_factory=set)  # version folders without their marker file
    sync_error: str = ""  # the last error of a whole-model sync (logged once)
    # Readiness counts a model added at run time (`Repository.apply_config`) only once it has had
    # an AVAILABLE version: loading it does not make a serving server unready, nor does a failure.
    added_at_run_time: bool = False
    ever_available: bool = False


@dataclass(frozen=True)
class ConfigChange:
    """What `Repository.apply_config` did: model names added, removed, changed (policy, labels or
    base path), and the added models that have no AVAILABLE version, with why."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    not_available: Mapping[str, str] = field(default_factory=dict)
    # Done once the versions of removed models (and the old versions of a changed base path) are
    # unloaded: they wait for the requests that hold them first.
    retired: asyncio.Task[None] | None = None


def marker_file(platform: str) -> str:
    """The file a version folder that `version_complete` calls incomplete lacks, for the warning:
    an export's manifest (ONNX), the SavedModel (TensorFlow)."""
    return MANIFEST_FILE if platform == "onnx" else "saved_model.pb"


def version_complete(version_dir: Path, platform: str) -> bool:
    """Whether the folder holds something an engine can serve: an export's manifest, a bare
    `model.onnx` or a bare SavedModel (`serving.backends.version_platform` picks the engine)."""
    return version_platform(version_dir, platform) is not None


MAX_VERSION = 2**63 - 1  # versions are int64, as in TF Serving


def version_number(folder_name: str) -> int | None:
    """The version a folder name stands for, or None when it names none.

    As TF Serving: the whole name is ASCII digits, leading zeros allowed (`00000123` is version
    123, the folder name TF Serving's own test models use), and the number is a positive int64.
    (`str.isdigit` alone would also take "²" or full-width digits.)"""
    if not (folder_name.isascii() and folder_name.isdigit()):
        return None
    number = int(folder_name)
    return number if 0 < number <= MAX_VERSION else None


def version_folders(base_path: Path) -> dict[int, Path]:
    """Version number -> its folder under `base_path`; OSError when it cannot be listed.

    When two names mean one number (`123` and `0123`), the one without leading zeros wins, else
    the first in sorted order: the choice does not depend on the order the OS lists them in."""
    names: dict[int, list[str]] = {}
    for child in base_path.iterdir():
        number = version_number(child.name)
        if number is not None and child.is_dir():
            names.setdefault(number, []).append(child.name)
    folders = {}
    for number, candidates in names.items():
        chosen = str(number) if str(number) in candidates else min(candidates)
        folders[number] = base_path / chosen
    return folders


def version_folder(base_path: Path, version: int) -> Path:
    """The folder of `version` by its real name (`.../00000123` for version 123); `base_path /
    str(version)` when no folder names it or the base path cannot be listed."""
    try:
        return version_folders(base_path).get(version, base_path / str(version))
    except OSError:
        return base_path / str(version)


def scan_versions(base_path: Path, platform: str) -> tuple[list[int], list[int]]:
    """(complete, incomplete) version numbers under `base_path` (folders named by `version_number`,
    leading zeros allowed); OSError when it cannot be listed (missing, not a folder, unreadable)."""
    complete: list[int] = []
    incomplete: list[int] = []
    for number, folder in version_folders(base_path).items():
        (complete if version_complete(folder, platform) else incomplete).append(number)
    return sorted(complete), sorted(incomplete)


def discover_versions(base_path: Path, platform: str) -> list[int]:
    """Version numbers whose folders (leading zeros allowed) hold a complete export for the backend
    in use ([] when the folder cannot be listed)."""
    try:
        return scan_versions(base_path, platform)[0]
    except OSError:
        return []


def fingerprint(version_dir: Path) -> Fingerprint:
    """(path, size, mtime, inode) of every file under the folder: changes when any file is written,
    replaced, added or removed. One `stat` per file; a file that vanishes meanwhile is left out."""
    entries = []
    for root, _dirs, names in os.walk(version_dir):
        for name in names:
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            rel = path.relative_to(version_dir).as_posix()
            entries.append((rel, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(sorted(entries))


def check_version_files(version_dir: Path, platform: str) -> None:
    """Raise VersionFilesError unless the folder matches its manifest (see `serving.manifest`).

    A folder without a manifest (the user's bare `model.onnx`, a stock TF Serving SavedModel) has
    nothing to be checked against and is loaded as it is; without one, ONNX needs `model.onnx`.
    """
    bare_onnx = platform == "onnx" and (version_dir / ONNX_FILE).is_file()
    if (version_dir / MANIFEST_FILE).exists() or (platform == "onnx" and not bare_onnx):
        read_manifest(version_dir, verify_files=True)


def warm_up(
    backend: Backend,
    repeats: int = 3,
    version_dir: Path | None = None,
    settings: WarmupSettings = DEFAULT_WARMUP,
) -> dict[str, EngineCost]:
    """Warm a version up before it serves, so its first requests are not slow; returns what one
    engine call of each signature costs.

    With warm-up off (--enable_model_warmup=false) nothing runs and no cost is known (every call of
    the version then runs off the event loop). Otherwise, first the version's warm-up file, as TF
    Serving replays it (`serving.warmup.replay`: a bad file raises WarmupError, and the version fails
    to load); then every signature, on dummy inputs `serving.warmup.find_dummy` finds (zeros, a
    sentence for text, a tiny PNG for image bytes; a signature none fits is skipped with the reason
    logged), in batches of 1 and 8 rows. Costs are measured where every non-batch size is known.
    """
    costs: dict[str, EngineCost] = {}
    if not settings.enabled:
        return costs
    if version_dir is not None:
        replay(backend, version_dir, settings)
    for name, signature in backend.signatures().items():
        dummy = find_dummy(backend, name, signature)
        if dummy is None or not dummy.fixed:
            continue
        seconds = {}
        for rows in (1, 8):
            prepared = backend.prepare(name, dummy.inputs(signature, rows))
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

    # How versions warm up (`warm_up`): set by the server from its flags.
    warmup: WarmupSettings = DEFAULT_WARMUP

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
        self._retiring: set[asyncio.Task[None]] = set()  # unloads of versions no longer configured

    # -- lookup ----------------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        if not name:
            raise NotFound("model_spec.name is required")
        try:
            return self.models[name]
        except KeyError:
            served = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"Servable not found for request: model '{name}' is not served (served: {served})") from None

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
        newest: ModelVersion | None = None
        available = State.AVAILABLE
        for candidate in model.versions.values():
            if candidate.state == available and (newest is None or candidate.version > newest.version):
                newest = candidate
        if newest is None:
            if any(v.state in (State.START, State.LOADING) for v in model.versions.values()):
                raise Unavailable(f"model '{name}' is still loading")
            raise Unavailable(f"model '{name}' has no loadable version: {self.why_not_available(model)}")
        return newest

    def unavailable_labels(self) -> list[str]:
        """The configured version labels naming a version that is not AVAILABLE, as TF Serving's
        refusal of them (ServerCore::UpdateModelVersionLabelMap); see `serving.server.start`, which
        checks them after the first load unless `--allow_version_labels_for_unavailable_models`
        (config reloads apply the same rule in `serving.reload`)."""
        errors = []
        for model in self.models.values():
            for label, version in sorted(model.config.version_labels.items()):
                entry = model.versions.get(version)
                if entry is None or entry.state != State.AVAILABLE:
                    errors.append(
                        f"Request to assign label to version {version} of model {model.config.name}, "
                        f"which is not currently available for inference (label '{label}')"
                    )
        return errors

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
        if not model.versions:
            # TF Serving's answer for a model none of whose versions it knows, with the reason.
            raise NotFound(f"Could not find any versions of model {name}: {self.why_not_available(model)}")
        return sorted(model.versions.values(), key=lambda v: v.version)

    def all_available(self) -> bool:
        """True once every model has at least one AVAILABLE version (readiness); a model added at
        run time counts once it has had one (see `Model.added_at_run_time`)."""
        return all(
            any(v.state == State.AVAILABLE for v in m.versions.values())
            for m in self.models.values()
            if not m.added_at_run_time or m.ever_available
        )

    def _note_available(self, models: Iterable[Model]) -> None:
        for model in models:
            if any(v.state == State.AVAILABLE for v in model.versions.values()):
                model.ever_available = True

    # -- loading ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Bring every model in line with its folder and version policy (load new, unload old)."""
        async with self._lock:
            await asyncio.gather(*(self._sync_model_logged(model) for model in self.models.values()))
            self._note_available(self.models.values())

    async def apply_config(self, configs: Sequence[ModelConfig]) -> ConfigChange:
        """Serve exactly `configs` from now on (a config reload); returns what changed.

        - Added models load their versions (per their policy) before this returns; those left
          with no AVAILABLE version are named in `not_available` (they stay configured and are
          retried like any failed version, when their files change).
        - Removed models leave the lookup at once (new requests: NOT_FOUND); requests that already
          hold one of their versions, batch queues included, finish first; then each version
          unloads (`unload`, bounded by `unload_timeout_seconds`), in the background: `retired`.
        - Changed models (version policy, labels) are synced to their new config; a new base_path
          is loaded as a fresh entry, swapped in once it has been tried, and the old versions
          retire as removed ones do. Unchanged models are synced too (as TF Serving re-polls).
        """
        async with self._lock:
            wanted = {config.name: config for config in configs}
            current = self.models
            change_added = tuple(name for name in wanted if name not in current)
            change_removed = tuple(name for name in current if name not in wanted)
            change_changed = tuple(
                name for name, config in wanted.items() if name in current and current[name].config != config
            )
            retiring = [entry for name in change_removed for entry in current.pop(name).versions.values()]
            moved: dict[str, Model] = {}
            for name in change_changed:
                model, config = current[name], wanted[name]
                if config.base_path != model.config.base_path:
                    moved[name] = Model(
                        config, added_at_run_time=model.added_at_run_time, ever_available=model.ever_available
                    )
                else:
                    model.config = config
            for name in change_added:
                current[name] = Model(wanted[name], added_at_run_time=True)
            if change_added or change_removed or change_changed:
                log.info(
                    "model config: adding %s, removing %s, changing %s",
                    list(change_added) or "none",
                    list(change_removed) or "none",
                    list(change_changed) or "none",
                )
            syncing = [moved.get(name, model) for name, model in current.items()]
            await asyncio.gather(*(self._sync_model_logged(model) for model in syncing))
            notify: list[ModelVersion] = []
            for name, model in moved.items():
                old = list(current[name].versions.values())
                retiring.extend(old)
                notify.extend(entry for entry in old if entry.version not in model.versions)
                current[name] = model
            self._note_available(current.values())
            not_available = {
                name: self.why_not_available(current[name])
                for name in change_added
                if not current[name].ever_available
            }
            retired = self._retire([entry for entry in retiring if entry.state == State.AVAILABLE], notify)
        return ConfigChange(change_added, change_removed, change_changed, not_available, retired)

    @staticmethod
    def why_not_available(model: Model) -> str:
        """Why `model` has no AVAILABLE version, in words a person can act on."""
        failed = sorted((v for v in model.versions.values() if v.error), key=lambda v: v.version)
        if failed:
            return "; ".join(f"version {v.version}: {v.error}" for v in failed)
        if model.sync_error:
            return model.sync_error
        base = model.config.base_path
        if model.incomplete:
            return f"version folder(s) {sorted(model.incomplete)} under {base} are not complete yet"
        if any((base / name).exists() for name in (ONNX_FILE, MANIFEST_FILE, "saved_model.pb")):
            return f"{base} holds model files itself: put them in a version folder, e.g. {base / '1'}"
        return f"no version folder under {base} (versions are folders named by positive integers, e.g. {base / '1'})"

    def _retire(self, entries: Sequence[ModelVersion], notify: Sequence[ModelVersion]) -> asyncio.Task[None]:
        """Unload versions that left the config once the requests holding them end, in the
        background (`close` waits for it). Only those in `notify` are reported through `on_change`:
        the others belong to removed models, whose series are dropped instead."""
        for entry in entries:
            entry.state = State.UNLOADING  # at once: nothing resolves to it any more
            log.info("unloading %s version %d (%d requests in flight)", entry.name, entry.version, entry.in_flight)
            if entry in notify:
                self.on_change(entry)

        async def unload(entry: ModelVersion) -> None:
            await entry.unload(self.unload_timeout_seconds)
            if entry in notify:
                self.on_change(entry)
            log.info("%s version %d unloaded", entry.name, entry.version)

        async def unload_all() -> None:
            await asyncio.gather(*(unload(entry) for entry in entries))

        task = asyncio.create_task(unload_all())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _sync_model_logged(self, model: Model) -> None:
        """One model's sync. If it fails (its base path is missing or unreadable...), the versions
        it has loaded keep serving, as in TF Serving (a failed poll changes nothing), the other
        models are not affected, and the error is logged once."""
        config = model.config
        try:
            await self._sync_model(model)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != model.sync_error:
                log.error(
                    "cannot list the versions of %s: %s (loaded versions keep serving; looking again at "
                    "every poll)",
                    config.name,
                    error,
                    exc_info=None if isinstance(exc, OSError) else exc,
                )
            model.sync_error = error
        else:
            if model.sync_error:
                log.info("the versions of %s can be listed again in %s", config.name, config.base_path)
            model.sync_error = ""

    async def _sync_model(self, model: Model) -> None:
        config = model.config
        on_disk, incomplete = scan_versions(config.base_path, self.platform)
        self._note_incomplete(model, incomplete)
        # The policy picks among the versions that can load: not those that failed with the files
        # they still have (one whose files changed since is tried again), nor those failing now.
        failed = {v for v in on_disk if self._failed_unchanged(model.versions.get(v))}
        tried: set[int] = set()
        while True:
            loadable = [v for v in on_disk if v not in failed]
            wanted = set(config.version_policy.select(loadable))
            # Labels must point at served versions: keep labelled versions that exist on disk.
            wanted |= {v for v in config.version_labels.values() if v in loadable}
            loads = [
                v
                for v in sorted(wanted - tried)
                if v not in model.versions or model.versions[v].state == State.END
            ]
            if not loads:
                break
            tried.update(loads)
            await asyncio.gather(*(self._load(model, v) for v in loads))
            # A version that failed leaves the choice: go round again, so that the policy picks
            # the next loadable one (each version is tried at most once per sync).
            failed |= {v for v in loads if model.versions[v].state != State.AVAILABLE}
        # Unload only after the new versions are AVAILABLE, so requests always find one.
        await asyncio.gather(
            *(
                self._unload(version)
                for version in list(model.versions.values())
                if version.version not in wanted and version.state == State.AVAILABLE
            )
        )

    def _failed_unchanged(self, entry: ModelVersion | None) -> bool:
        """Whether `entry` failed to load and its folder still holds the files it failed with."""
        if entry is None or entry.state != State.END or not entry.error:
            return False
        return fingerprint(entry.path) == entry.fingerprint

    def _note_incomplete(self, model: Model, incomplete: list[int]) -> None:
        for version in sorted(set(incomplete) - model.incomplete):
            log.warning(
                "%s: folder %s has no %s (an export still being written?): not loaded until it has",
                model.config.name,
                version_folder(model.config.base_path, version),
                marker_file(self.platform),
            )
        model.incomplete = set(incomplete)

    async def _load(self, model: Model, version: int) -> None:
        path = version_folder(model.config.base_path, version)  # by its real name: `00000123`
        previous = model.versions.get(version)
        entry = ModelVersion(model.config.name, version, path, State.LOADING, fingerprint=fingerprint(path))
        model.versions[version] = entry
        self.on_change(entry)
        if previous is not None and previous.error:
            log.info("loading %s version %d from %s again: its files changed", entry.name, version, path)
        else:
            log.info("loading %s version %d from %s", entry.name, version, path)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            backend, costs = await loop.run_in_executor(self.executor, self._load_and_warm, path)
        except Exception as exc:  # any failure to load is reported as the version's status
            entry.state, entry.error = State.END, f"{type(exc).__name__}: {exc}"
            # Files at fault (the message says which and why): one line. Anything else may be a bug
            # here: with its traceback. Either way once, until the files change.
            log.error(
                "failed to load %s version %d: %s (not retried until its files change)",
                entry.name,
                version,
                entry.error,
                exc_info=None if isinstance(exc, VersionFilesError) else exc,
            )
        else:
            entry.backend, entry.engine_costs, entry.loaded_at = backend, costs, time.time()
            entry.state = State.AVAILABLE
            log.info(
                "%s version %d AVAILABLE (%s, %.2fs, signatures %s)",
                entry.name,
                version,
                backend.platform,  # per version: see `serving.backends.version_platform`
                time.perf_counter() - started,
                sorted(backend.signatures()),
            )
        self.on_change(entry)

    def _load_and_warm(self, path: Path) -> tuple[Backend, dict[str, EngineCost]]:
        """Load and warm up a version (in a worker thread); picks engine threads when on auto."""
        started = time.perf_counter()
        # Per version: a bare SavedModel goes to TensorFlow, a bare model.onnx to ONNX Runtime.
        platform = version_platform(path, self.platform) or self.platform
        if platform != self.platform:
            log.info("%s: served by the %s backend (its files; --backend is %s)", path, platform, self.platform)
        check_version_files(path, platform)
        log.debug("%s: files checked against the manifest in %.3fs", path, time.perf_counter() - started)
        auto_threads = self.options.intra_op_threads == 0
        options = replace(self.options, intra_op_threads=1) if auto_threads else self.options
        backend = self.loader(platform, path, options)
        costs = warm_up(backend, version_dir=path, settings=self.warmup)
        slowest = max((cost.fixed for cost in costs.values()), default=0.0)
        if auto_threads and slowest > SINGLE_THREAD_MAX_SECONDS:
            log.info(
                "%s: %.2f ms per row on one engine thread: reloading with one per CPU",
                path,
                slowest * 1e3,
            )
            backend.close()
            backend = self.loader(platform, path, replace(self.options, intra_op_threads=available_cpus()))
            costs = warm_up(backend, version_dir=path, settings=self.warmup)
        log.info("%s: %s", path, describe_runtime(backend))
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
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(
            *(
                entry.unload(timeout)
                for model in self.models.values()
                for entry in model.versions.values()
                if entry.backend is not None
            )
        )
