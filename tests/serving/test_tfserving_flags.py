"""Every `tensorflow_model_server` flag is accepted; a TF Serving command line starts and serves.

The flag list is TF Serving 2.x's `tensorflow_serving/model_servers/main.cc` (48 flags), with each
flag's type there. Then a real server started with a long TF Serving command line: it serves, splits
large batches, and logs exactly one warning naming what it accepted without using.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving import codec
from serving.config import ConfigError, parse_args
from serving.proto import apis_pb2, apis_pb2_grpc
from serving.server import engine_thread_count
from tests.serving.fixtures import REPO_ROOT, reference_probabilities, start_server, write_tiny_version

# main.cc's flags and their types (tensorflow::Flag over int32/int64/float/bool/string).
MAIN_CC_FLAGS = {
    "port": int, "grpc_socket_path": str, "rest_api_port": int, "rest_api_num_threads": int,
    "rest_api_timeout_in_ms": int, "rest_api_enable_cors_support": bool, "enable_batching": bool,
    "allow_version_labels_for_unavailable_models": bool, "batching_parameters_file": str,
    "enable_per_model_batching_parameters": bool, "model_config_file": str,
    "model_config_file_poll_wait_seconds": int, "model_name": str, "model_base_path": str,
    "num_load_threads": int, "num_unload_threads": int, "max_num_load_retries": int,
    "load_retry_interval_micros": int, "file_system_poll_wait_seconds": int,
    "flush_filesystem_caches": bool, "tensorflow_session_parallelism": int,
    "tensorflow_session_config_file": str, "tensorflow_intra_op_parallelism": int,
    "tensorflow_inter_op_parallelism": int, "use_alts_credentials": bool, "ssl_config_file": str,
    "platform_config_file": str, "per_process_gpu_memory_fraction": float, "saved_model_tags": str,
    "grpc_channel_arguments": str, "grpc_max_threads": int, "enable_model_warmup": bool,
    "num_request_iterations_for_warmup": int, "version": bool, "monitoring_config_file": str,
    "remove_unused_fields_from_bundle_metagraph": bool, "prefer_tflite_model": bool,
    "num_tflite_pools": int, "num_tflite_interpreters_per_pool": int,
    "enable_signature_method_name_check": bool, "xla_cpu_compilation_enabled": bool,
    "xla_gpu_compilation_enabled": bool, "enable_profiler": bool,
    "thread_pool_factory_config_file": str, "mixed_precision": str, "skip_initialize_tpu": bool,
    "enable_grpc_healthcheck_service": bool, "enable_serialization_as_tensor_content": bool,
}  # fmt: skip

# Values that need a real file or change what is served; the rest get a neutral value of their type.
FILE_FLAGS = {"batching_parameters_file", "model_config_file", "model_base_path", "ssl_config_file", "monitoring_config_file"}
SAMPLES: dict[type, str] = {int: "1", float: "0.5", str: "x", bool: "true"}


@pytest.fixture()
def base(tmp_path: Path) -> Path:
    write_tiny_version(tmp_path / "tiny", 1)
    return tmp_path / "tiny"


def test_the_list_is_main_ccs() -> None:
    assert len(MAIN_CC_FLAGS) == 48


@pytest.mark.parametrize("flag", sorted(set(MAIN_CC_FLAGS) - FILE_FLAGS - {"version"}))
def test_every_flag_is_accepted_with_a_value_of_its_type(flag: str, base: Path) -> None:
    special = {"port": "8600", "rest_api_port": "8601", "grpc_channel_arguments": "grpc.max_connection_age_ms=2000"}
    value = special.get(flag, SAMPLES[MAIN_CC_FLAGS[flag]])
    parse_args([f"--model_base_path={base}", f"--{flag}={value}"])


@pytest.mark.parametrize(
    ("forms", "expected"),
    [
        (["--enable_batching"], True),
        (["--enable_batching=true"], True),
        (["--enable_batching=1"], True),
        (["--enable_batching", "true"], True),
        (["--enable_batching=false"], False),
        (["--enable_batching=0"], False),
        (["--noenable_batching"], False),
        (["--enable_batching", "--noenable_batching"], False),
        ([], False),
    ],
)
def test_boolean_flags_take_absls_forms(forms: list[str], expected: bool, base: Path) -> None:
    assert (parse_args([f"--model_base_path={base}", *forms]).batching is not None) is expected


def test_defaults_are_tf_servings(base: Path) -> None:
    config = parse_args([f"--model_base_path={base}"])
    assert config.enable_model_warmup is True
    assert config.allow_version_labels_for_unavailable_models is False
    assert config.limits.rest_api_timeout_seconds == 30.0  # TF Serving's http_timeout_in_ms = 30000
    assert config.per_process_gpu_memory_fraction == 0.0
    assert config.ignored == ()
    assert not parse_args([f"--model_base_path={base}", "--noenable_model_warmup"]).enable_model_warmup


def test_engine_threads_follow_tf_servings_rule(base: Path) -> None:
    def threads(*flags: str) -> tuple[int, int]:
        config = parse_args([f"--model_base_path={base}", *flags])
        return config.intra_op_threads, config.inter_op_threads

    assert threads("--tensorflow_session_parallelism=3") == (3, 3)
    assert threads("--tensorflow_session_parallelism=3", "--tensorflow_intra_op_parallelism=2") == (2, 0)
    with pytest.raises(ConfigError, match="You cannot configure all"):
        threads(
            "--tensorflow_session_parallelism=3",
            "--tensorflow_intra_op_parallelism=2",
            "--tensorflow_inter_op_parallelism=2",
        )


def test_grpc_max_threads_caps_concurrent_calls_unless_that_is_set(base: Path) -> None:
    config = parse_args([f"--model_base_path={base}", "--grpc_max_threads=16"])
    assert config.limits.grpc_max_concurrent_rpcs == 16
    config = parse_args([f"--model_base_path={base}", "--grpc_max_threads=16", "--grpc_max_concurrent_rpcs=64"])
    assert config.limits.grpc_max_concurrent_rpcs == 64


def test_bad_values_are_errors(base: Path) -> None:
    with pytest.raises(ConfigError, match=r"between 0\.0 and 1\.0"):
        parse_args([f"--model_base_path={base}", "--per_process_gpu_memory_fraction=1.5"])
    with pytest.raises(ConfigError, match="rest_api_num_threads"):
        parse_args([f"--model_base_path={base}", "--rest_api_num_threads=-1"])


def test_prefixes_are_not_flags(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([f"--model_base_path={base}", "--rest_api_po=1"])
    assert exit_info.value.code == 2
    assert "did you mean --rest_api_port?" in capsys.readouterr().err


def test_an_unknown_flag_exits_2_naming_the_closest_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--rest_api_prot", "1", "--model_base_path=/nowhere"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown flag(s): --rest_api_prot (did you mean --rest_api_port?)" in result.stderr


def test_version_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("TensorFlow ModelServer: ")


# -- a real server, started as a TF Serving deployment would start it ---------------------------


def call(rest_url: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(rest_url + path, data=data), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, 28, 28, 1)).astype(np.float32)


def test_a_tf_serving_command_line_serves_and_warns_once(tmp_path: Path, base: Path) -> None:
    (tmp_path / "models.config").write_text(
        "model_config_list {\n"
        f"  config {{ name: 'tiny' base_path: '{base}' model_platform: 'tensorflow'\n"
        "    version_labels { key: 'stable' value: 1 }\n"
        "    version_labels { key: 'canary' value: 9 }\n"  # not on disk: allowed by the flag below
        "    logging_config { sampling_config { sampling_rate: 0.1 } } }\n"
        "}\n"
    )
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 12 } max_execution_batch_size { value: 4 }\n"
        "enable_large_batch_splitting { value: true } batch_timeout_micros { value: 0 }\n"
        "num_batch_threads { value: 2 } thread_pool_name { value: 'model_server_batch_threads' }\n"
    )
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true, path: "/metrics" }')
    args = [
        f"--model_config_file={tmp_path / 'models.config'}",
        "--model_config_file_poll_wait_seconds=0",
        "--file_system_poll_wait_seconds=1",
        "--enable_batching",
        f"--batching_parameters_file={tmp_path / 'batching.config'}",
        f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
        "--rest_api_num_threads=2",
        "--rest_api_timeout_in_ms=20000",
        "--enable_model_warmup=true",
        "--allow_version_labels_for_unavailable_models=true",
        "--enable_grpc_healthcheck_service",
        "--tensorflow_session_parallelism=1",
        "--grpc_max_threads=32",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=300000",
        "--per_process_gpu_memory_fraction=0.5",
        "--noflush_filesystem_caches",
        "--saved_model_tags=serve",
        "--xla_cpu_compilation_enabled=false",
        "--enable_profiler=true",
        "--num_load_threads=2",
        "--max_num_load_retries=3",
        "--enable_signature_method_name_check",
        "--enable_serialization_as_tensor_content=true",
    ]
    server = start_server(args, tmp_path / "server.log")
    try:
        rows = pixels(12)  # 3 x max_execution_batch_size: three batches, one answer
        status, answer = call(server.rest_url, "/v1/models/tiny/labels/stable:predict", {"instances": rows.tolist()})
        assert status == 200
        np.testing.assert_allclose(answer["predictions"], reference_probabilities(base / "1", rows), atol=1e-5)
        status, answer = call(server.rest_url, "/v1/models/tiny:predict", {"instances": pixels(13).tolist()})
        assert status == 400 and answer["error"] == "Task size 13 is larger than maximum input batch size 12"
        status, answer = call(server.rest_url, "/v1/models/tiny/labels/canary:predict", {"instances": rows.tolist()})
        assert status == 404 and "version 9" in answer["error"]
        with urllib.request.urlopen(server.rest_url + "/metrics", timeout=10) as response:
            assert b":tensorflow:serving:request_count" in response.read()
        # --enable_serialization_as_tensor_content: packed bytes, not float_val (TF Serving's default)
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = apis_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.inputs["image"].CopyFrom(codec.from_numpy(rows[:2]))
            output = apis_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10).outputs["probabilities"]
        assert len(output.tensor_content) == 2 * 10 * 4 and not output.float_val
    finally:
        assert server.stop() == 0
    warnings = [line for line in server.log().splitlines() if " WARNING " in line]
    ours = [line for line in warnings if "not used here" in line]
    assert len(ours) == 1, warnings  # one line for all of them, not one per flag
    named = re.sub(r".*not used here: ", "", ours[0]).split(", ")
    assert named == [
        "--num_load_threads",
        "--max_num_load_retries",
        "--flush_filesystem_caches",
        "--saved_model_tags",
        "--xla_cpu_compilation_enabled",
        "--enable_profiler",
        "model_config_file: logging_config (model 'tiny')",
        "batching_parameters_file: thread_pool_name",
    ]
    assert not any(name in line for line in warnings if line not in ours for name in named)


def test_a_label_naming_an_unavailable_version_is_refused_at_start(tmp_path: Path, base: Path) -> None:
    (tmp_path / "models.config").write_text(
        f"model_config_list {{ config {{ name: 'tiny' base_path: '{base}' version_labels {{ key: 'canary' value: 9 }} }} }}"
    )
    # The ports open before the models load; the server exits once the label is refused.
    server = start_server([f"--model_config_file={tmp_path / 'models.config'}"], tmp_path / "server.log", wait_serving=False)
    assert server.process.wait(timeout=60) == 1
    assert (
        "cannot start: Request to assign label to version 9 of model tiny, which is not currently available "
        "for inference (label 'canary')" in server.log()
    )


def test_engine_calls_get_one_thread_per_cpu_unless_told(base: Path, tmp_path: Path) -> None:
    def count(cpus: int, *flags: str) -> int:
        return engine_thread_count(parse_args([f"--model_base_path={base}", *flags]), cpus)

    assert count(2) == 2 and count(16) == 16
    assert count(2, "--engine_threads=3") == 3
    # With batching every batch thread may hold an engine call at once.
    batching = tmp_path / "batching.txt"
    batching.write_text("num_batch_threads { value: 5 }\n")
    five = ("--enable_batching", f"--batching_parameters_file={batching}")
    assert count(2, *five) == 5 and count(8, *five) == 8
    with pytest.raises(ConfigError, match="--engine_threads must be >= 0"):
        parse_args([f"--model_base_path={base}", "--engine_threads=-1"])
