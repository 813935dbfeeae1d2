"""What protects the REST port from clients that are slow, many or hostile, below the handlers.

- **Connections** are capped (`--rest_max_connections`): past the cap a new connection gets one
  `503 Service Unavailable` with `Retry-After` and is closed, so idle or slow clients cannot take
  every file descriptor of the process.
- **Idle and slow headers**: aiohttp's keep-alive timer starts when a connection opens and closes it
  when no complete request has arrived by then, so `--rest_idle_timeout_seconds` is both the idle
  timeout and the header timeout: a client sending its headers a byte a second is cut when it runs
  out (aiohttp's own default is an hour).
- **TLS** for REST from the same `SSLConfig` as gRPC (`--ssl_config_file`), mutual TLS included.

Body timeouts, bytes in flight and bearer tokens are per request and live in the app's middleware.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from pathlib import Path

from aiohttp import web

from serving.config import TlsConfig

log = logging.getLogger(__name__)

_REFUSAL_BODY = b'{"error": "too many connections to this server; retry later"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Refusal(asyncio.Protocol):
    """A connection over the cap: answered 503 at once and closed, without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_REFUSAL)
        transport.close()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are capped at `max_connections` (see the module docstring)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, max_connections: int, **kwargs: object) -> None:
        super().__init__(runner, host, port, **kwargs)  # type: ignore[arg-type]
        self.max_connections = max_connections
        self.refused = 0
        self._warned = False

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                if not self._warned:  # once: a flood of these must not flood the log too
                    log.warning("REST connections at the limit of %d: refusing new ones with 503", self.max_connections)
                    self._warned = True
                return _Refusal()
            self._warned = False
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server-side TLS context from TF Serving's SSLConfig (PEM contents, not file names).

    `ssl` loads a certificate chain only from files, so key and certificate are written to a private
    temporary folder (mode 0700, removed at once)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="serving-tls-") as folder:
        key, cert = Path(folder) / "server.key", Path(folder) / "server.crt"
        for path, pem in ((key, tls.server_key), (cert, tls.server_cert)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(pem)
        context.load_cert_chain(cert, key)
    if tls.custom_ca:
        context.load_verify_locations(cadata=tls.custom_ca.decode())
    context.verify_mode = ssl.CERT_REQUIRED if tls.client_verify else ssl.CERT_NONE
    return context
