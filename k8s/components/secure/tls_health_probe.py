"""Kubernetes exec probe for a server started with --ssl_config_file: grpc.health.v1 over TLS.

The kubelet's native gRPC probe speaks plaintext only, so with TLS on the gRPC port the secure
component runs this inside the server container instead (mounted from a ConfigMap; the image's
own Python, grpcio and `serving` package do the work). It reads the same SSLConfig file the server
reads, with the server's own parser, and asks 127.0.0.1 the same health services as the native
probes: "" (SERVING once every model is loaded; readiness) or "liveness" (SERVING while the
process runs; start-up and liveness).

The server certificate is checked against `custom_ca` when the SSLConfig has one, else against the
certificate itself (self-signed), for the name given by --server_name (a name the certificate
carries: the Service's DNS name, which in-cluster clients check too). With `client_verify` the
probe presents the server's own certificate and key, so issue that certificate for client
authentication too (or with no extended key usage at all). Health is exempt from bearer tokens by
default (--auth_exempt); --token_file is for servers where it is not.

Exit status: 0 when the service answers SERVING, 1 otherwise (the reason goes to stderr, which the
kubelet shows in the pod's events).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssl_config_file", required=True, help="the server's SSLConfig text file")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port on 127.0.0.1")
    parser.add_argument("--service", default="", help="health service: '' (ready) or 'liveness'")
    parser.add_argument(
        "--server_name", default="model-server.model-serving.svc", help="a DNS name of the certificate"
    )
    parser.add_argument("--token_file", default=None, help="bearer tokens, one per line (first one used)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.config import parse_ssl_text

    try:
        tls = parse_ssl_text(Path(args.ssl_config_file).read_text())
        metadata = []
        if args.token_file:
            lines = Path(args.token_file).read_text().splitlines()
            tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            metadata.append(("authorization", f"Bearer {tokens[0]}"))
    except (OSError, ValueError, IndexError) as error:
        print(f"unhealthy: cannot read the probe's files: {error}", file=sys.stderr)
        return 1
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.custom_ca or tls.server_cert,
        private_key=tls.server_key if tls.client_verify else None,
        certificate_chain=tls.server_cert if tls.client_verify else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(f"127.0.0.1:{args.port}", credentials, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            request = health_pb2.HealthCheckRequest(service=args.service)
            response = stub.Check(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        print(f"unhealthy: health service {args.service!r} is {name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
