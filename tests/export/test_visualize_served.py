"""`ml-visualize heatmap` (Grad-CAM by GradientTape on the Keras model) draws what the server's
`explain` signature answers for the same digit: the offline and served heatmaps agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.grpc_client import GrpcClient
from tests.serving.fixtures import start_server

pytestmark = pytest.mark.slow


def test_offline_heatmap_equals_the_served_one(
    digits_run_dir: Path,
    digits_model_dir: Path,
    digits_test_images: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    import keras

    from training.digits import LAST_CONV_LAYER
    from training.visualize import gradcam_layer, heatmap, load_input

    images, _ = digits_test_images
    path = tmp_path / "digit.png"
    Image.fromarray(images[3][..., 0]).save(path)
    model = keras.models.load_model(digits_run_dir / "best.keras", compile=False)
    assert gradcam_layer("digits", model, digits_run_dir / "best.keras", digits_run_dir) == LAST_CONV_LAYER
    image = load_input(path, model)  # [1,28,28,1], as ml-client prepares it
    probabilities, offline = heatmap(model, LAST_CONV_LAYER, image)

    server = start_server(["--model_name", "digits", "--model_base_path", str(digits_model_dir)], tmp_path / "server.log")
    try:
        with GrpcClient(server.grpc_target, timeout=30) as client:
            served = client.predict("digits", {"image": image}, signature="explain")
    finally:
        server.stop()
    np.testing.assert_allclose(served["heatmap"][0], offline, atol=1e-4)
    np.testing.assert_allclose(served["probabilities"][0], probabilities, atol=1e-5)
