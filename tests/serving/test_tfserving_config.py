"""TF Serving's own config files (from its repository and docs, in testdata/tfserving/) parse here.

Each file names its source. Beyond parsing: what each means here, which fields are named in the
start-up warning, and that our messages serialize byte for byte as TF Serving's own (official
tensorflow-serving-api descriptors, read in a subprocess as in test_protos.py).
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from serving.config import (
    BatchingConfig,
    ConfigError,
    VersionPolicy,
    parse_batching_text,
    parse_model_config_text,
    parse_monitoring_text,
    parse_ssl_text,
    unused_batching_fields,
    unused_model_config_fields,
)
from serving.proto import config_pb2

DATA = Path(__file__).parent / "testdata" / "tfserving"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_tf_servings_good_and_bad_model_configs() -> None:
    models = parse_model_config_text(read("good_model_config.txt"))
    assert [(m.name, str(m.base_path), m.platform) for m in models] == [
        ("half_plus_two", "${TEST_HALF_PLUS_TWO_DIR}", "tensorflow"),
        ("half_plus_three", "${TEST_HALF_PLUS_THREE_DIR}", "tensorflow"),
    ]
    assert all(m.version_policy == VersionPolicy() for m in models)  # latest 1
    with pytest.raises(ConfigError, match="model config"):
        parse_model_config_text(read("bad_model_config.txt"))


def test_the_docs_model_configs() -> None:
    basic = parse_model_config_text(read("serving_config_basic.txt"))
    assert [m.name for m in basic] == ["my_first_model", "my_second_model"]
    (labelled,) = parse_model_config_text(read("serving_config_labels.txt"))
    assert labelled.version_policy == VersionPolicy(kind="specific", versions=(42, 43))
    assert dict(labelled.version_labels) == {"stable": 42, "canary": 43}
    assert unused_model_config_fields(read("serving_config_labels.txt")) == ()


def test_every_model_config_field_parses_and_the_unused_ones_are_named() -> None:
    text = read("model_server_config_all_fields.txt")
    logged, everything = parse_model_config_text(text)
    assert logged.version_policy == VersionPolicy(kind="latest", num_versions=2)
    assert everything.version_policy == VersionPolicy(kind="all")
    assert unused_model_config_fields(text) == (
        "model_config_file: logging_config (model 'logged')",
        "model_config_file: model_type (model 'logged')",
    )


def test_custom_model_config_is_refused_as_tf_serving_does() -> None:
    text = """custom_model_config { [type.googleapis.com/tensorflow.serving.ModelConfigList] { config { name: 'm' base_path: '/m' } } }"""
    with pytest.raises(ConfigError, match="does not yet support custom model config"):
        parse_model_config_text(text)


def test_tf_servings_batching_and_monitoring_configs() -> None:
    assert parse_batching_text(read("batching_config.txt")) == BatchingConfig(
        max_batch_size=128, batch_timeout_micros=0, max_enqueued_batches=1000000, num_batch_threads=8
    )
    assert unused_batching_fields(read("batching_config.txt")) == ()
    monitoring = parse_monitoring_text(read("monitoring_config.txt"))
    assert monitoring.enable and monitoring.path == "/monitoring/prometheus/metrics"


def test_every_batching_field_parses() -> None:
    text = read("batching_config_splitting.txt")
    config = parse_batching_text(text)
    assert config.enable_large_batch_splitting and config.max_execution_batch_size == 16
    assert config.execution_batch_size == 16 and config.max_batch_size == 64
    assert config.allowed_batch_sizes == (4, 8, 16) and config.pad_variable_length_inputs
    assert unused_batching_fields(text) == ("batching_parameters_file: thread_pool_name",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # TF Serving's rules for splitting (shared_batch_scheduler.h, batching_session.cc).
        (
            "max_batch_size { value: 8 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 16 }",
            "greater than or equal to max_execution_batch_size",
        ),
        (
            "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
            "max_execution_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 64",
            "must match max_execution_batch_size; last entry was 64; expected 16",
        ),
        ("max_batch_size { value: 64 } allowed_batch_sizes: 8 allowed_batch_sizes: 32", "must match max_batch_size"),
        ("max_batch_size { value: 64 } allowed_batch_sizes: 64 allowed_batch_sizes: 8", "monotonically increasing"),
        ("enable_large_batch_splitting { value: true } max_execution_batch_size { value: 0 }", ">= 1"),
    ],
)
def test_batching_rules(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_batching_text(text)


def test_splitting_defaults_to_max_batch_size_and_is_read_only_when_on() -> None:
    assert parse_batching_text("max_batch_size { value: 32 } enable_large_batch_splitting { value: true }").execution_batch_size == 32
    off = "max_batch_size { value: 32 } max_execution_batch_size { value: 8 }"
    assert parse_batching_text(off).execution_batch_size == 32
    assert unused_batching_fields(off) == (
        "batching_parameters_file: max_execution_batch_size (enable_large_batch_splitting is off)",
    )


def test_every_ssl_field_parses() -> None:
    tls = parse_ssl_text(read("ssl_config.txt"))
    assert tls.client_verify and tls.custom_ca and tls.server_key.startswith(b"-----BEGIN PRIVATE KEY")


# The official messages, from the tensorflow-serving-api package (BatchingParameters, SSLConfig and
# MonitoringConfig are not in it: test_protos.py checks the names and numbers of those it has).
OFFICIAL = """
import base64, sys
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
message = text_format.Parse(open(sys.argv[1]).read(), model_server_config_pb2.ModelServerConfig())
print(base64.b64encode(message.SerializeToString(deterministic=True)).decode())
"""


def test_model_configs_serialize_as_tf_servings_own_messages() -> None:
    pytest.importorskip("tensorflow_serving")
    for name in ("model_server_config_all_fields.txt", "serving_config_labels.txt", "good_model_config.txt"):
        ours = text_format.Parse(read(name), config_pb2.ModelServerConfig()).SerializeToString(deterministic=True)
        result = subprocess.run(
            [sys.executable, "-c", OFFICIAL, str(DATA / name)], capture_output=True, text=True, timeout=120, check=True
        )
        assert base64.b64decode(result.stdout) == ours, name
