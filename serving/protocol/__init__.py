"""Wire protocols in front of the data plane: `grpc/` (TF Serving's gRPC API) and `rest/` (its REST API).

`Services` is what every protocol handler is built from: the one data plane, the repository (for
status), the metrics, the admission counter (for draining), the health servicer and, when
`--auth_token_file` is given, the tokens every request must carry one of.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpc_health.v1 import health

from serving.admission import Admission
from serving.auth import TokenFile
from serving.dataplane import DataPlane
from serving.metrics import Metrics
from serving.reload import ConfigReloader
from serving.repository import Repository


@dataclass(frozen=True)
class Services:
    dataplane: DataPlane
    repository: Repository
    metrics: Metrics
    admission: Admission
    health: health.aio.HealthServicer
    auth: TokenFile | None = None
    auth_exempt: tuple[str, ...] = ("health", "metrics")
    reloader: ConfigReloader | None = None  # HandleReloadConfigRequest (None: not offered)

    def tokens_for(self, *apis: str) -> dict[str, TokenFile]:
        """{api: the tokens it requires} for those of `apis` that require one ("status" exempts
        model status and metadata, "health" the health checks, "metrics" the Prometheus path)."""
        if self.auth is None:
            return {}
        exempt = set(self.auth_exempt)
        if "status" in exempt:
            exempt.add("metadata")
        return {api: self.auth for api in apis if api not in exempt}
