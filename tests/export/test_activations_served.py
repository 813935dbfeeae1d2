"""The served `activations` signature equals the Keras model's intermediate outputs (tiny digits model).

The version of `digits_model_dir` (the real export pipeline) is served by a real server; what it
answers for a digit is compared with `training.visualize.activations` on the Keras model, and
`ml-client activations` draws the same grid `ml-visualize activations` tiles. A version whose
activations graph disagrees with the SavedModel is not published.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.grpc_client import GrpcClient
from export.activations import ACTIVATIONS_RTOL
from tests.serving.fixtures import start_server

pytestmark = pytest.mark.slow

BOOK_LAYERS = {
    "conv1": (26, 26, 32),
    "pool1": (13, 13, 32),
    "conv2": (11, 11, 64),
    "pool2": (5, 5, 64),
    "conv3": (3, 3, 64),
}


def test_served_activations_equal_the_keras_model(
    digits_run_dir: Path,
    digits_model_dir: Path,
    digits_test_images: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    import keras

    from clients.__main__ import main as client_main
    from clients.grids import activation_grid
    from serving.manifest import read_manifest
    from training.visualize import activations, feature_layers, load_input

    manifest = read_manifest(digits_model_dir / "1")
    signature = manifest.signatures["activations"]
    assert signature.onnx.file == "activations.onnx" and "activations.onnx" in manifest.files
    assert {name: spec.shape[1:] for name, spec in signature.outputs.items()} == BOOK_LAYERS
    check = next(c for c in manifest.parity["checks"] if c["signature"] == "activations")
    assert check["passed"] and set(check["max_abs_diff"]) == set(BOOK_LAYERS)

    model = keras.models.load_model(digits_run_dir / "best.keras", compile=False)
    assert feature_layers(model) == list(BOOK_LAYERS)
    images, _ = digits_test_images
    path = tmp_path / "digit.png"
    Image.fromarray(images[5][..., 0]).save(path)
    image = load_input(path, model)  # [1,28,28,1], as ml-client prepares it
    expected = activations(model, np.concatenate([image, images[:3].astype(np.float32)]), list(BOOK_LAYERS))

    server = start_server(
        ["--model_name", "digits", "--model_base_path", str(digits_model_dir)], tmp_path / "server.log"
    )
    try:
        with GrpcClient(server.grpc_target, timeout=30) as client:
            batch = np.concatenate([image, images[:3].astype(np.float32)])  # [4,28,28,1]
            served = client.predict("digits", {"image": batch}, signature="activations")
            only = client.predict(
                "digits", {"image": image}, signature="activations", output_filter=["conv2"]
            )
        out, raw = tmp_path / "conv2.png", tmp_path / "conv2.npy"
        argv = [
            "--rest",
            "--url",
            server.rest_url,
            "activations",
            "--model",
            "digits",
            str(path),
            "--layer",
            "conv2",
        ]
        assert client_main([*argv, "-o", str(out), "--raw", str(raw)]) == 0
    finally:
        server.stop()
    assert set(served) == set(BOOK_LAYERS) and set(only) == {"conv2"}
    for name, value in expected.items():
        tolerance = ACTIVATIONS_RTOL * max(1.0, float(np.abs(value).max()))  # as the export checks
        np.testing.assert_allclose(served[name], value, atol=tolerance, err_msg=name)
    np.testing.assert_allclose(
        np.load(raw), expected["conv2"][0], atol=ACTIVATIONS_RTOL * max(1.0, float(expected["conv2"].max()))
    )
    # The client's grid and ml-visualize's tiles: same pixels (but for rounding at a level boundary).
    offline = activation_grid(expected["conv2"][0]).astype(int)
    assert np.abs(activation_grid(np.load(raw)).astype(int) - offline).max() <= 1
    with Image.open(out) as png:
        assert png.size[1] > offline.shape[0] and png.size[0] >= offline.shape[1]


def test_a_version_whose_activations_disagree_is_not_published(digits_run_dir: Path, tmp_path: Path) -> None:
    """The parity gate: an activations graph 1% off the SavedModel stops the export, nothing published."""
    import tensorflow as tf

    from export.digits import build_spec
    from export.pipeline import ParityError, publish
    from tests.conftest import TINY_PARITY_DIGITS
    from training.common import resolve_data_dir

    spec = build_spec(digits_run_dir, resolve_data_dir(), parity_examples=TINY_PARITY_DIGITS)
    honest = next(s for s in spec.signatures if s.name == "activations")

    @tf.function(input_signature=honest.function.input_signature)
    def off_by_one_percent(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {name: value * 1.01 + 0.01 for name, value in honest.function(image).items()}

    broken = replace(
        spec,
        signatures=(replace(honest, onnx_function=off_by_one_percent),),
        parity=tuple(c for c in spec.parity if c.signature == "activations"),
        extra_checks=(),
    )
    models = tmp_path / "models"
    with pytest.raises(ParityError, match="activations"):
        publish(broken, models)
    assert [p.name for p in (models / "digits").iterdir()] == []
