"""Server lifecycle: build the parts from a `ServerConfig`, start both ports, load models, drain.

Start-up order matters to Kubernetes: both ports listen at once (so probes connect), health says
NOT_SERVING until every configured model has an AVAILABLE, warmed-up version, then SERVING. With
`--workers N`, readiness is shared: every worker answers SERVING only once all N are ready.

Shutdown (SIGTERM or SIGINT) loses no request the server accepted:
1. health turns NOT_SERVING at once, so load balancers and probes stop routing here;
2. for `--lame_duck_seconds` the server keeps serving normally, for clients still routed to it while
   endpoint lists catch up (in Kubernetes the Deployment's `preStop` sleep plays this part instead,
   see k8s/base/deployment.yaml);
3. then new requests are refused with UNAVAILABLE (HTTP 503), which clients retry elsewhere, while
   every request already admitted runs to its answer, for up to `--drain_seconds`;
4. only then do the ports close and the engines unload; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from grpc_health.v1 import health, health_pb2

from serving.accesslog import Telemetry, telemetry_from_config
from serving.admission import Admission
from serving.auth import TokenFile
from serving.backends import BackendOptions, runtime_info
from serving.config import ConfigError, ServerConfig
from serving.dataplane import DataPlane
from serving.metrics import Metrics
from serving.preprocess import PreprocessLimits
from serving.protocol import Services
from serving.protocol.grpc.server import READINESS_SERVICES, HealthServicer, create_server
from serving.protocol.rest import console
from serving.protocol.rest.app import RestApi
from serving.protocol.rest.guard import GuardedSite, ssl_context
from serving.reload import ConfigReloader, poll_config_file
from serving.repository import ModelVersion, Repository, State, available_cpus
from serving.warmup import WarmupSettings

log = logging.getLogger(__name__)

# Health service name for liveness probes: SERVING from start to shutdown, whatever the models do,
# so an empty or half-published model repository makes pods unready, never restarts them.
LIVENESS_SERVICE = "liveness"
# With --workers, how often a worker looks at the others' readiness.
WORKER_READINESS_SECONDS = 0.1
# After the drain, how long the transports get to finish writing (answers are computed by then).
CLOSE_GRACE_SECONDS = 1.0
# The ports close once no request (admitted or refused) has arrived for this long, so no call is in
# transit when gRPC core shuts the transport (it would cancel it: CANCELLED, not retried by clients).
QUIET_SECONDS = 0.1
QUIET_MAX_SECONDS = 1.0  # callers that retry here in a loop do not hold the shutdown longer than this

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness(Protocol):
    """Where a server publishes its own readiness and reads the whole group's (see `workers`)."""

    def publish(self, ready: bool) -> None: ...

    def all_ready(self) -> bool: ...


class LocalReadiness:
    """One process: ready is this process's own readiness."""

    def __init__(self) -> None:
        self._ready = False

    def publish(self, ready: bool) -> None:
        self._ready = ready

    def all_ready(self) -> bool:
        return self._ready


def engine_thread_count(config: ServerConfig, cpus: int) -> int:
    """`--engine_threads`, or one per CPU; with batching at least one per batch thread."""
    threads = config.engine_threads or cpus
    if config.batching is not None:  # each batch thread may hold an engine call
        threads = max(threads, config.batching.num_batch_threads)
    return max(1, threads)


@dataclass(frozen=True)
class Pools:
    """The server's threads besides the event loop and gRPC's own.

    `engine`: engine calls too slow for the event loop (see `--inline_engine_micros`), batches, and
    input preparation (image decoding, tokenizing). One thread per CPU by default: each call runs
    ONNX Runtime on one intra-op thread, so more threads than CPUs only take turns on them, evicting
    each other's activations from the caches (2-core VM, interleaved rounds: 4 threads against 2,
    catdog float 645 against 685 req/s, 32 digits per request 872 against 946). `load`: version
    loads and warm-ups, apart so that a hot swap never takes an engine thread from the requests.
    """

    engine: ThreadPoolExecutor
    load: ThreadPoolExecutor

    @classmethod
    def for_config(cls, config: ServerConfig) -> Pools:
        cpus = available_cpus()
        return cls(
            ThreadPoolExecutor(max_workers=engine_thread_count(config, cpus), thread_name_prefix="engine"),
            ThreadPoolExecutor(max_workers=max(2, min(cpus, 8)), thread_name_prefix="load"),
        )

    def shutdown(self) -> None:
        for pool in (self.engine, self.load):
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(kw_only=True)
class RunningServer:
    config: ServerConfig
    services: Services
    grpc_server: grpc.aio.Server
    grpc_port: int
    rest_runner: web.AppRunner | None
    rest_port: int
    pools: Pools
    readiness: Readiness
    telemetry: Telemetry | None = None  # the access log and tracing, closed last
    stopping: bool = False
    locally_ready: bool = False  # this process's own models
    serving: bool | None = None  # what health last reported
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def health(self) -> health.aio.HealthServicer:
        return self.services.health

    async def refresh_health(self) -> None:
        """Readiness: SERVING only while every model (of every worker) is available and not stopping."""
        local = self.services.repository.all_available() and not self.stopping
        if local and not self.locally_ready:  # logged before it is published: tests can rely on it
            log.info("all models available%s", "; waiting for the other workers" if self.config.workers > 1 else "")
        self.locally_ready = local
        self.readiness.publish(local)
        ready = local and self.readiness.all_ready()
        if ready != self.serving:
            for service in READINESS_SERVICES:
                await self.health.set(service, _SERVING if ready else _NOT_SERVING)
            if ready:
                log.info("health SERVING")
            elif self.serving is not None:
                log.info("health NOT_SERVING%s", " (stopping)" if self.stopping else "")
            self.serving = ready

    async def stop(self) -> None:
        """Drain and stop (see the module docstring for the order)."""
        config, admission = self.config, self.services.admission
        self.stopping = True
        await self.refresh_health()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if config.lame_duck_seconds > 0:
            log.info("lame duck: still serving for %.1fs while clients move away", config.lame_duck_seconds)
            await asyncio.sleep(config.lame_duck_seconds)
        admission.close()
        log.info(
            "draining: refusing new requests; waiting up to %.1fs for %d in flight",
            config.drain_seconds,
            admission.in_flight,
        )
        deadline = time.monotonic() + config.drain_seconds
        if not await admission.wait_idle(config.drain_seconds):
            log.warning(
                "%d requests still in flight after %.1fs; stopping anyway", admission.in_flight, config.drain_seconds
            )
        elif not await admission.wait_quiet(
            QUIET_SECONDS, min(QUIET_MAX_SECONDS, max(deadline - time.monotonic(), 0.0))
        ):
            log.info("callers still arriving at the end of the drain: closing the ports anyway")
        stops = [self.grpc_server.stop(CLOSE_GRACE_SECONDS)]
        if self.rest_runner is not None:
            stops.append(self.rest_runner.cleanup())
        await asyncio.gather(*stops)
        # Requests refused while the ports closed may still be unwinding; let them finish.
        await admission.wait_idle(CLOSE_GRACE_SECONDS)
        await self.services.repository.close()
        self.pools.shutdown()
        if self.telemetry is not None:  # the last lines and spans are written before the process exits
            await asyncio.get_running_loop().run_in_executor(None, self.telemetry.close)


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs a traceback at ERROR for every malformed HTTP request it answers 400 (a bad
    request line, a header too long): the client's fault, already answered, and a flood of them
    would flood the log. Those records are dropped; every other aiohttp error is kept.

    One kind is a mistake worth telling the operator about: HTTP/2 (a gRPC client) sent to the REST
    port. It becomes one warning line naming the gRPC port, at most once a minute."""

    HTTP2_EVERY_SECONDS = 60.0

    def __init__(self, grpc_port: int) -> None:
        super().__init__()
        self.grpc_port = grpc_port
        self.http2_logged_at = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        if "PRI" not in str(error) or time.monotonic() - self.http2_logged_at < self.HTTP2_EVERY_SECONDS:
            return False
        self.http2_logged_at = time.monotonic()
        record.msg, record.args, record.exc_info, record.exc_text = (
            "HTTP/2 (a gRPC client?) arrived on the REST port and got 400: gRPC is served on port %d",
            (self.grpc_port,),
            None,
            None,
        )
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


async def start(
    config: ServerConfig, readiness: Readiness | None = None, telemetry: Telemetry | None = None
) -> RunningServer:
    """Start listening and load the models; returns once every model has been tried once.

    `telemetry`: the access log and tracing to use instead of those the config asks for (tests
    give one with an in-memory span exporter).
    """
    aiohttp_server_log = logging.getLogger("aiohttp.server")
    http_filter = next((f for f in aiohttp_server_log.filters if isinstance(f, _MalformedHttpFilter)), None)
    if http_filter is None:
        http_filter = _MalformedHttpFilter(config.port)
        aiohttp_server_log.addFilter(http_filter)
    metrics = Metrics(
        (model.name for model in config.models),
        runtime="onnxruntime" if config.backend == "onnx" else config.backend,
        batching=config.batching is not None,
    )
    pools = Pools.for_config(config)
    options = BackendOptions(
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        providers=config.onnx_providers,
        require_accelerator=config.onnx_require_accelerator,
        gpu_memory_fraction=config.per_process_gpu_memory_fraction,
        preprocess=PreprocessLimits(config.limits.max_image_pixels, config.limits.max_request_image_pixels),
    )
    repository = Repository(
        config.models, config.backend, options, pools.load, unload_timeout_seconds=config.drain_seconds
    )

    def on_change(version: ModelVersion) -> None:
        metrics.model_state.labels(version.name, str(version.version)).set(int(version.state))
        if version.backend is not None:
            info = runtime_info(version.backend)
            labels = (version.name, str(version.version), info["backend"], ",".join(info.get("providers", ())))
            metrics.model_runtime.labels(*labels).set(1 if version.state == State.AVAILABLE else 0)

    repository.on_change = on_change
    repository.warmup = WarmupSettings(
        enabled=config.enable_model_warmup,
        iterations=max(1, config.num_request_iterations_for_warmup),
        observe=metrics.observe_warmup,
        signature_method_name_check=config.enable_signature_method_name_check,
    )
    dataplane = DataPlane(
        repository,
        metrics,
        pools.engine,
        config.batching,
        max_tensor_bytes=config.grpc_max_message_bytes,
        inline_engine_seconds=config.inline_engine_micros / 1e6,
        limits=config.limits,
        signature_method_name_check=config.enable_signature_method_name_check,
        preferred_batch_size=config.preferred_batch_size,
    )
    tokens = TokenFile(config.auth_token_file) if config.auth_token_file else None
    # HandleReloadConfigRequest and the config file poll: relative base paths are read from the
    # config file's folder, as at start-up.
    reloader = ConfigReloader(
        repository,
        metrics,
        relative_to=config.model_config_file.parent if config.model_config_file else None,
        workers=config.workers,
        allow_unavailable_labels=config.allow_version_labels_for_unavailable_models,
    )
    services = Services(
        dataplane,
        repository,
        metrics,
        Admission(),
        HealthServicer(None if "health" in config.auth_exempt else tokens),
        auth=tokens,
        auth_exempt=config.auth_exempt,
        reloader=reloader,
    )
    if tokens is not None:
        log.info("bearer tokens required (%d loaded); exempt: %s", tokens.count, ", ".join(config.auth_exempt) or "nothing")

    if telemetry is None:
        telemetry = telemetry_from_config(config)
    try:
        grpc_server, grpc_port = create_server(services, config, telemetry)
    except RuntimeError as exc:  # grpc's "Failed to bind to address ...": one line, not a traceback
        pools.shutdown()
        raise OSError(
            f"gRPC port {config.host}:{config.port} cannot be bound (in use by another server?); "
            "pick another with --port"
        ) from exc
    await grpc_server.start()
    http_filter.grpc_port = grpc_port  # the bound one (--port 0 picks it)
    log.info("gRPC listening on %s:%d%s", config.host, grpc_port, " (TLS)" if config.tls else "")

    runner, rest_port = None, -1
    if config.rest_api_port >= 0:
        api = RestApi(
            services,
            config.monitoring,
            config.limits,
            parse_threads=config.rest_api_num_threads or 1,
            telemetry=telemetry,
        )
        rest_app = api.app()
        if config.rest_console:
            console.add_routes(rest_app, repository)  # GET / on the REST port
        runner = web.AppRunner(
            rest_app,
            access_log=None,
            shutdown_timeout=2.0,
            # The keep-alive timer runs from the moment a connection opens: it is the header timeout too.
            keepalive_timeout=config.limits.rest_idle_timeout_seconds,
        )
        await runner.setup()
        site = GuardedSite(
            runner,
            config.host,
            config.rest_api_port,
            max_connections=_connection_cap(config.limits.rest_max_connections),
            reuse_port=config.workers > 1 or None,
            ssl_context=ssl_context(config.tls) if config.tls else None,
        )
        try:
            await site.start()
        except OSError as exc:
            await grpc_server.stop(0)
            await runner.cleanup()
            pools.shutdown()
            raise OSError(
                f"REST port {config.host}:{config.rest_api_port} cannot be bound ({exc.strerror or exc}); "
                "pick another with --rest_api_port"
            ) from exc
        rest_port = runner.addresses[0][1]
        log.info("REST listening on %s:%d%s", config.host, rest_port, " (TLS)" if config.tls else "")

    running = RunningServer(
        config=config,
        services=services,
        grpc_server=grpc_server,
        grpc_port=grpc_port,
        rest_runner=runner,
        rest_port=rest_port,
        pools=pools,
        readiness=readiness or LocalReadiness(),
        telemetry=telemetry,
    )
    reloader.after = running.refresh_health
    await running.refresh_health()
    await services.health.set(LIVENESS_SERVICE, _SERVING)
    await repository.sync()
    if not config.allow_version_labels_for_unavailable_models and (refused := repository.unavailable_labels()):
        # TF Serving refuses such a config at start (its server does not start); so does this one.
        await running.stop()
        raise ConfigError(
            "; ".join(refused) + " (--allow_version_labels_for_unavailable_models=true allows it)"
        )
    if not repository.all_available():
        for model in repository.models.values():
            if not any(v.state == State.AVAILABLE for v in model.versions.values()):
                log.error("model '%s' has no available version: %s", model.config.name, repository.why_not_available(model))
        log.error("some models have no available version; health stays NOT_SERVING until they do")
    await running.refresh_health()
    if config.file_system_poll_wait_seconds > 0:
        running.tasks.append(asyncio.create_task(_poll(running, config.file_system_poll_wait_seconds)))
    if config.model_config_file is not None and config.model_config_file_poll_wait_seconds > 0:
        running.tasks.append(
            asyncio.create_task(
                poll_config_file(reloader, config.model_config_file, config.model_config_file_poll_wait_seconds)
            )
        )
    if config.workers > 1:
        running.tasks.append(asyncio.create_task(_watch_workers(running)))
    return running


FILE_DESCRIPTOR_RESERVE = 256  # for model files, gRPC connections, logs: kept out of the REST cap


def _connection_cap(wanted: int) -> int:
    """The REST connection cap the process can honour: the soft file-descriptor limit is raised to
    the hard one, and the cap lowered (with a warning) if it would still not leave a reserve."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed
        return wanted
    if soft == resource.RLIM_INFINITY or wanted + FILE_DESCRIPTOR_RESERVE <= soft:
        return wanted
    cap = max(soft - FILE_DESCRIPTOR_RESERVE, 1)
    log.warning("--rest_max_connections %d needs more file descriptors than the limit of %d: using %d", wanted, soft, cap)
    return cap


async def _poll(running: RunningServer, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await running.services.repository.sync()
        except Exception:
            log.exception("model repository poll failed; will retry")
        await running.refresh_health()


async def _watch_workers(running: RunningServer) -> None:
    """With --workers: follow the other workers' readiness (they publish it in shared memory)."""
    while True:
        await asyncio.sleep(WORKER_READINESS_SECONDS)
        await running.refresh_health()


async def serve(config: ServerConfig, readiness: Readiness | None = None) -> None:
    if config.tune_malloc:
        from serving.malloc import tune_malloc

        log.info("%s", tune_malloc())
    running = await start(config, readiness)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (signal received)")
    await running.stop()
    log.info("stopped")
