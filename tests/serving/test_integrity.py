"""Model integrity at load: a broken version never becomes AVAILABLE and never replaces a working one.

Real tiny ONNX models (tests/serving/fixtures.py) broken in each way a version folder can be: corrupt
or truncated files, a manifest whose sha256s do not match, a missing, unparsable or malformed
manifest, files the manifest does not list, names that leave the folder, an ONNX file ONNX Runtime
rejects. In-process against the real repository and engine first (milliseconds), then over a real
server process, where progress is read from the server's status API, never from sleeps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import codec
from serving.backends import Backend, BackendOptions, load_backend
from serving.config import ModelConfig, VersionPolicy
from serving.errors import NotFound, Unavailable
from serving.manifest import MANIFEST_FILE, ManifestError, read_manifest, sha256_file
from serving.proto import apis_pb2, apis_pb2_grpc
from serving.protocol.messages import status_response
from serving.repository import Repository, State, check_version_files
from tests.serving.fixtures import (
    ServerProcess,
    reference_probabilities,
    start_server,
    write_config,
    write_tiny_version,
)

IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1)).astype(np.float32)
FAILED = "failed to load"


# ---- ways to break a version folder --------------------------------------------------------------


def _edit_manifest(version_dir: Path, edit: Callable[[dict], None]) -> None:
    path = version_dir / MANIFEST_FILE
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def _corrupt(version_dir: Path) -> None:
    model = version_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _truncate(version_dir: Path) -> None:
    model = version_dir / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def _wrong_sha256(version_dir: Path) -> None:
    _edit_manifest(version_dir, lambda raw: raw["files"].update({"model.onnx": "0" * 64}))


def _invalid_json(version_dir: Path) -> None:
    (version_dir / MANIFEST_FILE).write_text('{"schema_version": 1, "name": ')


def _not_an_object(version_dir: Path) -> None:
    (version_dir / MANIFEST_FILE).write_text("[1, 2, 3]")


def _malformed(version_dir: Path) -> None:
    _edit_manifest(version_dir, lambda raw: raw.update(signatures=[]))


def _listed_file_missing(version_dir: Path) -> None:
    (version_dir / "model.onnx").unlink()


def _unlisted_file(version_dir: Path) -> None:
    (version_dir / "model.onnx.data").write_bytes(b"\0" * 64)  # e.g. an external-data file nobody checked


def _name_outside_the_folder(version_dir: Path) -> None:
    outside = version_dir.parent / "outside.onnx"
    shutil.copy(version_dir / "model.onnx", outside)
    _edit_manifest(version_dir, lambda raw: raw["files"].update({"../outside.onnx": sha256_file(outside)}))


def _engine_reads_an_unlisted_file(version_dir: Path) -> None:
    outside = version_dir.parent / "outside.onnx"
    shutil.copy(version_dir / "model.onnx", outside)
    _edit_manifest(
        version_dir, lambda raw: raw["signatures"]["serving_default"]["onnx"].update(file="../outside.onnx")
    )


def _onnx_rejected(version_dir: Path) -> None:
    """Not an ONNX graph, with a manifest that lists its (correct) sha256: only the engine can tell."""
    model = version_dir / "model.onnx"
    model.write_bytes(b"this is not an ONNX protobuf")
    _edit_manifest(version_dir, lambda raw: raw["files"].update({"model.onnx": sha256_file(model)}))


# name -> (break it, words of the error, whether the engine may see the files: only for the
# failures the manifest cannot reveal)
BREAKAGES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "corrupt file": (_corrupt, "does not match the manifest", False),
    "truncated file": (_truncate, "does not match the manifest", False),
    "wrong sha256": (_wrong_sha256, "does not match the manifest", False),
    "invalid JSON": (_invalid_json, "is not valid JSON", False),
    "not an object": (_not_an_object, "is not a JSON object", False),
    "malformed manifest": (_malformed, "malformed manifest", False),
    "listed file missing": (_listed_file_missing, "listed in the manifest but missing", False),
    "unlisted file": (_unlisted_file, "model.onnx.data not listed in the manifest", False),
    "name outside the folder": (_name_outside_the_folder, "is not a path inside the folder", False),
    "engine reads an unlisted file": (_engine_reads_an_unlisted_file, "files do not list", True),
    "onnx rejected": (_onnx_rejected, "ONNX Runtime cannot load it", True),
}


def _publish(base: Path, version: int, breakage: Callable[[Path], None] | None = None) -> Path:
    """Build a version beside the model, break it if asked, and rename it into place (as export does)."""
    staging = base.parent / ".staging" / base.name
    shutil.rmtree(staging, ignore_errors=True)
    built = write_tiny_version(staging, version, seed=version)
    if breakage is not None:
        breakage(built)
    base.mkdir(parents=True, exist_ok=True)
    return built.rename(base / str(version))


def _republish(base: Path, version: int) -> Path:
    """Replace a version folder with a good build of it (the fix a user publishes)."""
    shutil.rmtree(base / str(version))
    return _publish(base, version)


# ---- in process: the real repository and engine --------------------------------------------------


class CountingLoader:
    """The real loader, counting which folders reached the engine."""

    def __init__(self) -> None:
        self.loaded: list[Path] = []

    def __call__(self, platform: str, path: Path, options: BackendOptions) -> Backend:
        self.loaded.append(path)
        return load_backend(platform, path, options)

    def count(self, path: Path) -> int:
        return self.loaded.count(path)


def _repository(models: dict[str, Path], **config: object) -> tuple[Repository, CountingLoader]:
    loader = CountingLoader()
    configs = [ModelConfig(name, base, **config) for name, base in models.items()]  # type: ignore[arg-type]
    return Repository(configs, "onnx", BackendOptions(), loader=loader), loader


def _predict(repository: Repository, name: str) -> tuple[int, np.ndarray]:
    version = repository.resolve(name)
    assert version.backend is not None
    return version.version, version.backend.run("serving_default", {"image": IMAGES})["probabilities"]


def _failures(caplog: pytest.LogCaptureFixture, name: str, version: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"{FAILED} {name} version {version}:")]


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
async def test_broken_new_version_never_replaces_the_serving_one(
    breakage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.repository")
    base = tmp_path / "models" / "tiny"
    good = _publish(base, 1)
    repository, loader = _repository({"tiny": base})  # latest 1: TF Serving's default policy
    await repository.sync()
    assert repository.resolve("tiny").version == 1
    breaks, words, engine_sees_it = BREAKAGES[breakage]
    broken = _publish(base, 2, breaks)
    for _ in range(3):  # three polls: one attempt, then nothing until the files change
        await repository.sync()
    versions = repository.models["tiny"].versions
    assert versions[1].state == State.AVAILABLE, "the working version was unloaded"
    version, probabilities = _predict(repository, "tiny")
    assert version == 1
    np.testing.assert_allclose(probabilities, reference_probabilities(good, IMAGES), atol=1e-5)
    assert versions[2].state == State.END and words in versions[2].error, versions[2].error
    assert loader.count(broken) == (1 if engine_sees_it else 0), "checked before any engine opened it"
    (record,) = _failures(caplog, "tiny", 2)  # logged once, with the cause
    assert record.levelno == logging.ERROR and words in record.getMessage()
    assert record.exc_info is None, "a broken file is not a bug: no traceback"
    # GetModelStatus / REST status: END with the error, as TF Serving reports a failed load.
    statuses = {s.version: s for s in status_response(repository.statuses("tiny")).model_version_status}
    assert statuses[1].state == apis_pb2.ModelVersionStatus.AVAILABLE and statuses[1].status.error_code == 0
    assert statuses[2].state == apis_pb2.ModelVersionStatus.END
    assert statuses[2].status.error_code == 2 and words in statuses[2].status.error_message
    with pytest.raises(NotFound, match="Servable not found"):  # asked for by number
        repository.resolve("tiny", 2)

    # The fix is published: the changed files are tried again, and only then does 2 replace 1.
    fixed = _republish(base, 2)
    await repository.sync()
    assert versions[2].state == State.AVAILABLE and not versions[2].error
    assert versions[1].state == State.END and not versions[1].error  # unloaded, not failed
    version, probabilities = _predict(repository, "tiny")
    assert version == 2
    np.testing.assert_allclose(probabilities, reference_probabilities(fixed, IMAGES), atol=1e-5)
    assert len(_failures(caplog, "tiny", 2)) == 1
    assert any("again: its files changed" in r.getMessage() for r in caplog.records)
    await repository.close()


async def test_a_failed_version_is_retried_only_when_its_files_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "models" / "tiny"
    _publish(base, 1)
    broken = _publish(base, 2, _onnx_rejected)
    repository, loader = _repository({"tiny": base})
    for _ in range(5):
        await repository.sync()
    assert loader.count(broken) == 1 and len(_failures(caplog, "tiny", 2)) == 1
    # Same content, new mtime (a copy that rewrote the file): a change, so one more attempt.
    stat = (broken / "model.onnx").stat()
    os.utime(broken / "model.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    for _ in range(3):
        await repository.sync()
    assert loader.count(broken) == 2 and len(_failures(caplog, "tiny", 2)) == 2
    assert repository.resolve("tiny").version == 1
    await repository.close()


async def test_at_start_the_newest_loadable_version_serves(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny"
    good = _publish(base, 1)
    _publish(base, 2, _corrupt)
    _publish(base, 3, _truncate)
    repository, _ = _repository({"tiny": base})
    await repository.sync()  # one sync: 3 fails, then 2, then 1 loads
    states = {v: e.state for v, e in repository.models["tiny"].versions.items()}
    assert states == {1: State.AVAILABLE, 2: State.END, 3: State.END}
    version, probabilities = _predict(repository, "tiny")
    assert version == 1
    np.testing.assert_allclose(probabilities, reference_probabilities(good, IMAGES), atol=1e-5)
    await repository.close()


async def test_a_pinned_broken_version_is_not_replaced_by_another(tmp_path: Path) -> None:
    base = tmp_path / "models" / "tiny"
    _publish(base, 1)
    _publish(base, 2, _corrupt)
    repository, _ = _repository({"tiny": base}, version_policy=VersionPolicy(kind="specific", versions=(2,)))
    await repository.sync()
    assert set(repository.models["tiny"].versions) == {2}  # the policy asked for 2 only
    with pytest.raises(Unavailable, match="no loadable version"):
        repository.resolve("tiny")
    await repository.close()


async def test_a_folder_without_its_manifest_is_an_export_in_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "models" / "tiny"
    _publish(base, 1)
    partial = _publish(base, 2)
    # A copy of an export (they hold model.onnx and the SavedModel) that has not reached the
    # manifest yet. (A folder with model.onnx alone is the user's bare model: served as it is.)
    (partial / "saved_model.pb").write_bytes(b"\x08\x01")
    manifest_json = json.loads((partial / MANIFEST_FILE).read_bytes())
    manifest_json["files"]["saved_model.pb"] = sha256_file(partial / "saved_model.pb")
    manifest = json.dumps(manifest_json).encode()
    (partial / MANIFEST_FILE).unlink()
    repository, loader = _repository({"tiny": base})
    for _ in range(3):
        await repository.sync()
    assert set(repository.models["tiny"].versions) == {1} and repository.resolve("tiny").version == 1
    assert loader.count(partial) == 0
    waiting = [r for r in caplog.records if "has no manifest.json" in r.getMessage()]
    assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING
    (partial / MANIFEST_FILE).write_bytes(manifest)  # the copy completes
    await repository.sync()
    assert repository.resolve("tiny").version == 2
    await repository.close()


async def test_a_model_that_fails_to_load_does_not_stop_the_others(tmp_path: Path) -> None:
    broken_base, good_base = tmp_path / "models" / "broken", tmp_path / "models" / "tiny"
    _publish(broken_base, 1, _onnx_rejected)
    good = _publish(good_base, 1)
    repository, _ = _repository({"broken": broken_base, "tiny": good_base, "absent": tmp_path / "nowhere"})
    await repository.sync()
    version, probabilities = _predict(repository, "tiny")
    assert version == 1
    np.testing.assert_allclose(probabilities, reference_probabilities(good, IMAGES), atol=1e-5)
    (status,) = status_response(repository.statuses("broken")).model_version_status
    assert status.state == apis_pb2.ModelVersionStatus.END and "ONNX Runtime" in status.status.error_message
    for name in ("broken", "absent"):
        with pytest.raises(Unavailable, match="no loadable version"):
            repository.resolve(name)
    assert not repository.all_available()  # readiness waits for every model (see serving.server)
    await repository.close()


async def test_an_unlistable_model_folder_keeps_its_loaded_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll that cannot list the folder (an NFS outage, a folder moved away) changes nothing,
    as in TF Serving; the error is logged once, and the recovery too."""
    caplog.set_level(logging.INFO, logger="serving.repository")
    base = tmp_path / "models" / "tiny"
    _publish(base, 1)
    repository, _ = _repository({"tiny": base})
    await repository.sync()
    moved = base.rename(tmp_path / "models" / "moved")
    for _ in range(3):
        await repository.sync()
    assert repository.resolve("tiny").version == 1
    errors = [r for r in caplog.records if "cannot list the versions of tiny" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is None
    moved.rename(base)
    await repository.sync()
    assert any("can be listed again" in r.getMessage() for r in caplog.records)
    assert repository.resolve("tiny").version == 1
    await repository.close()


def test_savedmodel_folders_are_checked_when_they_have_a_manifest(tmp_path: Path) -> None:
    """The TensorFlow backend serves stock SavedModel folders (no manifest: nothing to check), but a
    manifest beside a SavedModel is held to, as for ONNX (the check runs before either engine)."""
    stock = tmp_path / "stock"
    stock.mkdir()
    (stock / "saved_model.pb").write_bytes(b"\x08\x01")
    check_version_files(stock, "tensorflow")
    with pytest.raises(ManifestError, match="does not exist"):
        check_version_files(stock, "onnx")
    exported = write_tiny_version(tmp_path / "exported", 1)
    check_version_files(exported, "tensorflow")
    (exported / "saved_model.pb").write_bytes(b"\x08\x01")  # not in the manifest
    with pytest.raises(ManifestError, match=r"saved_model\.pb not listed"):
        check_version_files(exported, "tensorflow")


@pytest.mark.slow
def test_the_sha256_check_costs_little_next_to_the_load(tmp_path: Path) -> None:
    """The check reads every byte once (about catdog's size here: a 22 MB graph); it stays on."""
    version_dir = write_tiny_version(tmp_path / "big", 1, slow=True)
    size = sum(f.stat().st_size for f in version_dir.iterdir())
    started = time.perf_counter()
    read_manifest(version_dir, verify_files=True)
    check_seconds = time.perf_counter() - started
    started = time.perf_counter()
    load_backend("onnx", version_dir, BackendOptions(intra_op_threads=1)).close()
    load_seconds = time.perf_counter() - started
    megabytes = size / 2**20
    print(f"\n{megabytes:.1f} MB: sha256 {check_seconds * 1e3:.0f} ms, load {load_seconds * 1e3:.0f} ms")
    assert check_seconds < max(load_seconds, 0.5)


# ---- over a real server process --------------------------------------------------------------------


def _statuses(channel: grpc.Channel, name: str) -> dict[int, apis_pb2.ModelVersionStatus]:
    request = apis_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    response = apis_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {status.version: status for status in response.model_version_status}


def _states(channel: grpc.Channel, name: str) -> dict[int, int]:
    return {version: status.state for version, status in _statuses(channel, name).items()}


def _wait_for_states(channel: grpc.Channel, name: str, wanted: dict[int, int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (states := _states(channel, name)) != wanted:
        assert time.monotonic() < deadline, f"{name}: {states}, waiting for {wanted}"
        time.sleep(0.02)


def _predict_over_grpc(channel: grpc.Channel) -> tuple[int, np.ndarray]:
    request = apis_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["image"].CopyFrom(codec.from_numpy(IMAGES))
    response = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return response.model_spec.version.value, codec.to_numpy(response.outputs["probabilities"])


def _health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


AVAILABLE, END = apis_pb2.ModelVersionStatus.AVAILABLE, apis_pb2.ModelVersionStatus.END


@pytest.mark.slow
def test_server_keeps_serving_the_old_version_while_the_new_one_is_broken(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    models = tmp_path / "models"
    tiny, pulse = models / "tiny", models / "pulse"  # pulse: a second model whose new versions mark polls
    good = _publish(tiny, 1)
    _publish(pulse, 1)
    config = write_config(tmp_path / "models.config", {"tiny": tiny, "pulse": pulse})
    server = start_server(
        ["--model_config_file", str(config), "--file_system_poll_wait_seconds", "0.05"],
        tmp_path / "server.log",
    )
    servers.append(server)
    with grpc.insecure_channel(server.grpc_target) as channel:
        _publish(tiny, 2, _corrupt)
        _wait_for_states(channel, "tiny", {1: AVAILABLE, 2: END})
        # Two more complete polls of every model: each pulse version is found by a poll that began
        # after it was published, so after tiny/2 had failed.
        for version in (2, 3):
            _publish(pulse, version)
            _wait_for_states(channel, "pulse", {**{v: END for v in range(1, version)}, version: AVAILABLE})
        assert _states(channel, "tiny") == {1: AVAILABLE, 2: END}
        failed = _statuses(channel, "tiny")[2].status
        assert failed.error_code == 2 and "does not match the manifest" in failed.error_message
        version, probabilities = _predict_over_grpc(channel)
        assert version == 1
        np.testing.assert_allclose(probabilities, reference_probabilities(good, IMAGES), atol=1e-5)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        rest = requests.get(f"{server.rest_url}/v1/models/tiny", timeout=10).json()
        rest_states = {s["version"]: (s["state"], s["status"]) for s in rest["model_version_status"]}
        assert rest_states["1"] == ("AVAILABLE", {"error_code": "OK", "error_message": ""})
        assert rest_states["2"][0] == "END" and rest_states["2"][1]["error_code"] == "UNKNOWN"
        assert server.log().count(f"{FAILED} tiny version 2:") == 1, server.log()

        fixed = _republish(tiny, 2)
        _wait_for_states(channel, "tiny", {1: END, 2: AVAILABLE})
        version, probabilities = _predict_over_grpc(channel)
        assert version == 2
        np.testing.assert_allclose(probabilities, reference_probabilities(fixed, IMAGES), atol=1e-5)
    assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.slow
def test_server_serves_the_other_models_when_one_fails_to_load(
    tmp_path: Path, servers: list[ServerProcess]
) -> None:
    models = tmp_path / "models"
    good = _publish(models / "tiny", 1)
    _publish(models / "broken", 1, _onnx_rejected)
    config = write_config(tmp_path / "models.config", {"broken": models / "broken", "tiny": models / "tiny"})
    server = start_server(["--model_config_file", str(config)], tmp_path / "server.log", wait_serving=False)
    servers.append(server)
    with grpc.insecure_channel(server.grpc_target) as channel:
        _wait_for_states(channel, "tiny", {1: AVAILABLE})
        _wait_for_states(channel, "broken", {1: END})
        version, probabilities = _predict_over_grpc(channel)
        assert version == 1
        np.testing.assert_allclose(probabilities, reference_probabilities(good, IMAGES), atol=1e-5)
        assert "ONNX Runtime cannot load it" in _statuses(channel, "broken")[1].status.error_message
        # Readiness asks for every configured model, so the pod stays out of the endpoints; the
        # process is alive (liveness), and the models that loaded answer whoever calls them.
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(channel, "liveness") == health_pb2.HealthCheckResponse.SERVING
    assert server.stop() == 0
