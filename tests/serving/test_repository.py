"""The repository in-process: resolution, version policy, leases and unloading, warm-up costs.

A fake engine stands in for ONNX Runtime, so these run in milliseconds; the same behaviour over a
real server process is in test_lifecycle.py and test_server_grpc.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from serving.backends import BackendOptions, Signature, TensorMeta
from serving.config import ModelConfig, VersionPolicy
from serving.errors import NotFound, Unavailable
from serving.manifest import Manifest, write_manifest
from serving.repository import (
    EngineCost,
    Repository,
    State,
    scan_versions,
    version_folder,
    version_folders,
    version_number,
    warm_up,
)

SIGNATURE = Signature(
    "serving_default",
    "tensorflow/serving/predict",
    {"x": TensorMeta(np.dtype(np.float32), (-1, 3))},
    {"y": TensorMeta(np.dtype(np.float32), (-1, 3))},
)


class FakeBackend:
    platform = "fake"
    labels: tuple[str, ...] = ()

    def __init__(self, path: Path, options: BackendOptions) -> None:
        self.path, self.options = path, options
        self.closed = False
        self.calls = 0

    def signatures(self) -> Mapping[str, Signature]:
        return {"serving_default": SIGNATURE}

    def prepare(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def run(
        self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        assert not self.closed, "ran on a closed engine"
        self.calls += 1
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        self.closed = True


def _publish(base: Path, *versions: int) -> None:
    """Version folders holding only a manifest (valid, listing no files): the fake engine reads none."""
    for version in versions:
        (base / str(version)).mkdir(parents=True, exist_ok=True)
        write_manifest(base / str(version), Manifest("m", version, "test", (), {}))


def _repository(base: Path, **config: object) -> Repository:
    loaded: list[FakeBackend] = []

    def loader(platform: str, path: Path, options: BackendOptions) -> FakeBackend:
        backend = FakeBackend(path, options)
        loaded.append(backend)
        return backend

    repository = Repository(
        [ModelConfig("m", base, **config)],  # type: ignore[arg-type]
        "onnx",
        BackendOptions(),
        loader=loader,  # type: ignore[arg-type]
        unload_timeout_seconds=5,
    )
    repository.loaded = loaded  # type: ignore[attr-defined]
    return repository


async def test_resolve_picks_newest_explicit_or_labelled_version(tmp_path: Path) -> None:
    _publish(tmp_path, 1, 2, 3)
    repository = _repository(
        tmp_path, version_policy=VersionPolicy(kind="all"), version_labels={"stable": 1, "gone": 9}
    )
    await repository.sync()
    assert repository.resolve("m").version == 3
    assert repository.resolve("m", 2).version == 2
    assert repository.resolve("m", label="stable").version == 1
    with pytest.raises(NotFound, match="version 7"):
        repository.resolve("m", 7)
    with pytest.raises(NotFound, match="no version label 'canary'"):
        repository.resolve("m", label="canary")
    with pytest.raises(NotFound, match="version 9"):  # a label naming a version that is not on disk
        repository.resolve("m", label="gone")
    with pytest.raises(NotFound, match="'nope' is not served"):
        repository.resolve("nope")
    with pytest.raises(NotFound, match="required"):
        repository.resolve("")


@pytest.mark.parametrize(
    ("policy", "loaded"),
    [
        (VersionPolicy(), [4]),
        (VersionPolicy(kind="latest", num_versions=2), [3, 4]),
        (VersionPolicy(kind="all"), [1, 3, 4]),
        (VersionPolicy(kind="specific", versions=(1, 3, 8)), [1, 3]),
    ],
)
async def test_version_policy_selects_versions(tmp_path: Path, policy: VersionPolicy, loaded: list[int]) -> None:
    _publish(tmp_path, 1, 3, 4)
    (tmp_path / "5").mkdir()  # no manifest: not a complete export, ignored
    (tmp_path / "tmp-6").mkdir()
    repository = _repository(tmp_path, version_policy=policy)
    await repository.sync()
    available = sorted(v.version for v in repository.models["m"].versions.values() if v.state == State.AVAILABLE)
    assert available == loaded


async def test_labelled_version_outside_the_policy_stays_loaded(tmp_path: Path) -> None:
    _publish(tmp_path, 1, 2)
    repository = _repository(tmp_path, version_labels={"stable": 1})
    await repository.sync()
    assert repository.resolve("m", label="stable").version == 1
    assert repository.resolve("m").version == 2


async def test_unload_waits_for_the_requests_that_hold_the_version(tmp_path: Path) -> None:
    _publish(tmp_path, 1)
    repository = _repository(tmp_path)
    await repository.sync()
    old = repository.resolve("m")
    old.acquire()  # a request that resolved version 1 and is still running
    _publish(tmp_path, 2)
    sync = asyncio.create_task(repository.sync())
    async def unloading() -> None:  # version 2 loads in a worker thread first
        while old.state != State.UNLOADING:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(unloading(), 30)  # the unload cannot finish while the lease is held
    assert repository.resolve("m").version == 2  # new requests go to the new version...
    with pytest.raises(Unavailable, match="UNLOADING"):
        repository.resolve("m", 1)
    assert old.backend is not None and not old.backend.closed  # type: ignore[attr-defined]
    assert old.backend.run("serving_default", {"x": np.ones((1, 3), np.float32)})  # ...the old one still runs
    old.release()
    await sync
    assert old.state == State.END and old.backend is None
    assert repository.loaded[0].closed  # type: ignore[attr-defined]
    assert not old.batchers and not old.engine_costs


async def test_unload_gives_up_waiting_after_its_timeout(tmp_path: Path) -> None:
    _publish(tmp_path, 1)
    repository = _repository(tmp_path)
    repository.unload_timeout_seconds = 0.05
    await repository.sync()
    stuck = repository.resolve("m")
    stuck.acquire()
    _publish(tmp_path, 2)
    await repository.sync()
    assert stuck.state == State.END


async def test_warm_up_measures_engine_costs_and_auto_threads(tmp_path: Path) -> None:
    _publish(tmp_path, 1)
    repository = _repository(tmp_path)
    await repository.sync()
    version = repository.resolve("m")
    cost = version.engine_costs["serving_default"]
    assert 0 < cost.fixed < 0.01 and cost.per_row >= 0
    # Auto engine threads: a fast model keeps one thread and is not reloaded.
    assert [b.options.intra_op_threads for b in repository.loaded] == [1]  # type: ignore[attr-defined]
    backend = FakeBackend(tmp_path, BackendOptions())
    assert set(warm_up(backend)) == {"serving_default"}
    assert backend.calls == 2 * 4  # batches of 1 and 8 rows: one untimed call and three timed each


def test_engine_cost_is_linear_in_rows() -> None:
    cost = EngineCost(fixed=100e-6, per_row=10e-6)
    assert cost.seconds(1) == pytest.approx(100e-6)
    assert cost.seconds(11) == pytest.approx(200e-6)


def test_available_cpus_honours_a_cgroup_quota(tmp_path: Path) -> None:
    import os

    from serving.repository import available_cpus

    cpus = len(os.sched_getaffinity(0))
    (tmp_path / "limited").write_text("150000 100000\n")  # a Kubernetes limit of 1.5 CPUs
    (tmp_path / "unlimited").write_text("max 100000\n")
    assert available_cpus(tmp_path / "limited") == min(cpus, 2)
    assert available_cpus(tmp_path / "unlimited") == cpus
    assert available_cpus(tmp_path / "absent") == cpus


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("123", 123),
        ("00000123", 123),  # TF Serving's own test models live in `00000123`
        ("0", None),
        ("000", None),
        ("-1", None),
        ("1.5", None),
        ("v1", None),
        ("²", None),  # str.isdigit() says yes
        ("\uff11\uff12", None),  # full-width digits
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), None),  # beyond int64
    ],
)
def test_version_numbers_of_folder_names(name: str, number: int | None) -> None:
    assert version_number(name) == number


def test_version_folders_keep_their_real_names(tmp_path: Path) -> None:
    for name in ("00000123", "7", "007", "0008", "tmp-9", "0"):
        (tmp_path / name).mkdir()
    (tmp_path / "11").write_text("a file, not a version")
    assert version_folders(tmp_path) == {
        123: tmp_path / "00000123",
        7: tmp_path / "7",  # the name without leading zeros wins over `007`
        8: tmp_path / "0008",
    }
    assert version_folder(tmp_path, 123) == tmp_path / "00000123"
    assert version_folder(tmp_path, 5) == tmp_path / "5"  # none on disk: the plain name
    assert version_folder(tmp_path / "missing", 5) == tmp_path / "missing" / "5"


async def test_a_leading_zero_version_folder_loads_from_its_own_path(tmp_path: Path) -> None:
    (tmp_path / "00000123").mkdir()
    write_manifest(tmp_path / "00000123", Manifest("m", 123, "test", (), {}))
    (tmp_path / "0000124").mkdir()  # not complete yet: no manifest
    assert scan_versions(tmp_path, "onnx") == ([123], [124])
    repository = _repository(tmp_path)
    await repository.sync()
    version = repository.resolve("m")
    assert (version.version, version.path) == (123, tmp_path / "00000123")
    assert [backend.path for backend in repository.loaded] == [tmp_path / "00000123"]  # type: ignore[attr-defined]
