"""`--workers N`: N server processes sharing the gRPC and REST ports through SO_REUSEPORT.

One Python process serves about one core's worth of requests (the request path runs on its event
loop), so on a many-core node several processes share the ports and the kernel spreads connections
over them. Each worker loads every model; readiness is shared (`SharedReadiness`, one byte per
worker in shared memory), so whichever worker a probe reaches answers SERVING only once every
worker is ready, and NOT_SERVING as soon as one stops. Metrics are merged across workers
(prometheus_client's multiprocess mode). The parent only starts the workers,
forwards SIGTERM/SIGINT to them, and exits with the worst status once all have stopped; if one
worker dies, the others are stopped too, so the orchestrator restarts the whole pod.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any

from serving.config import ServerConfig

log = logging.getLogger(__name__)


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) with SO_REUSEPORT so port 0 becomes one free port all workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


class SharedReadiness:
    """One flag per worker in shared memory (written by its worker, read by all)."""

    def __init__(self, flags: Any, index: int) -> None:
        self._flags = flags  # multiprocessing.Array("b", workers, lock=False)
        self._index = index

    def publish(self, ready: bool) -> None:
        self._flags[self._index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return all(self._flags)


def _worker(config: ServerConfig, index: int, flags: Any) -> None:
    import asyncio

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from serving.server import serve

    try:
        asyncio.run(serve(config, SharedReadiness(flags, index)))
    except OSError as exc:
        logging.getLogger("serving").error("cannot start: %s", exc)
        sys.exit(1)


def run_workers(config: ServerConfig) -> int:
    grpc_socket, grpc_port = _reserve_port(config.host, config.port)
    reserved = [grpc_socket]
    rest_port = config.rest_api_port
    if rest_port >= 0:
        rest_socket, rest_port = _reserve_port(config.host, rest_port)
        reserved.append(rest_socket)
    config = replace(config, port=grpc_port, rest_api_port=rest_port)
    metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers
    context = multiprocessing.get_context("spawn")
    flags = context.Array("b", config.workers, lock=False)  # readiness, one byte per worker
    workers = [
        context.Process(target=_worker, args=(config, i, flags), name=f"worker-{i}")
        for i in range(config.workers)
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for worker in workers:
            worker.start()
        log.info("started %d workers on gRPC port %d", len(workers), config.port)
        for sock in reserved:
            sock.close()
        from prometheus_client import multiprocess

        pending = {process.sentinel: process for process in workers}
        while pending:
            for sentinel in wait(list(pending)):
                ended = pending.pop(sentinel)  # type: ignore[arg-type]
                ended.join()
                multiprocess.mark_process_dead(ended.pid)
                if not stopping:
                    log.error("%s exited with %s: stopping the others", ended.name, ended.exitcode)
                    stop(signal.SIGTERM, None)
        codes = [process.exitcode or 0 for process in workers]
        return 0 if all(code == 0 for code in codes) and stopping else max(1, *codes)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
