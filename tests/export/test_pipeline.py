"""Export pipeline: published layout, manifest hashes, ONNX names and parity, failures, versions, evaluate."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf

from export import evaluate
from export.__main__ import main as export_main
from export.pipeline import (
    ExportSpec,
    ParityCheck,
    ParityError,
    Signature,
    existing_versions,
    next_version,
    publish,
)
from serving.manifest import ManifestError, read_manifest
from training.digits import build_model

pytestmark = pytest.mark.slow  # trains and exports tiny models


def test_published_version_layout_and_manifest(digits_model_dir: Path) -> None:
    assert existing_versions(digits_model_dir) == [1]
    assert not list(digits_model_dir.glob(".tmp-*"))
    version = digits_model_dir / "1"
    for name in ("saved_model.pb", "model.onnx", "explain.onnx", "manifest.json"):
        assert (version / name).is_file(), name
    manifest = read_manifest(version)  # verifies every sha256
    assert manifest.name == "digits" and manifest.version == 1
    assert manifest.labels == tuple(str(d) for d in range(10))
    assert any(path.startswith("variables/") for path in manifest.files)
    assert set(manifest.files) >= {"saved_model.pb", "model.onnx", "explain.onnx"}
    serving = manifest.signatures["serving_default"]
    assert serving.inputs["image"].shape == (-1, 28, 28, 1) and serving.inputs["image"].dtype == "float32"
    assert serving.outputs["probabilities"].shape == (-1, 10)
    assert serving.onnx.file == "model.onnx" and serving.onnx.inputs == {"image": "image"}
    explain = manifest.signatures["explain"]
    assert explain.outputs["heatmap"].shape == (-1, 3, 3) and explain.onnx.file == "explain.onnx"
    assert manifest.parity["passed"] is True
    assert all(
        check["max_abs_diff"]["probabilities"] <= 1e-5
        for check in manifest.parity["checks"]
        if check["signature"] != "activations"  # feature maps only, checked in test_activations_served
    )
    assert manifest.parity["gradcam_vs_gradient_tape"]["heatmap_max_abs_diff"] <= 1e-4
    assert manifest.metrics["recipe"] == "book" and "test_accuracy" in manifest.metrics
    assert manifest.producer["opset"] <= 18


def test_tampered_file_fails_verification(digits_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "1"
    shutil.copytree(digits_model_dir / "1", copy)
    variables = next((copy / "variables").glob("variables.data-*"))
    variables.write_bytes(variables.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ManifestError, match="sha256"):
        read_manifest(copy)


def test_onnx_files_have_signature_names_and_dynamic_batch(digits_model_dir: Path) -> None:
    for file, outputs in (("model.onnx", {"probabilities"}), ("explain.onnx", {"probabilities", "heatmap"})):
        graph = onnx.load(str(digits_model_dir / "1" / file)).graph
        assert [i.name for i in graph.input] == ["image"]
        assert {o.name for o in graph.output} == outputs
        batch = graph.input[0].type.tensor_type.shape.dim[0]
        assert not batch.HasField("dim_value")


def test_onnx_and_saved_model_agree_on_real_digits(
    digits_model_dir: Path, digits_test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits_test_images
    assert images.dtype == np.uint8 and images.shape == (16, 28, 28, 1) and labels.shape == (16,)
    version = digits_model_dir / "1"
    pixels = images.astype(np.float32)
    session = ort.InferenceSession(str(version / "explain.onnx"), providers=["CPUExecutionProvider"])
    probabilities, heatmap = session.run(["probabilities", "heatmap"], {"image": pixels})
    loaded = tf.saved_model.load(str(version))
    served = loaded.signatures["explain"](image=tf.constant(pixels))
    np.testing.assert_allclose(probabilities, served["probabilities"].numpy(), atol=1e-5)
    np.testing.assert_allclose(heatmap, served["heatmap"].numpy(), atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert heatmap.shape == (16, 3, 3) and heatmap.min() >= 0 and heatmap.max() <= 1
    default = loaded.signatures["serving_default"](image=tf.constant(pixels))["probabilities"].numpy()
    np.testing.assert_allclose(default, probabilities, atol=1e-5)
    assert np.mean(default.argmax(axis=1) == labels) > 0.3  # a real (if tiny) model, not noise


def test_next_version_ignores_non_integer_folders(tmp_path: Path) -> None:
    assert next_version(tmp_path / "absent") == 1
    for name in ("1", "3", "notes", ".tmp-4", "0"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert existing_versions(tmp_path) == [1, 3]
    assert next_version(tmp_path) == 4


def tiny_spec(onnx_scale: float, parity_images: np.ndarray) -> ExportSpec:
    """A random-weights digits model; the ONNX file converts `onnx_scale * probabilities`."""
    keras.utils.set_random_seed(0)
    model = build_model()
    spec = (tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def serving_default(image: tf.Tensor) -> dict[str, Any]:
        return {"probabilities": model(image, training=False)}

    @tf.function(input_signature=spec)
    def exported(image: tf.Tensor) -> dict[str, Any]:
        return {"probabilities": model(image, training=False) * onnx_scale}

    return ExportSpec(
        name="digits",
        task="image_classification",
        labels=tuple(str(d) for d in range(10)),
        trackable=model,
        signatures=(Signature("serving_default", serving_default, "model.onnx", onnx_function=exported),),
        parity=(ParityCheck("serving_default", {"image": parity_images}, {"probabilities": 1e-5}, (1, 8)),),
    )


def test_parity_failure_publishes_nothing_and_success_takes_the_next_version(
    tmp_path: Path, digits_test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images = digits_test_images[0].astype(np.float32)
    model_dir = tmp_path / "digits"
    (model_dir / "2").mkdir(parents=True)
    with pytest.raises(ParityError, match="disagree"):
        publish(tiny_spec(onnx_scale=1.001, parity_images=images), tmp_path)
    assert sorted(p.name for p in model_dir.iterdir()) == ["2"]  # no version 3, no .tmp-3 left

    published = publish(tiny_spec(onnx_scale=1.0, parity_images=images), tmp_path)
    assert published.version == 3 and published.path == model_dir / "3"
    manifest = read_manifest(published.path)
    (check,) = manifest.parity["checks"]
    assert check["batch_sizes"] == [1, 8] and check["n_examples"] == 16 and check["passed"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["2", "3"]


def test_export_cli_reports_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = export_main(
        ["digits", "--run", str(tmp_path / "no-run"), "--models-dir", str(tmp_path / "models")]
    )
    assert code == 1
    assert "python -m training digits" in capsys.readouterr().err
    assert not (tmp_path / "models" / "digits" / "1").exists()


def test_evaluate_scores_the_newest_loadable_version(
    digits_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(digits_model_dir, models / "digits")
    (models / "digits" / "9").mkdir()  # newer but without a manifest: skipped
    version_dir, manifest = evaluate.newest_version(models / "digits")
    assert version_dir.name == "1" and manifest.version == 1
    # A one-epoch model is far below 98.5%: the command must say so and fail.
    assert evaluate.main(["--models-dir", str(models), "digits"]) == 1
    out = capsys.readouterr().out
    assert "digits v1: accuracy" in out and "on 10000 test examples" in out and "BELOW TARGET" in out
    assert evaluate.main(["--models-dir", str(tmp_path / "empty")]) == 2


def test_evaluation_verdict() -> None:
    good = evaluate.Evaluation("digits", 1, accuracy=0.99, target=0.985, n_examples=10, seconds=0.1)
    assert good.passed and "OK" in good.line()
    assert not evaluate.Evaluation("digits", 1, 0.98, 0.985, 10, 0.1).passed
