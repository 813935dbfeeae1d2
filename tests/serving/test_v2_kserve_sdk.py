"""KServe's own V2 clients (`kserve.InferenceRESTClient`, `kserve.InferenceGRPCClient`) against a real
server process: the same numbers as TF Serving's API.

KServe's SDK imports its whole model server (FastAPI, uvicorn, pandas, the Kubernetes client: ~500 MB),
too much to install on every CI run, so this module runs where a KServe 0.21 venv already exists:
`$KSERVE_VENV`, or `.bench/kserve-venv` (which `make bench PEERS=1` makes). Elsewhere it is skipped,
saying so; `tests/serving/test_v2.py` drives the same endpoints with `tritonclient` on every run.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.clients.tiny_models import write_tiny_sentiment
from tests.serving.fixtures import REPO_ROOT, ServerProcess, start_server, write_config, write_tiny_version

pytestmark = pytest.mark.slow

KSERVE_VENV = Path(os.environ.get("KSERVE_VENV", REPO_ROOT / ".bench" / "kserve-venv"))
SCRIPT = Path(__file__).with_name("v2_kserve_calls.py")


def _kserve_python() -> Path:
    python = KSERVE_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no KServe venv at {KSERVE_VENV} (make bench PEERS=1 makes one, or set KSERVE_VENV)")
    probe = subprocess.run([str(python), "-c", "import kserve"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{python} does not import kserve: {probe.stderr[-300:]}")
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    _kserve_python()  # skip before starting anything
    root = tmp_path_factory.mktemp("kserve-sdk")
    write_tiny_version(root / "models" / "digits", 1)
    write_tiny_sentiment(root / "models" / "sentiment")
    config = write_config(root / "models.config", {m: root / "models" / m for m in ("digits", "sentiment")})
    process = start_server(["--model_config_file", str(config)], root / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def answers(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rng = np.random.default_rng(4)
    inputs = tmp_path_factory.mktemp("kserve-inputs") / "inputs.npz"
    np.savez(
        inputs,
        digits=rng.uniform(0, 255, (2, 28, 28, 1)).astype(np.float32),
        sentiment=np.array([b"great fun", b"dull, awful and bad"], dtype=object),
    )
    # The KServe venv stands on its own: none of this project's environment leaks into it.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(_kserve_python()), str(SCRIPT), server.rest_url, server.grpc_target, str(inputs)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    found["inputs"] = dict(np.load(inputs, allow_pickle=True))
    return found


def _tf_serving(server: ServerProcess, model: str, instances: list[Any]) -> np.ndarray:
    answer = requests.post(f"{server.rest_url}/v1/models/{model}:predict", json={"instances": instances}, timeout=10)
    answer.raise_for_status()
    return np.array(answer.json()["predictions"], dtype=np.float32)


def test_health_over_both_transports(answers: dict[str, Any]) -> None:
    assert answers["rest_ready"] == [True, True, True]
    assert answers["grpc_ready"] == [True, True, True]


def test_infer_equals_tf_serving(answers: dict[str, Any], server: ServerProcess) -> None:
    digits = _tf_serving(server, "digits", answers["inputs"]["digits"].tolist())
    texts = [t.decode() for t in answers["inputs"]["sentiment"]]
    sentiment = _tf_serving(server, "sentiment", texts)
    for transport in ("rest", "grpc"):
        np.testing.assert_allclose(answers[f"{transport}_digits"]["probabilities"], digits, rtol=1e-6)
        np.testing.assert_allclose(answers[f"{transport}_sentiment"]["probabilities"], sentiment, rtol=1e-6)
    assert answers["rest_sentiment_id"] == "k-1"


def test_errors_reach_the_sdk(answers: dict[str, Any]) -> None:
    assert answers["rest_unknown"]["status"] == 404 and "not served" in answers["rest_unknown"]["message"]
    assert answers["grpc_bad_shape"]["status"] == "INVALID_ARGUMENT"
