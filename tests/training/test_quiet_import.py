"""Training on a machine without a GPU does not greet the user with CUDA errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serving.fixtures import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from training.common import import_tensorflow_quietly
print("before", file=sys.stderr)
dropped = import_tensorflow_quietly()
import tensorflow as tf
print(len(dropped), len(tf.config.list_physical_devices("GPU")))
"""


def test_tensorflow_import_drops_only_the_no_gpu_notices() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    dropped, gpus = (int(v) for v in done.stdout.split())
    assert done.stderr.startswith("before\n")  # what was written before the capture is untouched
    for notice in ("failed call to cuInit", "Could not find cuda drivers", "cpu_feature_guard"):
        assert notice not in done.stderr
    if gpus == 0:
        assert dropped > 0  # TensorFlow did print them: the filter is what hid them
