"""Flags and TF Serving's text-format config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import (
    BatchingConfig,
    ConfigError,
    VersionPolicy,
    parse_args,
    parse_batching_text,
    parse_model_config_text,
    parse_monitoring_text,
)

MODEL_CONFIG = """
model_config_list {
  config {
    name: 'digits'
    base_path: '/models/digits'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config {
    name: "sentiment"
    base_path: "relative/sentiment"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
  config { name: 'catdog' base_path: '/models/catdog' model_version_policy { all {} } }
}
"""


def test_model_config_text(tmp_path: Path) -> None:
    digits, sentiment, catdog = parse_model_config_text(MODEL_CONFIG, relative_to=tmp_path)
    assert digits.name == "digits" and digits.base_path == Path("/models/digits")
    assert digits.version_policy == VersionPolicy(kind="specific", versions=(1, 2))
    assert dict(digits.version_labels) == {"stable": 1, "canary": 2}
    assert sentiment.base_path == tmp_path / "relative/sentiment"
    assert sentiment.version_policy.select([1, 2, 3, 7]) == [3, 7]
    assert catdog.version_policy.select([3, 1]) == [1, 3]
    assert digits.version_policy.select([1, 3]) == [1]
    assert VersionPolicy().select([4, 9, 2]) == [9]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'a' } }", "has no base_path"),
        ("model_config_list { config { base_path: '/x' } }", "needs a name"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }",
            "duplicate",
        ),
        ("model_config_list { }", "no config entries"),
        ("model_config_list { config { name: 'a' base_path: '/a' bogus_field: 1 } }", "bogus_field"),
        (
            "model_config_list { config { name: 'a' base_path: '/a' model_version_policy { specific { } } } }",
            "lists no versions",
        ),
    ],
)
def test_bad_model_config_says_why(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_config_text(text)


def test_batching_parameters_text() -> None:
    config = parse_batching_text(
        """
        max_batch_size { value: 64 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 10 }
        num_batch_threads { value: 3 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
        allowed_batch_sizes: 64
        """
    )
    assert config == BatchingConfig(64, 2000, 10, 3, (8, 32, 64), False)
    assert parse_batching_text("") == BatchingConfig()
    with pytest.raises(ConfigError, match="allowed_batch_sizes"):
        parse_batching_text("max_batch_size { value: 64 } allowed_batch_sizes: 32")
    with pytest.raises(ConfigError, match=">= 1"):
        parse_batching_text("max_batch_size { value: 0 }")


def test_monitoring_config_text() -> None:
    config = parse_monitoring_text('prometheus_config { enable: true path: "/metrics" }')
    assert config.enable and config.path == "/metrics"
    assert (
        parse_monitoring_text("prometheus_config { enable: true }").path == "/monitoring/prometheus/metrics"
    )
    with pytest.raises(ConfigError, match="must start with"):
        parse_monitoring_text('prometheus_config { enable: true path: "metrics" }')


def test_flags_follow_tensorflow_model_server(tmp_path: Path) -> None:
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 16 }")
    config = parse_args(
        [
            "--model_name=digits",
            f"--model_base_path={tmp_path}",
            "--port=9000",
            "--rest_api_port",
            "9001",
            "--enable_batching=true",
            f"--batching_parameters_file={batching}",
            "--onnx_providers=CUDAExecutionProvider, CPUExecutionProvider",
        ]
    )
    assert (config.port, config.rest_api_port) == (9000, 9001)
    assert config.models[0].name == "digits" and config.models[0].base_path == tmp_path
    assert config.batching is not None and config.batching.max_batch_size == 16
    assert config.onnx_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert parse_args(["--model_base_path", str(tmp_path), "--enable_batching"]).batching == BatchingConfig()
    assert parse_args(["--model_base_path", str(tmp_path), "--enable_batching=false"]).batching is None


def test_flag_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to serve"):
        parse_args([])
    with pytest.raises(ConfigError, match="cannot read"):
        parse_args(["--model_config_file", str(tmp_path / "missing.config")])
    with pytest.raises(ConfigError, match="either"):
        (tmp_path / "m.config").write_text("model_config_list { config { name: 'a' base_path: '/a' } }")
        parse_args(["--model_config_file", str(tmp_path / "m.config"), "--model_name", "x"])
