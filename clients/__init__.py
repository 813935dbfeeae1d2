"""Client library and `ml-client` CLI for the model server (TF Serving's gRPC and REST APIs, and
the Open Inference Protocol).

`GrpcClient` and `RestClient` (TF Serving's API), `V2GrpcClient` and `V2RestClient` (KServe V2)
mirror each other method for method; every failure is a `ClientError`.
"""

from clients.errors import ClientError
from clients.grpc_client import GrpcClient
from clients.rest_client import RestClient
from clients.v2_client import V2GrpcClient, V2RestClient

__all__ = ["ClientError", "GrpcClient", "RestClient", "V2GrpcClient", "V2RestClient"]
