"""Export writes TF Serving's warm-up file into every version it publishes (assets.extra/), which
our reader, TensorFlow's own TFRecord reader and this server's replay all accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving import codec
from serving.backends import BackendOptions, load_backend
from serving.manifest import read_manifest
from serving.proto import prediction_log_pb2
from serving.warmup import WARMUP_FILE, read_records, replay

pytestmark = pytest.mark.slow  # uses the tiny digits model the export fixtures train


def test_published_digits_carries_real_warmup_requests(digits_model_dir: Path) -> None:
    import tensorflow as tf

    version = digits_model_dir / "1"
    path = version / WARMUP_FILE
    assert WARMUP_FILE.as_posix() in read_manifest(version).files  # listed, with its sha256
    records = [prediction_log_pb2.PredictionLog.FromString(data) for data in read_records(path)]
    # TensorFlow reads the same records (it checks both CRCs of each).
    assert [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(path))] == list(read_records(path))
    requests = [record.predict_log.request for record in records]
    assert {(r.model_spec.name, r.model_spec.signature_name) for r in requests} == {
        ("digits", "serving_default"),
        ("digits", "explain"),
        ("digits", "activations"),
    }
    rows = sorted(
        codec.to_numpy(r.inputs["image"]).shape[0]
        for r in requests
        if r.model_spec.signature_name == "explain"
    )
    assert rows == [1, 4]
    image = codec.to_numpy(requests[0].inputs["image"])
    assert image.dtype == np.float32 and image.shape[1:] == (28, 28, 1) and image.max() > 0  # a real digit
    # This server replays it through the engine path.
    result = replay(load_backend("onnx", version, BackendOptions()), version)
    assert result is not None and result.records == len(records) == 6  # 1 and 4 rows per signature
