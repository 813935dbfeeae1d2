"""Catdog export: a tiny convnet trained on generated photos goes through the whole pipeline.

SavedModel signatures (pixels and bytes, predict and explain), ONNX files, the Pillow-vs-TensorFlow
decoding check, parity, the manifest the ONNX server reads, the ONNX-only evaluator, and a version
that fails parity never being published.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

tf = pytest.importorskip("tensorflow")
ort = pytest.importorskip("onnxruntime")


def write_photos(root: Path, per_split: dict[str, int]) -> Path:
    """Reddish squares (cats) and bluish squares (dogs), 40x48 JPEGs, in the book's layout."""
    rng = np.random.default_rng(7)
    for split, count in per_split.items():
        for label, (name, folder) in enumerate((("cat", "cats"), ("dog", "dogs"))):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            color = np.array([200, 60, 50] if label == 0 else [50, 70, 200], dtype=np.float32)
            for index in range(count):
                pixels = np.clip(color + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / folder / f"{name}.{index}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training import catdog

    base = tmp_path_factory.mktemp("catdog")
    root = write_photos(base / "cvd", {"train": 24, "validation": 8, "test": 8})
    config = catdog.TrainConfig(
        approaches=("scratch",),
        base=catdog.BASES["mobilenet"],
        weights=None,
        data_dir=base,
        dataset_dir=root,
        out=base / "run",
        scratch_image_size=32,
        epochs_scale=0.2,
        verbose=0,
    )
    catdog.train(config)
    return {"root": root, "run": base / "run", "base": base}


@pytest.fixture(scope="module")
def published(trained: dict[str, Path]) -> Any:
    from export.catdog import build_spec
    from export.pipeline import publish

    spec = build_spec(
        trained["run"], trained["base"], approach="scratch", dataset_dir=trained["root"], parity_photos=8
    )
    return publish(spec, trained["base"] / "models")


def test_manifest_describes_pixels_bytes_and_explain(published: Any) -> None:
    from serving.manifest import TensorSpec, read_manifest

    manifest = read_manifest(published.path)  # sha256 of every file verified
    assert published.version == 1 and manifest.labels == ("cat", "dog")
    assert set(manifest.signatures) == {
        "serving_default",
        "predict_image_bytes",
        "explain",
        "explain_image_bytes",
        "activations",
        "activations_image_bytes",
    }
    serving = manifest.signatures["serving_default"]
    assert serving.inputs == {"image": TensorSpec("float32", (-1, 32, 32, 3))}
    assert serving.outputs["probabilities"] == TensorSpec("float32", (-1, 2)) and serving.preprocess is None
    as_bytes = manifest.signatures["predict_image_bytes"]
    assert as_bytes.inputs == {"image_bytes": TensorSpec("string", (-1,))}
    assert as_bytes.onnx.file == "model.onnx" and dict(as_bytes.onnx.inputs) == {"image": "image"}
    assert as_bytes.preprocess is not None and as_bytes.preprocess.kind == "image_bytes"
    assert dict(as_bytes.preprocess.params) == {
        "height": 32,
        "width": 32,
        "channels": 3,
        "resize": "bilinear",
    }
    explain = manifest.signatures["explain"]
    assert explain.onnx.file == "explain.onnx" and explain.inputs == {
        "image": TensorSpec("float32", (-1, 32, 32, 3))
    }
    assert explain.preprocess is not None and explain.preprocess.input == "image_bytes"
    assert explain.outputs["heatmap"] == TensorSpec("float32", (-1, 2, 2))  # conv5 of a 32-px input
    for name in ("model.onnx", "explain.onnx", "activations.onnx", "saved_model.pb"):
        assert name in manifest.files
    activations = manifest.signatures["activations"]  # 8 of the scratch convnet's 9 layers, first to last
    assert set(activations.outputs) == {"conv1", "pool1", "conv2", "pool2", "pool3", "conv4", "pool4", "conv5"}
    assert activations.outputs["conv1"] == TensorSpec("float32", (-1, 32, 32, 16))
    assert activations.outputs["conv5"] == TensorSpec("float32", (-1, 2, 2, 128))
    assert activations.preprocess is not None and activations.preprocess.input == "image_bytes"
    parity = manifest.parity
    assert parity["passed"] and parity["image_decoding"]["max_abs_pixel_diff"] <= 1e-3
    assert {check["signature"] for check in parity["checks"]} == set(manifest.signatures)
    assert manifest.metrics["approach"] == "scratch" and "scratch" in manifest.metrics["approaches"]


def test_server_path_matches_saved_model_on_any_photo(published: Any) -> None:
    """Pillow decoding + explain.onnx (what the ONNX server runs) vs the SavedModel's bytes signature."""
    from serving.images import decode_images

    rng = np.random.default_rng(3)
    blobs = []
    for size, fmt in (((90, 60), "PNG"), ((17, 23), "JPEG"), ((32, 32), "PNG")):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, format=fmt)
        blobs.append(buffer.getvalue())
    saved = tf.saved_model.load(str(published.path)).signatures["explain_image_bytes"]
    expected = saved(image_bytes=tf.constant(blobs))
    session = ort.InferenceSession(str(published.path / "explain.onnx"), providers=["CPUExecutionProvider"])
    probabilities, heatmap = session.run(
        ["probabilities", "heatmap"], {"image": decode_images(blobs, 32, 32, 3)}
    )
    np.testing.assert_allclose(probabilities, expected["probabilities"].numpy(), atol=1e-4)
    np.testing.assert_allclose(heatmap, expected["heatmap"].numpy(), atol=1e-3)
    assert heatmap.shape == (3, 2, 2) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_onnx_only_evaluation(published: Any, trained: dict[str, Path]) -> None:
    from export.catdog import evaluate
    from serving.manifest import read_manifest

    result = evaluate(
        published.path, read_manifest(published.path), trained["base"], dataset_dir=trained["root"]
    )
    assert result.n_examples == 16 and result.target == 0.9
    assert result.accuracy >= 0.9  # reddish vs bluish squares: the tiny convnet must separate them


def test_failed_parity_publishes_nothing(trained: dict[str, Path]) -> None:
    from export.catdog import build_spec
    from export.pipeline import ParityError, publish

    spec = build_spec(
        trained["run"], trained["base"], approach="scratch", dataset_dir=trained["root"], parity_photos=2
    )
    impossible = replace(spec.parity[0], atol={"probabilities": -1.0})  # no model can pass this
    models = trained["base"] / "failing-models"
    with pytest.raises(ParityError):
        publish(replace(spec, parity=(impossible,)), models)
    assert list((models / "catdog").iterdir()) == []


def test_missing_run_names_the_training_command(tmp_path: Path) -> None:
    from export.catdog import build_spec
    from training.common import MissingDataError

    with pytest.raises(MissingDataError, match="python -m training catdog"):
        build_spec(tmp_path / "run", tmp_path)


def test_overlay_png_from_the_published_explain_onnx(
    published: Any, trained: dict[str, Path], tmp_path: Path
) -> None:
    from export.catdog import overlay_image, write_overlay

    photo = trained["root"] / "test" / "cats" / "cat.0.jpg"
    result = write_overlay(published.path, photo, tmp_path / "overlay.png")
    assert result["label"] in ("cat", "dog") and result["heatmap_shape"] == [2, 2]
    with Image.open(tmp_path / "overlay.png") as sheet:
        assert sheet.size == (48 * 2 + 4, 40)  # photo and overlay side by side
    assert (tmp_path / "overlay.png").stat().st_size < 150_000
    # Where the heatmap is hot the overlay turns red (jet's top end), where it is cold, blue.
    gray = np.full((40, 48, 3), 128, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    blended = np.asarray(overlay_image(buffer.getvalue(), np.array([[1.0, 0.0], [0.0, 0.0]])), np.int32)
    assert blended[0, 0, 0] > blended[0, 0, 2] and blended[-1, -1, 2] > blended[-1, -1, 0]


def test_served_from_jpeg_bytes_with_explain_and_bad_images(
    published: Any, trained: dict[str, Path], tmp_path: Path
) -> None:
    """The real server decodes image bytes itself (Pillow), explains, and refuses bad images."""
    import tensorflow as tf

    from clients import ClientError, GrpcClient, RestClient
    from tests.serving.fixtures import start_server
    from tests.serving.test_images import png_header_only

    photos = sorted((trained["root"] / "test").rglob("*.jpg"))[:3]
    encoded = np.array([p.read_bytes() for p in photos], dtype=object)
    saved = tf.saved_model.load(str(published.path)).signatures
    expected = saved["predict_image_bytes"](image_bytes=tf.constant(list(encoded)))["probabilities"].numpy()
    expected_heatmap = saved["explain_image_bytes"](image_bytes=tf.constant(list(encoded)))["heatmap"].numpy()
    server = start_server(
        ["--model_name", "catdog", "--model_base_path", str(published.path.parent)], tmp_path / "s.log"
    )
    try:
        with GrpcClient(server.grpc_target) as grpc_client, RestClient(server.rest_url) as rest_client:
            for client in (grpc_client, rest_client):
                answer = client.predict("catdog", {"image_bytes": encoded}, signature="predict_image_bytes")
                np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-4)
                explained = client.predict("catdog", {"image_bytes": encoded}, signature="explain")
                np.testing.assert_allclose(explained["heatmap"], expected_heatmap, atol=1e-3)
                assert explained["heatmap"].min() >= 0 and explained["heatmap"].max() <= 1
            bad_images = {
                "truncated JPEG": encoded[0][: len(encoded[0]) // 2],
                "text": b"this is not an image",
                "0 bytes": b"",
                "20000x20000 header": png_header_only(20000, 20000),
            }
            for case, data in bad_images.items():
                with pytest.raises(ClientError) as info:
                    grpc_client.predict(
                        "catdog",
                        {"image_bytes": np.array([data], dtype=object)},
                        signature="predict_image_bytes",
                    )
                assert info.value.code == "INVALID_ARGUMENT", case
            answer = grpc_client.predict(
                "catdog", {"image_bytes": encoded[:1]}, signature="predict_image_bytes"
            )
            assert answer["probabilities"].shape == (1, 2)  # still serving
    finally:
        assert server.stop() == 0, server.log()
