"""Locust users for the model server, real samples, every signature, in both of its protocols:

- TF Serving's API: `GrpcUser` (Predict) and `RestUser` (`/v1/models/<m>:predict`, JSON);
- the Open Inference Protocol (KServe V2): `V2GrpcUser` (ModelInfer, raw tensors), `V2RestUser`
  (`/v2/models/<m>/infer` with binary tensor data, `tritonclient.http`'s default) and
  `V2RestJsonUser` (the same in JSON `data`).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8501            # web UI, both users
    locust -f loadtests/locustfile.py,loadtests/shapes.py --headless --shape step --p99-ms 200 \
        --host http://127.0.0.1:8501 -u 40 -t 2m GrpcUser                     # gRPC only, step shape

At test start each load-generating process asks the server which of `--models` it serves (status +
metadata) and builds one weighted call per signature from real samples (`loadtests.workload`):
explain signatures weigh 1, the others 3. Requests are named `<model>:<signature>`; their type says
the user: `grpc`, `POST` (TF Serving's REST), `v2-grpc`, `v2-rest`, `v2-rest-json`. Name the users
to run on the command line (`GrpcUser RestUser`); without names Locust runs all five. `--host` is the REST URL; the gRPC target defaults to the same
host on port 8500 (`--grpc-target` to change it, e.g. `dns:///model-server-headless:8500`).
Against a server with `--auth_token_file`, give the bearer token with `--token` / `$LOADTEST_TOKEN`
or `--token-file` / `$LOADTEST_TOKEN_FILE`; both users send it on every request. Load users never
retry: a refused request counts as a failure, not as a slower success.
"""

from __future__ import annotations

# gRPC's own threads must cooperate with gevent: this has to run before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import logging  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, ClassVar  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import MasterRunner  # noqa: E402

try:  # `locust -f .../loadtests/locustfile.py` puts loadtests/ on sys.path, not the repository root
    import clients  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.auth import HTTP_HEADER, authorization_value, check_token, read_token_file  # noqa: E402
from clients.base import Client  # noqa: E402
from clients.errors import ClientError  # noqa: E402
from clients.grpc_client import GrpcClient  # noqa: E402
from clients.rest_client import RestClient  # noqa: E402
from clients.v2_client import (  # noqa: E402
    HEADER_LENGTH,
    SIGNATURE_PARAMETER,
    V2GrpcClient,
    decode_infer_answer,
    encode_infer_body,
)
from loadtests.workload import DEFAULT_MODELS, Call, build_plan, default_data_dir, load_samples  # noqa: E402
from serving import codec  # noqa: E402

log = logging.getLogger("loadtests")

GRPC_PORT = 8500
REQUEST_TIMEOUT_S = 30.0


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("model server")
    group.add_argument(
        "--grpc-target",
        default="",
        env_var="LOCUST_GRPC_TARGET",
        help="gRPC target (default: the --host name on port 8500)",
    )
    group.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        env_var="LOCUST_MODELS",
        help="models to load if served (comma-separated)",
    )
    group.add_argument(
        "--data-dir",
        default="",
        env_var="LOCUST_DATA_DIR",
        help="samples folder in the layout of ../shared/data (default: $DATA_DIR or ../shared/data)",
    )
    group.add_argument(
        "--token",
        default="",
        env_var="LOADTEST_TOKEN",
        help="bearer token for a server started with --auth_token_file",
    )
    group.add_argument(
        "--token-file",
        default="",
        env_var="LOADTEST_TOKEN_FILE",
        help="file holding the bearer token (instead of --token)",
    )
    group.add_argument("--sample-limit", type=int, default=2000, help="samples read per kind")
    group.add_argument(
        "--think-ms",
        type=float,
        default=50.0,
        env_var="LOCUST_THINK_MS",
        help="mean wait between a user's requests, uniform in [0, 2x] (0: none)",
    )
    group.add_argument(
        "--max-requests",
        type=int,
        default=0,
        env_var="LOCUST_MAX_REQUESTS",
        help="stop after this many requests per load-generating process (0: no limit)",
    )
    group.add_argument(
        "--shape",
        choices=("steady", "step", "spike"),
        default="steady",
        help="load profile when loadtests/shapes.py is loaded",
    )
    group.add_argument(
        "--p99-ms", type=float, default=0.0, help="p99 limit in ms (step shape: stop when crossed)"
    )
    group.add_argument("--step-users", type=int, default=0, help="users added per step (default users/5)")
    group.add_argument(
        "--step-seconds", type=float, default=0.0, help="seconds per step (default run time / steps, >= 10)"
    )


class Workload:
    """The calls of this process, built once at test start (users of both kinds share them)."""

    calls: ClassVar[list[Call]] = []
    weights: ClassVar[list[int]] = []
    grpc_target: ClassVar[str] = ""
    token: ClassVar[str | None] = None
    requests: ClassVar[int] = 0
    environment: ClassVar[Environment | None] = None

    @classmethod
    def choose(cls, rng: random.Random) -> Call:
        return rng.choices(cls.calls, weights=cls.weights)[0]


def grpc_target_of(options: Any, host: str | None) -> str:
    if getattr(options, "grpc_target", ""):
        return str(options.grpc_target)
    hostname = urlsplit(host).hostname if host else None
    return f"{hostname or '127.0.0.1'}:{GRPC_PORT}"


def token_of(options: Any) -> str | None:
    """The bearer token from --token or --token-file (None: send none); ClientError when unusable."""
    token = str(getattr(options, "token", "") or "").strip()
    token_file = str(getattr(options, "token_file", "") or "")
    if token and token_file:
        raise ClientError("INVALID_ARGUMENT", None, "give --token or --token-file, not both")
    if token_file:
        return read_token_file(token_file)
    return check_token(token) if token else None


@events.test_start.add_listener
def build_workload(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the master generates no load and may not have the samples
    options = environment.parsed_options
    Workload.environment = environment
    Workload.grpc_target = grpc_target_of(options, environment.host)
    Workload.requests = 0
    try:
        Workload.token = token_of(options)
    except ClientError as exc:
        log.error("%s; stopping", exc.message)
        assert environment.runner is not None
        gevent.spawn_later(0, environment.runner.quit)
        return
    data_dir = Path(options.data_dir) if options is not None and options.data_dir else default_data_dir()
    samples = load_samples(data_dir, options.sample_limit if options is not None else 2000)
    models = [
        m.strip()
        for m in (options.models if options is not None else ",".join(DEFAULT_MODELS)).split(",")
        if m.strip()
    ]
    client: Client = (
        RestClient(environment.host, timeout=10, token=Workload.token)
        if environment.host
        else GrpcClient(Workload.grpc_target, timeout=10, token=Workload.token)
    )
    try:
        with client:
            calls, notes = build_plan(client, models, samples)
    except ClientError as exc:
        log.error("cannot read the served models: %s", exc)
        calls, notes = [], []
    for note in notes:
        log.warning("%s", note)
    if samples.missing:
        log.warning("samples missing from %s: %s", data_dir, ", ".join(samples.missing))
    Workload.calls, Workload.weights = calls, [c.weight for c in calls]
    if not calls:
        log.error("nothing to send: no served model has a signature with samples; stopping")
        assert environment.runner is not None
        gevent.spawn_later(0, environment.runner.quit)
        return
    log.info("workload: %s", ", ".join(f"{c.name} (weight {c.weight})" for c in calls))


@events.request.add_listener
def enforce_request_budget(**_: Any) -> None:
    """Stop the run once --max-requests requests were made (a bound besides --run-time)."""
    Workload.requests += 1
    environment = Workload.environment
    if environment is None or environment.parsed_options is None or environment.runner is None:
        return
    limit = int(getattr(environment.parsed_options, "max_requests", 0) or 0)
    if limit and Workload.requests == limit:
        log.info("request budget of %d reached; stopping", limit)
        gevent.spawn_later(0, environment.runner.quit)


def _think(user: User, rng: random.Random) -> float:
    options = user.environment.parsed_options
    mean_ms = float(getattr(options, "think_ms", 50.0)) if options is not None else 50.0
    return rng.uniform(0.0, 2 * mean_ms / 1000) if mean_ms > 0 else 0.0


def _payload_bytes(outputs: dict[str, np.ndarray]) -> int:
    return sum(
        sum(len(v) for v in value.reshape(-1)) if value.dtype == codec.STRING else int(value.nbytes)
        for value in outputs.values()
    )


class GrpcUser(User):
    """Calls Predict over one gRPC channel per user, through the project's client library."""

    request_type = "grpc"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.rng = random.Random()
        self.client: Client | None = None

    def wait_time(self) -> float:
        return _think(self, self.rng)

    def make_client(self) -> Client:
        # retries=0: a load test counts each refusal (429/503) instead of hiding it behind a retry.
        return GrpcClient(Workload.grpc_target, timeout=REQUEST_TIMEOUT_S, token=Workload.token, retries=0)

    def on_start(self) -> None:
        self.client = self.make_client()

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()

    @task
    def predict(self) -> None:
        if not Workload.calls or self.client is None:
            gevent.sleep(0.1)
            return
        call = Workload.choose(self.rng)
        inputs = call.make_inputs(self.rng)
        started = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            outputs = self.client.predict(call.model, inputs, signature=call.signature)
            length = _payload_bytes(outputs)
        except ClientError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type=self.request_type,
            name=call.name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )


class _HttpUser(FastHttpUser):
    """What the REST users share: their random source, think time and failure report."""

    abstract = True  # not a user Locust runs by itself

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.rng = random.Random()

    def wait_time(self) -> float:
        return _think(self, self.rng)


def _report_failure(response: Any) -> None:
    """Mark a non-200 answer failed, with the server's `{"error": ...}` message when it sent one."""
    try:
        message = response.json().get("error", "")
    except Exception:  # not JSON: connection error or a proxy's page
        message = (response.text or "")[:200]
    response.failure(f"HTTP {response.status_code}: {message}")


class RestUser(_HttpUser):
    """POSTs TF Serving's REST predict (`{"inputs": ...}`, `{"b64": ...}` for bytes) with FastHttpUser."""

    @task
    def predict(self) -> None:
        if not Workload.calls:
            gevent.sleep(0.1)
            return
        call = Workload.choose(self.rng)
        body = {
            "signature_name": call.signature,
            "inputs": {
                name: codec.numpy_to_json(value, binary=True)
                for name, value in call.make_inputs(self.rng).items()
            },
        }
        headers = {HTTP_HEADER: authorization_value(Workload.token)} if Workload.token else None
        with self.client.post(
            f"/v1/models/{call.model}:predict",
            json=body,
            headers=headers,
            name=call.name,
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                response.success()
            else:
                _report_failure(response)


class V2GrpcUser(GrpcUser):
    """Calls the Open Inference Protocol's ModelInfer (raw tensor contents) through `V2GrpcClient`."""

    request_type = "v2-grpc"

    def make_client(self) -> Client:
        return V2GrpcClient(Workload.grpc_target, timeout=REQUEST_TIMEOUT_S, token=Workload.token, retries=0)


class V2RestUser(_HttpUser):
    """POSTs `/v2/models/<m>/infer` with binary tensor data (what `tritonclient.http` sends)."""

    binary = True
    request_type = "v2-rest"

    @task
    def infer(self) -> None:
        if not Workload.calls:
            gevent.sleep(0.1)
            return
        call = Workload.choose(self.rng)
        body, headers = encode_infer_body(
            call.make_inputs(self.rng), binary=self.binary, parameters={SIGNATURE_PARAMETER: call.signature}
        )
        if Workload.token:
            headers[HTTP_HEADER] = authorization_value(Workload.token)
        with self.client.post(
            f"/v2/models/{call.model}/infer",
            data=body,  # type: ignore[arg-type]  # bytes go through as they are (typed str | dict)
            headers=headers,
            name=call.name,
            catch_response=True,
        ) as response:
            response.request_meta["request_type"] = self.request_type  # the stats' type column, not "POST"
            if response.status_code != 200:
                _report_failure(response)
                return
            try:
                decode_infer_answer(response.content or b"", response.headers.get(HEADER_LENGTH), 200)
            except ClientError as exc:
                response.failure(exc.message)
                return
            response.success()


class V2RestJsonUser(V2RestUser):
    """The same infer with tensors as JSON `data` (what a V2 client without the extension sends)."""

    binary = False
    request_type = "v2-rest-json"
