"""Server configuration: `tensorflow_model_server`'s flags and config files, parsed once in `main()`.

Every flag of TF Serving 2.x's `model_servers/main.cc` is accepted with its name, type and default,
so a deployment can swap the binary and keep its arguments: `--flag value` and `--flag=value`, and
for booleans absl's forms too (`--flag`, `--flag=true`, `--flag=false`, `--noflag`). Those that mean
something here are honoured (see `build_parser`); those that cannot (TensorFlow session, TPU, TF Lite
and XLA options, ...) are accepted and named in one warning line at start (`ServerConfig.ignored`).
An unknown flag is an error (exit status 2) that names the closest valid flag; prefixes of flag
names are not taken for the flag. The four config files use TF Serving's protobuf text format, with
every field of TF Serving's messages (fields without a meaning here are named in the same warning
line when set). Everything ends up in frozen dataclasses; nothing here reads argv or the environment
at import.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from google.protobuf import text_format

from serving.proto import config_pb2

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ConfigError(ValueError):
    """A flag or config file is invalid; the message says which and why."""


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: `latest` N (default 1), `all`, or `specific` versions."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Sequence[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: Path
    platform: str = "tensorflow"  # TF Serving's model_platform; informational here
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters, with its defaults where the file leaves a field out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    # With splitting, max_batch_size is the largest request and max_execution_batch_size the
    # largest engine call: bigger requests are split into pieces that run in separate batches.
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size

    @property
    def execution_batch_size(self) -> int:
        """The most rows one engine call takes (the batch size limit of the queue)."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size > 0:
            return self.max_execution_batch_size
        return self.max_batch_size


@dataclass(frozen=True)
class MonitoringConfig:
    enable: bool = True
    path: str = "/monitoring/prometheus/metrics"


@dataclass(frozen=True)
class TlsConfig:
    """PEM-encoded server key and certificate; with `client_verify`, clients must present a cert
    signed by `custom_ca` (mutual TLS)."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None = None
    client_verify: bool = False


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing (`--tracing_exporter`; see `serving.tracing`)."""

    exporter: str  # "otlp" or "console"
    endpoint: str = ""  # OTLP gRPC collector, e.g. http://collector:4317 ("": the exporter's default)
    sample_ratio: float = 1.0  # of traces started here (a caller's traceparent decides its own)


@dataclass(frozen=True)
class Limits:
    """What one request, one connection and the whole server may take (each has a flag).

    Anything past a per-request limit is the caller's error (INVALID_ARGUMENT / 400); anything past
    a server-wide one is overload (RESOURCE_EXHAUSTED / 429, or 503 for connections), which clients
    retry later or elsewhere.
    """

    max_request_rows: int = 1000  # rows (batch dimension) of one request; TF Serving's max_batch_size default
    max_string_bytes: int = 16 * 1024 * 1024  # one string element (an encoded image, a text)
    max_image_pixels: int = 8192 * 8192  # one image, from its header, before decoding
    max_request_image_pixels: int = 1 << 28  # all images of one request
    string_element_overhead: int = 64  # what one string element costs beyond its bytes, in the size check
    rest_max_body_bytes: int = 0  # 0: the gRPC message limit (--grpc_max_message_bytes)
    rest_max_json_depth: int = 64  # nesting of arrays and objects in a REST body
    rest_max_inflight_bytes: int = 256 * 1024 * 1024  # REST request bodies being read or parsed at once
    rest_max_connections: int = 2048
    rest_idle_timeout_seconds: float = 15.0  # a connection's request headers must arrive within this
    rest_body_timeout_seconds: float = 30.0  # a request body must arrive within this once headers are in
    rest_api_timeout_seconds: float = 30.0  # TF Serving's --rest_api_timeout_in_ms: the whole request
    grpc_max_concurrent_streams: int = 128  # per HTTP/2 connection
    grpc_max_concurrent_rpcs: int = 128  # whole server; beyond it RESOURCE_EXHAUSTED at once
    grpc_keepalive_seconds: float = 60.0  # ping idle connections this often; dead peers are cut
    grpc_keepalive_timeout_seconds: float = 20.0


@dataclass(frozen=True)
class ServerConfig:
    models: tuple[ModelConfig, ...]
    host: str = "0.0.0.0"
    port: int = 8500
    rest_api_port: int = 8501
    backend: str = "onnx"
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    onnx_require_accelerator: bool = False  # a version whose sessions got no accelerator fails to load
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    batching: BatchingConfig | None = None
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    grpc_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    file_system_poll_wait_seconds: float = 1.0
    model_config_file_poll_wait_seconds: float = 0.0  # > 0: re-read --model_config_file this often
    drain_seconds: float = 10.0
    lame_duck_seconds: float = 0.0
    model_config_file: Path | None = None
    tls: TlsConfig | None = None
    inline_engine_micros: float = 200.0
    engine_threads: int = 0  # engine calls at once (worker threads); 0: one per CPU the process may use
    tune_malloc: bool = True  # glibc thresholds for request-sized buffers (serving.malloc)
    preferred_batch_size: int = 0  # with batching: merge requests up to this many rows (0: max_batch_size)
    workers: int = 1
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    limits: Limits = field(default_factory=Limits)
    auth_token_file: Path | None = None
    auth_exempt: tuple[str, ...] = ("health", "metrics")
    access_log: str = ""  # JSON lines, one per request, to this file ("-": stderr; "": off)
    tracing: TracingConfig | None = None  # None: no tracing (opentelemetry is not imported)
    # TF Serving flags with a meaning here (see build_parser for what each does).
    rest_api_num_threads: int = 0  # REST parse threads for big bodies; 0: auto (one)
    enable_model_warmup: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    per_process_gpu_memory_fraction: float = 0.0  # of each CUDA device's memory; 0: no limit
    # gRPC Predict answers numbers in tensor_content (else float_val, int64_val, ...: TF Serving's default)
    enable_serialization_as_tensor_content: bool = False
    # Classify/Regress on a SavedModel check the signature's method_name (TF Serving's flag)
    enable_signature_method_name_check: bool = False
    rest_console: bool = True  # the web console at / on the REST port
    num_request_iterations_for_warmup: int = 0  # replays of each warm-up record; 0: TF Serving's default, once
    # Accepted flags and config fields that have no meaning here: named in one warning at start.
    ignored: tuple[str, ...] = ()


def parse_model_config_text(text: str, relative_to: Path | None = None) -> tuple[ModelConfig, ...]:
    """Parse a `model_config_list { config { ... } }` file (TF Serving's text format)."""
    message = config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"model config: {exc}") from exc
    if message.WhichOneof("config") == "custom_model_config":
        # TF Serving's own answer: its model server has no loader for custom configs either.
        raise ConfigError("model config: ModelServer does not yet support custom model config.")
    models = []
    for raw in message.model_config_list.config:
        if not raw.name:
            raise ConfigError("model config: every config needs a name")
        if not raw.base_path:
            raise ConfigError(f"model config: model '{raw.name}' has no base_path")
        base = Path(raw.base_path)
        if not base.is_absolute() and relative_to is not None:
            base = relative_to / base
        models.append(
            ModelConfig(
                name=raw.name,
                base_path=base,
                platform=raw.model_platform or "tensorflow",
                version_policy=_version_policy(raw),
                version_labels=dict(raw.version_labels),
            )
        )
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"model config: duplicate model names {duplicates}")
    if not models:
        raise ConfigError("model config: model_config_list has no config entries")
    return tuple(models)


def unused_model_config_fields(text: str) -> tuple[str, ...]:
    """The fields of a parseable model config file that are set but have no meaning here."""
    message = config_pb2.ModelServerConfig()
    text_format.Parse(text, message)
    unused = []
    for raw in message.model_config_list.config:
        # Request logging (logging_config) is not implemented; model_type is deprecated in TF
        # Serving and superseded by model_platform.
        if raw.HasField("logging_config"):
            unused.append(f"model_config_file: logging_config (model '{raw.name}')")
        if raw.model_type:
            unused.append(f"model_config_file: model_type (model '{raw.name}')")
    return tuple(unused)


def _version_policy(raw: config_pb2.ModelConfig) -> VersionPolicy:
    policy = raw.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"model '{raw.name}': specific version policy lists no versions")
        return VersionPolicy(kind="specific", versions=tuple(policy.specific.versions))
    if choice == "latest":
        return VersionPolicy(kind="latest", num_versions=policy.latest.num_versions or 1)
    return VersionPolicy()


def _batching_message(text: str) -> config_pb2.BatchingParameters:
    message = config_pb2.BatchingParameters()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"batching parameters: {exc}") from exc
    return message


def parse_batching_text(text: str) -> BatchingConfig:
    """TF Serving's BatchingParameters text; fields left out take TF Serving's defaults."""
    message = _batching_message(text)
    defaults = BatchingConfig()

    def wrapped(name: str, default: int) -> int:
        return int(getattr(message, name).value) if message.HasField(name) else default

    config = BatchingConfig(
        max_batch_size=wrapped("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=wrapped("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=wrapped("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=wrapped("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(int(v) for v in message.allowed_batch_sizes),
        pad_variable_length_inputs=message.pad_variable_length_inputs,
        enable_large_batch_splitting=message.enable_large_batch_splitting.value,
        max_execution_batch_size=wrapped("max_execution_batch_size", defaults.max_execution_batch_size),
    )
    if config.max_batch_size < 1 or config.num_batch_threads < 1 or config.max_enqueued_batches < 1:
        raise ConfigError(
            "batching parameters: max_batch_size, num_batch_threads, max_enqueued_batches must be >= 1"
        )
    if config.batch_timeout_micros < 0:
        raise ConfigError("batching parameters: batch_timeout_micros must be >= 0")
    if message.HasField("max_execution_batch_size") and config.max_execution_batch_size < 1:
        raise ConfigError("batching parameters: max_execution_batch_size must be >= 1")
    execution = config.execution_batch_size
    if config.enable_large_batch_splitting and execution > config.max_batch_size:
        raise ConfigError(
            "batching parameters: when enable_large_batch_splitting is true, max_batch_size must be "
            f"greater than or equal to max_execution_batch_size ({config.max_batch_size} < {execution})"
        )
    sizes = config.allowed_batch_sizes
    if sizes and list(sizes) != sorted(set(sizes)):
        raise ConfigError("batching parameters: allowed_batch_sizes entries must be monotonically increasing")
    if sizes and sizes[-1] != execution:
        # TF Serving's rule: the largest allowed size is the largest batch the engine is given.
        limit = "max_execution_batch_size" if config.enable_large_batch_splitting else "max_batch_size"
        raise ConfigError(
            f"batching parameters: last entry in allowed_batch_sizes must match {limit}; last entry "
            f"was {sizes[-1]}; expected {execution}"
        )
    return config


def unused_batching_fields(text: str) -> tuple[str, ...]:
    """The fields of a batching parameters file that are set but have no meaning here."""
    message = _batching_message(text)
    unused = []
    if message.HasField("thread_pool_name"):  # one pool per server here, unnamed
        unused.append("batching_parameters_file: thread_pool_name")
    if message.HasField("max_execution_batch_size") and not message.enable_large_batch_splitting.value:
        # TF Serving reads it only with splitting on; so does this server.
        unused.append("batching_parameters_file: max_execution_batch_size (enable_large_batch_splitting is off)")
    return tuple(unused)


def parse_monitoring_text(text: str) -> MonitoringConfig:
    message = config_pb2.MonitoringConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"monitoring config: {exc}") from exc
    prometheus = message.prometheus_config
    path = prometheus.path or MonitoringConfig.path
    if not path.startswith("/"):
        raise ConfigError(f"monitoring config: path must start with '/', got {path!r}")
    return MonitoringConfig(enable=prometheus.enable, path=path)


def parse_ssl_text(text: str) -> TlsConfig:
    message = config_pb2.SSLConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"ssl config: {exc}") from exc
    if not message.server_key or not message.server_cert:
        raise ConfigError("ssl config: server_key and server_cert (PEM contents) are both required")
    if message.client_verify and not message.custom_ca:
        raise ConfigError("ssl config: client_verify needs custom_ca to verify clients against")
    return TlsConfig(
        server_key=message.server_key.encode(),
        server_cert=message.server_cert.encode(),
        custom_ca=message.custom_ca.encode() or None,
        client_verify=message.client_verify,
    )


def parse_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """TF Serving's `--grpc_channel_arguments`: `key=value,key=value`; integer values stay integers."""
    arguments: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        value = value.strip()
        arguments.append((key.strip(), int(value) if value.lstrip("-").isdigit() else value))
    return tuple(arguments)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class _Parser(argparse.ArgumentParser):
    """argparse with TF Serving's flag rules: no prefix matching, and an unknown flag's error names
    the closest valid one."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            message = self._unknown(message[len(prefix) :].split())
        # Not argparse's usage text: with every TF Serving flag it would fill the screen.
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the flags)\n")

    def _unknown(self, extras: list[str]) -> str:
        known = sorted({o for a in self._actions for o in a.option_strings if o.startswith("--")})
        parts = []
        for token in extras:
            if not token.startswith("-"):
                continue  # the value of an unknown flag
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
        if not parts:
            return f"unexpected argument(s) {' '.join(extras)}: flags are --name=value"
        return f"unknown flag(s): {', '.join(parts)}"


def _add_bool(add: Callable[..., argparse.Action], flag: str, default: bool, help_text: str) -> None:
    """A boolean flag in absl's forms: --flag, --flag=true|false (or 1|0), --flag true, --noflag."""
    name = flag[2:]
    add(flag, type=_bool, nargs="?", const=True, default=default, metavar="BOOL", help=f"{help_text} (default {str(default).lower()})")
    add(f"--no{name}", dest=name, action="store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="serve",
        description="Serve exported models over TensorFlow Serving's gRPC and REST APIs (ONNX Runtime). "
        "Every tensorflow_model_server flag is accepted; booleans also as --flag, --flag=false, --noflag.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--port", type=int, default=ServerConfig.port, help="gRPC port (0 picks a free one)")
    add("--rest_api_port", type=int, default=ServerConfig.rest_api_port, help="REST port (0 picks a free one; -1 disables REST)")
    add("--host", default=ServerConfig.host, help="address to bind both ports to")
    add("--model_name", default=None, help="name of the single model to serve (with --model_base_path)")
    add("--model_base_path", default=None, help="folder holding <version>/ subfolders of one model")
    add(
        "--model_config_file",
        default=None,
        help="TF Serving text-format model_config_list for several models",
    )
    add(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0,
        help="with --model_config_file: re-read that file this often (seconds) and serve exactly its "
        "models, loading added ones and unloading removed ones without a restart (0: read only at start)",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=float,
        default=ServerConfig.file_system_poll_wait_seconds,
        help="how often to look for new versions (0: only at start)",
    )
    _add_bool(add, "--enable_batching", False, "batch concurrent requests")
    add("--batching_parameters_file", default=None, help="TF Serving BatchingParameters text file")
    add(
        "--monitoring_config_file",
        default=None,
        help="TF Serving MonitoringConfig text file (Prometheus path)",
    )
    add(
        "--ssl_config_file",
        default=None,
        help="TF Serving SSLConfig text file: serve gRPC over TLS (mutual TLS with client_verify)",
    )
    add(
        "--grpc_channel_arguments",
        default="",
        help="extra gRPC server arguments, e.g. grpc.max_connection_age_ms=300000",
    )
    add(
        "--grpc_max_message_bytes",
        type=int,
        default=ServerConfig.grpc_max_message_bytes,
        help="largest gRPC message accepted and sent",
    )
    add("--backend", choices=("onnx", "tensorflow"), default=ServerConfig.backend, help="inference engine")
    add(
        "--onnx_providers",
        default=",".join(ServerConfig.onnx_providers),
        help="comma-separated ONNX Runtime providers, in order of preference",
    )
    _add_bool(
        add,
        "--onnx_require_accelerator",
        ServerConfig.onnx_require_accelerator,
        "fail to load a model version whose ONNX Runtime sessions get none of the accelerators in "
        "--onnx_providers (not in this onnxruntime build, no device, CUDA libraries not found) instead "
        "of running it on the CPU",
    )
    add(
        "--tensorflow_intra_op_parallelism",
        type=int,
        default=ServerConfig.intra_op_threads,
        help="engine threads inside one op; 0 (auto): one thread for models whose one-row call takes "
        "under 5 ms at warm-up (one thread per call serves the most requests per core), one per CPU "
        "(cgroup quota included) for slower ones",
    )
    add(
        "--tensorflow_inter_op_parallelism",
        type=int,
        default=ServerConfig.inter_op_threads,
        help="ops run in parallel (0: engine default)",
    )
    add(
        "--inline_engine_micros",
        type=float,
        default=ServerConfig.inline_engine_micros,
        help="engine calls expected (from the warm-up timing) to take less than this run on the event "
        "loop, not a worker thread; 0 disables",
    )
    add(
        "--engine_threads",
        type=int,
        default=ServerConfig.engine_threads,
        help="worker threads for engine calls and input preparation, i.e. engine calls running at "
        "once (with batching at least the batching parameters' num_batch_threads); 0 (auto): one per CPU this process may use "
        "(affinity, capped by a cgroup CPU quota). Version loads have threads of their own",
    )
    add(
        "--preferred_batch_size",
        type=int,
        default=ServerConfig.preferred_batch_size,
        help="with batching: requests are merged into batches of at most this many rows; a bigger "
        "request still runs whole (up to max_batch_size). Set it where the engine's cost per row stops "
        "falling (see the README's Speed section); 0: batches fill up to max_batch_size, as in TF Serving",
    )
    _add_bool(
        add,
        "--tune_malloc",
        ServerConfig.tune_malloc,
        "glibc: serve request-sized buffers (up to 4 MiB) from the heap and keep 64 MiB of freed memory "
        "for reuse, so big request bodies do not fault in fresh pages on every call; off: glibc's defaults",
    )
    add(
        "--workers",
        type=int,
        default=ServerConfig.workers,
        help="server processes sharing both ports (SO_REUSEPORT), each with every model: one Python "
        "process serves about one core's worth of requests",
    )
    add(
        "--drain_seconds",
        type=float,
        default=ServerConfig.drain_seconds,
        help="on SIGTERM, how long admitted requests may take to finish (new ones get UNAVAILABLE)",
    )
    add(
        "--lame_duck_seconds",
        type=float,
        default=ServerConfig.lame_duck_seconds,
        help="on SIGTERM, keep serving normally this long (health already NOT_SERVING) before the "
        "drain, for clients still routed here; in Kubernetes a preStop sleep does this instead",
    )
    _add_security_flags(parser)
    _add_observability_flags(parser)
    _add_limit_flags(parser)
    _add_tfserving_flags(parser)
    return parser


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "--auth_token_file",
        default=None,
        help="require 'authorization: Bearer <token>' on both APIs; the file holds one token per line "
        "(# comments allowed) and is re-read when it changes",
    )
    group.add_argument(
        "--auth_exempt",
        default=",".join(ServerConfig.auth_exempt),
        help="comma-separated endpoints that need no token: 'health' (gRPC health service), "
        "'metrics' (the Prometheus path), 'status' (model status and metadata); '' for none",
    )


def _add_observability_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("observability", "access log and OpenTelemetry tracing")
    group.add_argument(
        "--access_log",
        default="",
        metavar="PATH",
        help="write one JSON line per request (protocol, API, model, version, signature, status, rows, "
        "queue/compute/total ms, bytes, peer, trace id) to this file, or '-' for stderr (default: off)",
    )
    group.add_argument(
        "--tracing_exporter",
        choices=("none", "otlp", "console"),
        default="none",
        help="OpenTelemetry spans per request (queue and compute children; the caller's traceparent is "
        "the parent): 'otlp' to a collector over gRPC, 'console' to stdout; needs the otel extra (default none)",
    )
    group.add_argument(
        "--tracing_endpoint",
        default="",
        help="OTLP gRPC collector for --tracing_exporter otlp, e.g. http://collector:4317 (http: plaintext, "
        "https: TLS; default: OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317)",
    )
    group.add_argument(
        "--tracing_sample_ratio",
        type=float,
        default=TracingConfig.sample_ratio,
        help="fraction of traces started here that are recorded; requests with a traceparent follow "
        "their caller's sampling decision (default 1.0)",
    )


def _tracing(args: argparse.Namespace) -> TracingConfig | None:
    if not 0 <= args.tracing_sample_ratio <= 1:
        raise ConfigError("--tracing_sample_ratio must be between 0.0 and 1.0")
    if args.tracing_exporter == "none":
        return None
    import importlib.util

    wanted = ["opentelemetry.sdk"] + (["opentelemetry.exporter.otlp"] if args.tracing_exporter == "otlp" else [])
    for module in wanted:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError(
                f"--tracing_exporter {args.tracing_exporter} needs OpenTelemetry ({module} is not installed): "
                "pip install 'model-serving[otel]'"
            )
    return TracingConfig(args.tracing_exporter, args.tracing_endpoint, args.tracing_sample_ratio)


def _access_log(path: str) -> str:
    if path and path != "-" and not Path(path).resolve().parent.is_dir():
        raise ConfigError(f"--access_log {path}: folder {Path(path).resolve().parent} does not exist")
    return path if path in ("", "-") else str(Path(path).resolve())


def _add_tfserving_flags(parser: argparse.ArgumentParser) -> None:
    """TF Serving flags beyond the ones above: those with a meaning here, then the rest."""
    group = parser.add_argument_group("TensorFlow Serving", "tensorflow_model_server's other flags")
    add = group.add_argument
    add(
        "--rest_api_num_threads",
        type=int,
        default=ServerConfig.rest_api_num_threads,
        help="threads that parse REST bodies of 1 MiB and more (smaller ones are parsed on the event "
        "loop); 0 (auto): one, so the loop waits for at most one parse call at a time",
    )
    _add_bool(add, "--enable_model_warmup", ServerConfig.enable_model_warmup, "warm every version up before it serves (assets.extra/tf_serving_warmup_requests when present)")
    add(
        "--tensorflow_session_parallelism",
        type=int,
        default=0,
        help="engine threads, intra- and inter-op alike, when neither of those flags is set (0: auto)",
    )
    add(
        "--per_process_gpu_memory_fraction",
        type=float,
        default=ServerConfig.per_process_gpu_memory_fraction,
        help="with CUDAExecutionProvider: cap each model session's CUDA memory arena (ONNX Runtime "
        "gpu_mem_limit) at this fraction of the device's memory (0: no cap)",
    )
    _add_bool(
        add,
        "--allow_version_labels_for_unavailable_models",
        ServerConfig.allow_version_labels_for_unavailable_models,
        "allow a new version label to name a version that is not AVAILABLE (yet); without it such a "
        "label is refused, as in TF Serving",
    )
    add(
        "--grpc_max_threads",
        type=int,
        default=0,
        help="TF Serving's gRPC thread cap (one thread per running call there); here it caps the calls "
        "running at once, as --grpc_max_concurrent_rpcs does, unless that flag is given too "
        "(0: --grpc_max_concurrent_rpcs alone)",
    )
    _add_bool(add, "--enable_grpc_healthcheck_service", False, "accepted; grpc.health.v1 is always served here (probes and readiness use it)")
    _add_bool(
        add,
        "--enable_serialization_as_tensor_content",
        ServerConfig.enable_serialization_as_tensor_content,
        "gRPC Predict answers numeric outputs as packed tensor_content bytes (default: in the typed "
        "fields float_val, int64_val, ..., as TF Serving does)",
    )
    _add_bool(
        add,
        "--enable_signature_method_name_check",
        ServerConfig.enable_signature_method_name_check,
        "Classify and Regress on a SavedModel require the signature's method_name to match, as TF Serving",
    )
    _add_bool(add, "--version", False, "print the version and exit")
    add(
        "--num_request_iterations_for_warmup",
        type=int,
        default=ServerConfig.num_request_iterations_for_warmup,
        help="how many times each record of a version's warm-up file is replayed (0: once, TF Serving's default)",
    )
    _add_bool(
        add,
        "--rest_console",
        ServerConfig.rest_console,
        "serve the web console at / on the REST port (false for locked-down deployments)",
    )
    for flag, kind, default, what in _UNUSED_FLAGS:
        help_text = f"accepted and not used here ({what}); named in the start-up warning when given"
        if kind is bool:
            _add_bool(add, flag, bool(default), help_text)
        else:
            add(flag, type=kind, default=default, help=f"{help_text} (TF Serving's default {default!r})")


# TF Serving flags that cannot mean anything here: (flag, type, TF Serving's default, what it does
# there). Accepted, so a TF Serving command line starts; the ones given are named in one warning.
_UNUSED_FLAGS: tuple[tuple[str, type, object, str], ...] = (
    ("--grpc_socket_path", str, "", "gRPC on a UNIX socket"),
    ("--rest_api_enable_cors_support", bool, False, "CORS headers on REST answers"),
    ("--enable_per_model_batching_parameters", bool, False, "batching_params.pbtxt inside SavedModels"),
    ("--num_load_threads", int, 0, "the servable loading pool"),
    ("--num_unload_threads", int, 0, "the servable unloading pool"),
    ("--max_num_load_retries", int, 5, "load retries; here a failed version is retried when its files change"),
    ("--load_retry_interval_micros", int, 60_000_000, "the pause between load retries"),
    ("--flush_filesystem_caches", bool, True, "TensorFlow filesystem caches"),
    ("--tensorflow_session_config_file", str, "", "a TensorFlow ConfigProto"),
    ("--use_alts_credentials", bool, False, "Google ALTS credentials"),
    ("--platform_config_file", str, "", "a TensorFlow PlatformConfigMap"),
    ("--saved_model_tags", str, "", "SavedModel meta graph tags"),
    ("--remove_unused_fields_from_bundle_metagraph", bool, True, "a TensorFlow memory saving"),
    ("--prefer_tflite_model", bool, False, "TF Lite models"),
    ("--use_tflite_model", bool, False, "TF Lite models (TF Serving 2.0-2.2)"),
    ("--num_tflite_pools", int, 0, "TF Lite interpreter pools (TF Serving's default: one per CPU)"),
    ("--num_tflite_interpreters_per_pool", int, 1, "TF Lite interpreters"),
    ("--xla_cpu_compilation_enabled", bool, False, "TensorFlow XLA JIT"),
    ("--xla_gpu_compilation_enabled", bool, False, "TensorFlow XLA JIT"),
    ("--enable_profiler", bool, True, "the TensorFlow profiler service"),
    ("--thread_pool_factory_config_file", str, "", "TensorFlow thread pools"),
    ("--mixed_precision", str, "", "TensorFlow bfloat16 mixed precision"),
    ("--skip_initialize_tpu", bool, False, "TPU initialisation"),
)


def _given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the flags that appear in `argv` (in any form, --noflag included)."""
    actions = parser._option_string_actions
    given = set()
    for token in argv:
        if token == "--":
            break
        action = actions.get(token.split("=", 1)[0]) if token.startswith("--") else None
        if action is not None:
            given.add(action.dest)
    return given


def _ignored_flags(args: argparse.Namespace, given: set[str]) -> list[str]:
    """What the start-up warning names: the flags given that have no meaning here."""
    ignored = [flag for flag, _, _, _ in _UNUSED_FLAGS if flag[2:] in given]
    for flag in ("--enable_grpc_healthcheck_service",):
        if flag[2:] in given and not getattr(args, flag[2:]):
            ignored.append(f"{flag}=false (always on here)")
    return ignored


# (flag, Limits field, type, unit scale, help): every limit is a flag with its default in Limits.
_LIMIT_FLAGS: tuple[tuple[str, str, type, float, str], ...] = (
    ("--max_request_rows", "max_request_rows", int, 1, "rows (batch dimension) one request may carry; with batching, max_batch_size also applies"),
    ("--max_string_bytes", "max_string_bytes", int, 1, "bytes of one string element (an encoded image, a text)"),
    ("--max_image_pixels", "max_image_pixels", int, 1, "pixels of one encoded image, read from its header before decoding"),
    ("--max_request_image_pixels", "max_request_image_pixels", int, 1, "pixels of all the encoded images of one request"),
    ("--rest_max_body_bytes", "rest_max_body_bytes", int, 1, "largest REST request body (413 beyond); 0: as --grpc_max_message_bytes"),
    ("--rest_max_json_depth", "rest_max_json_depth", int, 1, "deepest nesting of arrays and objects in a REST body"),
    ("--rest_max_inflight_bytes", "rest_max_inflight_bytes", int, 1, "REST request bodies read or parsed at once, in bytes (429 beyond)"),
    ("--rest_max_connections", "rest_max_connections", int, 1, "open REST connections (beyond: 503 and closed)"),
    ("--rest_idle_timeout_seconds", "rest_idle_timeout_seconds", float, 1, "close a REST connection that sends no complete request headers for this long"),
    ("--rest_body_timeout_seconds", "rest_body_timeout_seconds", float, 1, "a REST body must arrive within this once its headers have (408 beyond)"),
    ("--rest_api_timeout_in_ms", "rest_api_timeout_seconds", float, 1e-3, "the whole REST request, as in TF Serving (504 beyond)"),
    ("--grpc_max_concurrent_streams", "grpc_max_concurrent_streams", int, 1, "concurrent calls on one gRPC connection"),
    ("--grpc_max_concurrent_rpcs", "grpc_max_concurrent_rpcs", int, 1, "concurrent gRPC calls in the whole server (RESOURCE_EXHAUSTED beyond)"),
    ("--grpc_keepalive_seconds", "grpc_keepalive_seconds", float, 1, "ping idle gRPC connections this often; peers that do not answer are cut"),
    ("--grpc_keepalive_timeout_seconds", "grpc_keepalive_timeout_seconds", float, 1, "how long a keepalive ping may go unanswered"),
)


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits", "what one request, one connection and the server may take")
    defaults = Limits()
    for flag, name, kind, scale, help_text in _LIMIT_FLAGS:
        default = getattr(defaults, name) / scale
        group.add_argument(flag, type=kind, default=kind(default), help=f"{help_text} (default {kind(default)})")


def _limits(args: argparse.Namespace) -> Limits:
    values = {}
    for flag, name, _, scale, _ in _LIMIT_FLAGS:
        value = getattr(args, flag[2:]) * scale
        if name == "rest_max_body_bytes" and value == 0:
            value = args.grpc_max_message_bytes
        if value <= 0:
            raise ConfigError(f"{flag} must be positive")
        values[name] = type(getattr(Limits, name))(value)
    return Limits(**values)


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    """Flags -> ServerConfig; reads the config files they name. Raises ConfigError.

    `--version` prints the version and exits (status 0); a bad flag exits with status 2 (argparse).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_text())
        raise SystemExit(0)
    ignored = _ignored_flags(args, given := _given_flags(parser, argv))
    config_file = Path(args.model_config_file).resolve() if args.model_config_file else None
    if config_file is not None:
        if args.model_name or args.model_base_path:
            raise ConfigError("use either --model_config_file or --model_name/--model_base_path, not both")
        text = _read(config_file, "--model_config_file")
        models = parse_model_config_text(text, config_file.parent)
        ignored += unused_model_config_fields(text)
    elif args.model_base_path:
        models = (
            ModelConfig(name=args.model_name or "default", base_path=Path(args.model_base_path).resolve()),
        )
    else:
        raise ConfigError("nothing to serve: give --model_config_file, or --model_name and --model_base_path")

    batching = None
    if args.enable_batching:
        batching = BatchingConfig()
        if args.batching_parameters_file:
            text = _read(Path(args.batching_parameters_file), "--batching_parameters_file")
            batching = parse_batching_text(text)
            ignored += unused_batching_fields(text)
    monitoring = (
        parse_monitoring_text(_read(Path(args.monitoring_config_file), "--monitoring_config_file"))
        if args.monitoring_config_file
        else MonitoringConfig()
    )
    if args.drain_seconds < 0 or args.lame_duck_seconds < 0:
        raise ConfigError("--drain_seconds and --lame_duck_seconds must be >= 0")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.grpc_max_message_bytes < 1024:
        raise ConfigError("--grpc_max_message_bytes must be at least 1024")
    intra, inter = _engine_threads(args)
    if args.rest_api_num_threads < 0:
        raise ConfigError("--rest_api_num_threads must be >= 0")
    if args.engine_threads < 0:
        raise ConfigError("--engine_threads must be >= 0 (0: one per CPU)")
    if args.preferred_batch_size < 0:
        raise ConfigError("--preferred_batch_size must be >= 0 (0: batches fill up to max_batch_size)")
    if not 0 <= args.per_process_gpu_memory_fraction <= 1:
        raise ConfigError("--per_process_gpu_memory_fraction must be between 0.0 and 1.0")
    limits = _limits(args)
    if args.grpc_max_threads > 0 and "grpc_max_concurrent_rpcs" not in given:
        limits = replace(limits, grpc_max_concurrent_rpcs=args.grpc_max_threads)
    if args.auth_token_file:
        from serving.auth import TokenFile  # checks the file now: a bad one is a start-up error

        try:
            TokenFile(Path(args.auth_token_file))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return ServerConfig(
        models=models,
        host=args.host,
        port=args.port,
        rest_api_port=args.rest_api_port,
        backend=args.backend,
        onnx_providers=tuple(p.strip() for p in args.onnx_providers.split(",") if p.strip()),
        onnx_require_accelerator=args.onnx_require_accelerator,
        intra_op_threads=intra,
        inter_op_threads=inter,
        batching=batching,
        monitoring=monitoring,
        grpc_max_message_bytes=args.grpc_max_message_bytes,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        model_config_file_poll_wait_seconds=max(args.model_config_file_poll_wait_seconds, 0.0),
        drain_seconds=args.drain_seconds,
        lame_duck_seconds=args.lame_duck_seconds,
        model_config_file=config_file,
        tls=parse_ssl_text(_read(Path(args.ssl_config_file), "--ssl_config_file"))
        if args.ssl_config_file
        else None,
        grpc_channel_arguments=parse_channel_arguments(args.grpc_channel_arguments),
        inline_engine_micros=args.inline_engine_micros,
        engine_threads=args.engine_threads,
        tune_malloc=args.tune_malloc,
        preferred_batch_size=args.preferred_batch_size,
        workers=args.workers,
        limits=limits,
        auth_token_file=Path(args.auth_token_file).resolve() if args.auth_token_file else None,
        auth_exempt=_exempt(args.auth_exempt),
        access_log=_access_log(args.access_log),
        tracing=_tracing(args),
        rest_api_num_threads=args.rest_api_num_threads,
        enable_model_warmup=args.enable_model_warmup,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        per_process_gpu_memory_fraction=args.per_process_gpu_memory_fraction,
        enable_serialization_as_tensor_content=args.enable_serialization_as_tensor_content,
        enable_signature_method_name_check=args.enable_signature_method_name_check,
        rest_console=args.rest_console,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        ignored=tuple(ignored),
    )


def _engine_threads(args: argparse.Namespace) -> tuple[int, int]:
    """(intra-op, inter-op) engine threads, by TF Serving's rule: the two flags when either is set,
    otherwise --tensorflow_session_parallelism for both (0: auto)."""
    intra, inter = args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism
    session = args.tensorflow_session_parallelism
    if min(intra, inter, session) < 0:
        raise ConfigError("engine thread counts must be >= 0")
    if intra > 0 and inter > 0 and session > 0:
        raise ConfigError(
            "Either configure --tensorflow_session_parallelism or (--tensorflow_intra_op_parallelism, "
            "--tensorflow_inter_op_parallelism) separately. You cannot configure all."
        )
    if intra > 0 or inter > 0:
        return intra, inter
    return session, session


def version_text() -> str:
    """What `--version` prints, in TF Serving's two-line form."""
    from importlib import metadata

    from serving import __version__

    try:
        engine = f"ONNX Runtime {metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:
        engine = "ONNX Runtime not installed"
    return f"TensorFlow ModelServer: {__version__} (model-serving, a TF Serving drop-in)\nEngine: {engine}"


def log_ignored(config: ServerConfig) -> None:
    """The one start-up warning naming what was accepted but has no meaning here (if anything)."""
    if config.ignored:
        logging.getLogger("serving").warning(
            "accepted for TF Serving compatibility but not used here: %s", ", ".join(config.ignored)
        )


_EXEMPTABLE = ("health", "metrics", "status")


def _exempt(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(names) - set(_EXEMPTABLE))
    if unknown:
        raise ConfigError(f"--auth_exempt: unknown endpoint(s) {unknown}; known: {list(_EXEMPTABLE)}")
    return names


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from exc
