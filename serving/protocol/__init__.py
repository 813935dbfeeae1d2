"""Wire protocols in front of the data plane: `grpc/` (TF Serving's gRPC API) and `rest/` (its REST API).

`Services` is what every protocol handler is built from: the one data plane, the repository (for
status), the metrics, the admission counter (for draining) and the health servicer.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc_health.v1 import health

from serving.admission import Admission
from serving.dataplane import DataPlane
from serving.metrics import Metrics
from serving.repository import Repository


@dataclass(frozen=True)
class Services:
    dataplane: DataPlane
    repository: Repository
    metrics: Metrics
    admission: Admission
    health: health.aio.HealthServicer
