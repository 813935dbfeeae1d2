"""Container health probe: ask the server's ``grpc.health.v1.Health`` service whether it is SERVING.

Used by the images' ``HEALTHCHECK`` (Docker, Compose). Kubernetes does not need it: its native gRPC
probes call the same service. The server answers SERVING only once its models are loaded and warmed,
so "healthy" here means "ready for traffic".

Exit status: 0 when the service reports SERVING, 1 for any other status, an RPC error or a timeout.
Only ``grpcio`` and ``grpcio-health-checking`` are needed, both already in the serving image.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(target: str, service: str = "", timeout_s: float = 3.0) -> bool:
    """Return True when ``Health.Check(service)`` on ``target`` answers SERVING within the timeout."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return False
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: status {status_name}", file=sys.stderr)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, probe once and return the exit status (0 healthy, 1 not)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default: %(default)s)")
    parser.add_argument("--service", default="", help="health service name; '' means the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    return 0 if is_serving(f"{args.host}:{args.port}", args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
