"""The ONNX backend's engine calls, in-process on a tiny exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from serving.backends import BackendOptions, load_backend
from serving.backends.onnx_backend import session_runner
from serving.errors import InvalidArgument
from tests.serving.fixtures import write_tiny_version


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_version(tmp_path_factory.mktemp("tiny"), 1, seed=4)


def test_a_cpu_session_runs_through_its_engine_with_the_wrappers_answers(version_dir: Path) -> None:
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    run = session_runner(session)
    assert getattr(run, "__self__", None) is not session  # the engine's own run, not the wrapper's
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)}
    names = [output.name for output in session.get_outputs()]
    for ours, theirs in zip(run(names, feed), session.run(names, feed), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_sessions_it_cannot_vouch_for_run_through_the_wrapper() -> None:
    class Wrapped:  # another provider (or an onnxruntime without `_sess`): the public run
        def __init__(self, providers: list[str], engine: Any) -> None:
            self._providers, self._sess = providers, engine

        def get_providers(self) -> list[str]:
            return self._providers

        def run(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
            return ["wrapper"]

    class Engine:
        def run(self, names: list[str], feed: dict[str, Any], options: Any) -> list[Any]:
            return ["engine"]

    assert session_runner(Wrapped(["CPUExecutionProvider"], Engine()))([], {}) == ["engine"]
    assert session_runner(Wrapped(["CUDAExecutionProvider", "CPUExecutionProvider"], Engine()))([], {}) == ["wrapper"]
    assert session_runner(Wrapped(["CPUExecutionProvider"], None))([], {}) == ["wrapper"]


def test_an_input_the_graph_refuses_is_invalid_argument(version_dir: Path) -> None:
    backend = load_backend("onnx", version_dir, BackendOptions(intra_op_threads=1))
    answer = backend.run("serving_default", {"image": np.zeros((2, 28, 28, 1), np.float32)})
    assert answer["probabilities"].shape == (2, 10)
    with pytest.raises(InvalidArgument, match="cannot run on this input"):  # (validation skipped here)
        backend.run("serving_default", {"image": np.zeros((2, 3, 3, 1), np.float32)})
