"""`python -m export convert`: the user's Keras model and SavedModel become served versions.

A tiny Keras classifier (made here, saved as `.keras`) is converted with a labels file and served
by the ONNX server with the same numbers as Keras, `:classify` answering with the labels; a
`tf.Module` SavedModel with an unknown non-batch dimension is converted with -1 in its manifest;
a conversion whose ONNX disagrees with the SavedModel publishes nothing.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx import numpy_helper

import export.pipeline
from export.__main__ import main as export_main
from serving.manifest import read_manifest
from tests.serving.fixtures import ServerProcess, start_server, write_config

pytestmark = pytest.mark.slow  # converts models with tf2onnx and starts a server

LABELS = ("setosa", "versicolor", "virginica")


def tiny_classifier() -> keras.Model:
    keras.utils.set_random_seed(3)
    features = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(features)
    return keras.Model(features, keras.layers.Dense(3, activation="softmax", name="head")(hidden))


class RowSum(tf.Module):
    """tokens float [N, T] (T unknown) -> total float [N] = 2 * sum over T + 1."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="tokens")])
    def __call__(self, tokens: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"total": 2.0 * tf.reduce_sum(tokens, axis=1) + 1.0}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("convert")
    model = tiny_classifier()
    model.save(root / "iris.keras")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    module = RowSum()
    tf.saved_model.save(module, str(root / "rowsum"), signatures=module.__call__.get_concrete_function())
    models = root / "models"
    common = ["--models-dir", str(models)]
    assert (
        export_main(
            [
                "convert",
                "--model-dir",
                str(root / "iris.keras"),
                "--name",
                "iris",
                "--labels",
                str(root / "labels.txt"),
                *common,
            ]
        )
        == 0
    )
    assert export_main(["convert", "--model-dir", str(root / "rowsum"), "--name", "rowsum", *common]) == 0
    return {"root": root, "models": models, "keras": model}


@pytest.fixture(scope="module")
def server(workspace: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = workspace["models"]
    config = write_config(
        workspace["root"] / "models.config", {"iris": models / "iris", "rowsum": models / "rowsum"}
    )
    process = start_server(
        ["--model_config_file", str(config)], tmp_path_factory.mktemp("log") / "server.log"
    )
    yield process
    assert process.stop() == 0, process.log()


def post(server: ServerProcess, path: str, body: Any) -> Any:
    request = urllib.request.Request(server.rest_url + path, data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_keras_model_is_published_with_its_input_spec(workspace: dict[str, Any]) -> None:
    version = workspace["models"] / "iris" / "1"
    manifest = read_manifest(version)  # every sha256 checked
    assert manifest.labels == LABELS and manifest.task == "classification"
    signature = manifest.signatures["serving_default"]
    assert {k: (v.dtype, v.shape) for k, v in signature.inputs.items()} == {"features": ("float32", (-1, 4))}
    assert {k: (v.dtype, v.shape) for k, v in signature.outputs.items()} == {
        "probabilities": ("float32", (-1, 3))
    }
    assert manifest.parity["passed"] is True
    check = manifest.parity["checks"][0]
    assert check["n_examples"] == 32 and check["max_abs_diff"]["probabilities"] <= 1e-4
    assert manifest.metrics["source_format"] == "keras" and manifest.metrics["parity_inputs"] == "generated"
    assert (version / "saved_model.pb").is_file()  # stock TF Serving can serve the version too


def test_saved_model_with_an_unknown_dimension(workspace: dict[str, Any]) -> None:
    manifest = read_manifest(workspace["models"] / "rowsum" / "1")
    signature = manifest.signatures["serving_default"]
    assert signature.inputs["tokens"].shape == (-1, -1) and signature.outputs["total"].shape == (-1,)
    assert manifest.labels == () and manifest.metrics["source_format"] == "saved_model"


def test_converted_versions_are_served_with_parity(workspace: dict[str, Any], server: ServerProcess) -> None:
    features = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
    expected = workspace["keras"].predict(features, verbose=0)
    answer = post(server, "/v1/models/iris:predict", {"instances": features.tolist()})
    np.testing.assert_allclose(answer["predictions"], expected, atol=1e-5)
    classified = post(server, "/v1/models/iris:classify", {"examples": [{"features": features[0].tolist()}]})
    assert [label for label, _ in classified["results"][0]] == list(LABELS)
    np.testing.assert_allclose([score for _, score in classified["results"][0]], expected[0], atol=1e-5)
    tokens = [[1.0, 2.0, 3.0], [0.5, 0.5, 0.0]]  # any length: the dimension is unknown
    answer = post(server, "/v1/models/rowsum:predict", {"instances": tokens})
    np.testing.assert_allclose(answer["predictions"], [13.0, 3.0], rtol=1e-6)


def test_failed_parity_publishes_nothing(
    workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A converter that gets the numbers wrong (simulated: one weight of the ONNX file changed)."""
    real_convert = export.pipeline.convert_to_onnx

    def wrong_convert(function: Any, path: Path, opset: int = 17) -> onnx.ModelProto:
        real_convert(function, path, opset)
        model = onnx.load(path)
        weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(weights).copy()
        values.flat[0] += 1.0
        weights.CopyFrom(numpy_helper.from_array(values, weights.name))
        onnx.save(model, path)
        return model

    monkeypatch.setattr(export.pipeline, "convert_to_onnx", wrong_convert)
    models = workspace["root"] / "models-parity"
    status = export_main(
        [
            "convert",
            "--model-dir",
            str(workspace["root"] / "iris.keras"),
            "--name",
            "iris",
            "--models-dir",
            str(models),
        ]
    )
    assert status == 1
    assert "ONNX Runtime and the SavedModel disagree" in capsys.readouterr().err
    assert list((models / "iris").iterdir()) == []  # no version, no temporary folder left


def test_bad_arguments_are_clear_errors(
    workspace: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = workspace["root"]
    assert (
        export_main(
            [
                "convert",
                "--model-dir",
                str(root / "labels.txt"),
                "--name",
                "x",
                "--models-dir",
                str(root / "m"),
            ]
        )
        == 1
    )
    assert "neither a Keras model file" in capsys.readouterr().err
    (root / "two.txt").write_text("a\nb\n")
    args = [
        "convert",
        "--model-dir",
        str(root / "iris.keras"),
        "--name",
        "x",
        "--labels",
        str(root / "two.txt"),
    ]
    assert export_main([*args, "--models-dir", str(root / "m")]) == 1
    assert "not [..., 2] for the 2 labels given" in capsys.readouterr().err
    args = ["convert", "--model-dir", str(root / "rowsum"), "--name", "x", "--signature", "nope"]
    assert export_main([*args, "--models-dir", str(root / "m")]) == 1
    assert "has no signature nope (it has serving_default)" in capsys.readouterr().err
    assert not (root / "m").exists() or not any((root / "m").rglob("manifest.json"))
