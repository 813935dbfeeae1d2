"""Client library and `ml-client` CLI for the model server (TF Serving's gRPC and REST APIs).

`GrpcClient` and `RestClient` mirror each other method for method; every failure is a `ClientError`.
"""

from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient

__all__ = ["ClientError", "GrpcClient", "RestClient"]
