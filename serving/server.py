"""Server lifecycle: build the parts from a `ServerConfig`, start both ports, load models, drain.

Start-up order matters to Kubernetes: both ports listen at once (so probes connect), health says
NOT_SERVING until every configured model has an AVAILABLE, warmed-up version, then SERVING. On
SIGTERM health flips back to NOT_SERVING, in-flight requests get `drain_seconds` to finish, and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from serving.backends.base import BackendOptions
from serving.config import ServerConfig
from serving.dataplane import DataPlane
from serving.metrics import Metrics
from serving.protocol.grpc.server import SERVICE_NAMES, create_server
from serving.protocol.rest.app import RestApi
from serving.repository import ModelVersion, Repository

log = logging.getLogger(__name__)

# Health service name for liveness probes: SERVING from start to shutdown, whatever the models do,
# so an empty or half-published model repository makes pods unready, never restarts them.
LIVENESS_SERVICE = "liveness"


@dataclass
class RunningServer:
    grpc_server: grpc.aio.Server
    grpc_port: int
    rest_runner: web.AppRunner | None
    rest_port: int
    health: health.aio.HealthServicer
    repository: Repository
    dataplane: DataPlane
    executor: ThreadPoolExecutor
    poller: asyncio.Task[None] | None = None

    async def set_serving(self, serving: bool) -> None:
        """Readiness: "" and the TF Serving services are SERVING only while every model is available."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *SERVICE_NAMES[:2]):
            await self.health.set(service, status)

    async def stop(self, drain_seconds: float) -> None:
        await self.set_serving(False)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.poller is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        stops = [self.grpc_server.stop(drain_seconds)]
        if self.rest_runner is not None:
            stops.append(self.rest_runner.cleanup())
        await asyncio.gather(*stops)
        await self.dataplane.close()
        await self.repository.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def start(config: ServerConfig) -> RunningServer:
    """Start listening and load the models; returns once every model has been tried once."""
    metrics = Metrics(model.name for model in config.models)
    workers = max(4, (config.batching.num_batch_threads if config.batching else 0) + 2)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
    options = BackendOptions(
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        providers=config.onnx_providers,
    )
    repository = Repository(config.models, config.backend, options, executor)

    def on_change(version: ModelVersion) -> None:
        metrics.model_state.labels(version.name, str(version.version)).set(int(version.state))

    repository.on_change = on_change
    dataplane = DataPlane(
        repository,
        metrics,
        executor,
        config.batching,
        max_tensor_bytes=config.grpc_max_message_bytes,
        inline_engine_seconds=config.inline_engine_micros / 1e6,
    )

    grpc_server, grpc_port, health_servicer = create_server(
        dataplane,
        repository,
        metrics,
        f"{config.host}:{config.port}",
        config.grpc_max_message_bytes,
        config.tls,
        config.grpc_channel_arguments,
        reuse_port=config.workers > 1,
    )
    await grpc_server.start()
    log.info("gRPC listening on %s:%d%s", config.host, grpc_port, " (TLS)" if config.tls else "")

    runner, rest_port = None, -1
    if config.rest_api_port >= 0:
        api = RestApi(dataplane, repository, metrics, config.monitoring)
        runner = web.AppRunner(api.app(config.grpc_max_message_bytes), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.rest_api_port, reuse_port=config.workers > 1 or None)
        await site.start()
        rest_port = runner.addresses[0][1]
        log.info("REST listening on %s:%d", config.host, rest_port)

    running = RunningServer(
        grpc_server, grpc_port, runner, rest_port, health_servicer, repository, dataplane, executor
    )
    await running.set_serving(False)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await repository.sync()
    if repository.all_available():
        await running.set_serving(True)
        log.info("all models available: health SERVING")
    else:
        log.error("some models have no available version; health stays NOT_SERVING until they do")
    if config.file_system_poll_wait_seconds > 0:
        running.poller = asyncio.create_task(_poll(running, config.file_system_poll_wait_seconds))
    return running


async def _poll(running: RunningServer, interval: float) -> None:
    was_ready = running.repository.all_available()
    while True:
        await asyncio.sleep(interval)
        try:
            await running.repository.sync()
        except Exception:
            log.exception("model repository poll failed; will retry")
        ready = running.repository.all_available()
        if ready != was_ready:
            await running.set_serving(ready)
            was_ready = ready


async def serve(config: ServerConfig) -> None:
    running = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", config.drain_seconds)
    await running.stop(config.drain_seconds)
    log.info("stopped")
