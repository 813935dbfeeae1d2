"""Config reloads: the served model list changed at run time, as TF Serving's `ReloadConfig`.

Two ways in, one path (`ConfigReloader.reload`):
- gRPC `ModelService/HandleReloadConfigRequest` with a `ModelServerConfig` holding a
  `model_config_list` (`ConfigReloader.handle_request`);
- `--model_config_file_poll_wait_seconds N` with `--model_config_file`: the file is re-read every N
  seconds and applied when the models it lists differ from those served (`poll_config_file`). As
  in TF Serving, the file wins at each poll: a change made over gRPC lasts until the next poll
  that finds the file differs from it.

The new list is checked whole before anything changes (TF Serving's checks, codes and messages:
duplicate names, relative base paths, platforms, version labels), then `Repository.apply_config`
serves exactly that list: added models load, removed ones unload once their requests end, changed
ones are re-synced. The answer comes once the added models are AVAILABLE, or have failed to load
(UNKNOWN, naming them, as TF Serving's wait for new models ends); a failed model stays configured.

`ReloadConfigRequest.metric_names` is answered as TF Serving answers it: for each distinct name, how
much that TF Serving metric grew while the reload ran (`tf_metric_values` says what is read).

Relative base paths are read relative to the `--model_config_file`'s folder, as at start-up; a
server started with `--model_base_path` has no such folder, and refuses them as TF Serving does.
With `--workers N` a gRPC call reaches one worker only, so the RPC is refused there
(FAILED_PRECONDITION) and the config file poll, which every worker runs, is the way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc
from google.protobuf import text_format

from serving.config import ConfigError, ModelConfig, parse_model_config_text
from serving.errors import FailedPrecondition, InvalidArgument, ServingError
from serving.metrics import REQUESTS_FAMILY, TF_API, TF_METRICS, TF_REQUEST_COUNT, Metrics
from serving.proto import config_pb2
from serving.repository import ConfigChange, Repository, State

log = logging.getLogger(__name__)

# model_platform values a config may name: TF Serving's own (every TF Serving config says it), and
# ONNX. The engine is chosen by --backend for every model; the platform is informational.
SERVABLE_PLATFORMS = ("tensorflow", "onnx")

# TF Serving's messages (model_service_impl.cc, server_core.cc).
NOT_A_MODEL_CONFIG_LIST = (
    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported"
)
ILLEGAL_TRANSITION = (
    "Cannot transition to requested config. It is only legal to transition from one ModelConfigList to another."
)
_MODEL_TYPE_TENSORFLOW = 1  # ModelType.TENSORFLOW (the deprecated model_type field)


class ModelsNotAvailable(ServingError):
    """Added models that did not become available (TF Serving answers UNKNOWN); the config is
    applied all the same."""

    grpc_code = grpc.StatusCode.UNKNOWN
    http_status = 500


def _is_relative(base_path: str) -> bool:
    return "://" not in base_path and not Path(base_path).is_absolute()


def _platform(raw: config_pb2.ModelConfig, default: str | None) -> str:
    """The model's platform, as TF Serving's GetPlatform (model_type is the deprecated spelling)."""
    if raw.model_type:
        if raw.model_platform:
            raise InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {raw.name}"
            )
        if raw.model_type != _MODEL_TYPE_TENSORFLOW:
            raise InvalidArgument(f"ModelServerConfig::model_type choice {raw.model_type} not supported.")
        return "tensorflow"
    if raw.model_platform:
        return raw.model_platform
    if default is None:
        raise InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {raw.name}"
        )
    return default


def read_server_config(
    message: config_pb2.ModelServerConfig, relative_to: Path | None, default_platform: str | None = None
) -> tuple[ModelConfig, ...]:
    """The models a `ModelServerConfig` lists, checked as TF Serving checks a new config (those
    checks that need no server state); raises InvalidArgument or FailedPrecondition.

    `default_platform`: the platform of an entry that names none (the config file: as at
    start-up), or None to refuse such entries (the RPC: as TF Serving).
    """
    if message.WhichOneof("config") != "model_config_list":
        raise FailedPrecondition(ILLEGAL_TRANSITION)
    entries = message.model_config_list.config
    names: set[str] = set()
    for raw in entries:
        if raw.name in names:
            raise InvalidArgument(f"Illegal to list model {raw.name} multiple times in config list")
        names.add(raw.name)
    if relative_to is None:
        for raw in entries:
            if _is_relative(raw.base_path):
                raise InvalidArgument(
                    f"Expected model {raw.name} to have an absolute path or URI; got base_path()={raw.base_path}"
                )
    for raw in entries:
        platform = _platform(raw, default_platform)
        if platform not in SERVABLE_PLATFORMS:
            raise InvalidArgument(f"Model {raw.name} requests unsupported platform {platform}")
    if not entries:
        return ()  # TF Serving serves nothing then (every model unloads)
    try:
        # The start-up parser, so a file reads the same at start and at every poll (the platform
        # it fills in for an entry without one is "tensorflow", as `_platform` above).
        return parse_model_config_text(text_format.MessageToString(message), relative_to)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None


class ConfigReloader:
    """Applies a new model list: validation against the served state, the repository change, the
    metrics of added and removed models, then `after` (the server refreshes its health there)."""

    def __init__(
        self,
        repository: Repository,
        metrics: Metrics,
        *,
        relative_to: Path | None,
        workers: int = 1,
        allow_unavailable_labels: bool = False,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.relative_to = relative_to
        self.workers = workers
        self.allow_unavailable_labels = allow_unavailable_labels
        self.after: Callable[[], Awaitable[None]] = _nothing
        self._lock = asyncio.Lock()
        self._running: set[asyncio.Task[ConfigChange]] = set()

    def served(self) -> dict[str, ModelConfig]:
        return {name: model.config for name, model in self.repository.models.items()}

    def metric_values(self, names: Iterable[str]) -> dict[str, int]:
        """The named TF Serving metrics' values now (see `tf_metric_values`)."""
        return tf_metric_values(self.metrics, names)

    async def handle_request(self, message: config_pb2.ModelServerConfig) -> ConfigChange:
        """HandleReloadConfigRequest: only a model_config_list, only where one process serves."""
        if self.workers > 1:
            raise FailedPrecondition(
                f"HandleReloadConfigRequest would reach one of the {self.workers} worker processes "
                "(--workers) only; change the --model_config_file instead: with "
                "--model_config_file_poll_wait_seconds every worker re-reads it"
            )
        if message.WhichOneof("config") != "model_config_list":
            raise InvalidArgument(NOT_A_MODEL_CONFIG_LIST)
        for index, raw in enumerate(message.model_config_list.config):
            log.info(
                "reload config entry %d: name %s, base_path %s, platform %s",
                index,
                raw.name,
                raw.base_path,
                raw.model_platform,
            )
        return await self.reload(message)

    async def reload(
        self, message: config_pb2.ModelServerConfig, *, default_platform: str | None = None, only_if_changed: bool = False
    ) -> ConfigChange:
        """Check and apply `message`; returns what changed, or raises (the served models are
        unchanged after a check fails; after ModelsNotAvailable the config is applied).

        Runs to its end even if the caller goes away (a client's deadline): a half-applied list
        would serve neither the old config nor the new one.
        """
        task = asyncio.create_task(self._reload(message, default_platform, only_if_changed))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _reload(
        self, message: config_pb2.ModelServerConfig, default_platform: str | None, only_if_changed: bool
    ) -> ConfigChange:
        async with self._lock:
            models = read_server_config(message, self.relative_to, default_platform)
            if only_if_changed and {m.name: m for m in models} == self.served():
                return ConfigChange()
            self._check_against_served(models)
            for model in models:
                if model.name not in self.metrics.model_names:
                    self.metrics.set_model_served(model.name, True)
            try:
                change = await self.repository.apply_config(models)
            finally:
                await self.after()
        if change.retired is not None and change.removed:
            removed = change.removed

            def drop_series(_: object) -> None:
                for name in removed:
                    if name not in self.repository.models:  # not added back meanwhile
                        self.metrics.set_model_served(name, False)

            change.retired.add_done_callback(drop_series)
        if change.not_available:
            details = "".join(
                f"{{name: {name} due to error: {why}}}, " for name, why in sorted(change.not_available.items())
            )
            raise ModelsNotAvailable(f"{len(change.not_available)} model(s) did not become available: {{{details}}}")
        return change

    def _check_against_served(self, models: tuple[ModelConfig, ...]) -> None:
        """TF Serving's checks that depend on what is served: platforms do not change, and
        version labels point at AVAILABLE versions (unless unavailable ones are allowed)."""
        served = self.repository.models
        for config in models:
            old = served.get(config.name)
            if old is not None and old.config.platform != config.platform:
                raise InvalidArgument(
                    f"Illegal to change a model's platform. For model {config.name} platform was "
                    f"{old.config.platform} and new platform requested is {config.platform}"
                )
        for config in models:
            old = served.get(config.name)
            for label, version in config.version_labels.items():
                if self.allow_unavailable_labels:
                    # Allowed unless the label now points at another version (TF Serving's rule).
                    previous = old.config.version_labels.get(label) if old is not None else None
                    if previous is None or previous == version:
                        continue
                entry = old.versions.get(version) if old is not None else None
                if entry is None or entry.state != State.AVAILABLE:
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {config.name}, which is not "
                        "currently available for inference"
                    )


def tf_metric_values(metrics: Metrics, names: Iterable[str]) -> dict[str, int]:
    """The value of each named TF Serving metric, as TF Serving's HandleReloadConfigRequest reads it
    (model_service_impl.cc, GetMetrics) for `ReloadConfigRequest.metric_names`.

    A name is a metric's TF path (`/tensorflow/serving/model_warmup_records_read`; see
    `serving.metrics.TF_METRICS`). TF reads the int64 value of the metric's first cell, the cells in
    the order of their label values, so: a counter's first series by label values (the only one
    for an unlabelled counter), 0 for a histogram (its cells hold no int64 value), 0 for a metric
    with no series yet and for a name this server does not have (TF's "not found"). One entry per
    distinct name, in the request's order.
    """
    wanted = list(dict.fromkeys(names))
    specs = {spec.path: spec for spec in TF_METRICS}
    families = {family.name: family for family in metrics.families()}
    values = {}
    for name in wanted:
        spec = specs.get(name)
        cells: dict[tuple[str, ...], float] = {}
        if spec is TF_REQUEST_COUNT:
            # Summed from the project's per-API counter when rendered: the same sum here.
            family = families.get(REQUESTS_FAMILY)
            for sample in family.samples if family is not None else ():
                labels = sample.labels
                if sample.name.endswith("_total") and (labels.get("API"), labels.get("entrypoint")) in TF_API:
                    key = (labels["model_name"], labels["status"])
                    cells[key] = cells.get(key, 0.0) + sample.value
        elif spec is not None and spec.kind == "counter":
            family = families.get(spec.name.removesuffix("_total"))  # prometheus_client drops it
            for sample in family.samples if family is not None else ():
                if sample.name.endswith("_total"):
                    cells[tuple(sample.labels.get(label, "") for label in spec.labels)] = sample.value
        values[name] = int(cells[min(cells)]) if cells else 0
    return values


async def _nothing() -> None:
    return None


async def poll_config_file(reloader: ConfigReloader, path: Path, interval: float) -> None:
    """Re-read `path` every `interval` seconds and apply it when its models differ from those
    served. A file that cannot be read, parsed or applied keeps the current models; the error is
    logged once (one line) until it changes, and the file is tried again at the next poll."""
    reported = ""
    while True:
        await asyncio.sleep(interval)
        error = ""
        try:
            message = config_pb2.ModelServerConfig()
            text_format.Parse(path.read_text(), message)
            change = await reloader.reload(message, default_platform="tensorflow", only_if_changed=True)
        except OSError as exc:
            error = f"cannot read it: {exc.strerror or exc}"
        except text_format.ParseError as exc:
            error = f"cannot parse it: {exc}"
        except ModelsNotAvailable as exc:
            # Applied: the file matches what is served now; the models that failed are retried
            # when their files change, like any failed version.
            log.error("--model_config_file %s applied, but %s", path, exc.message)
        except ServingError as exc:
            error = f"{exc.grpc_code.name}: {exc.message}"
        except Exception:  # a bug here: keep polling, with the traceback once
            if reported != "internal":
                log.exception("--model_config_file %s: applying it failed; trying again in %gs", path, interval)
            reported = "internal"
            continue
        else:
            if change.added or change.removed or change.changed:
                log.info("--model_config_file %s applied: %d models served", path, len(reloader.served()))
            elif reported:
                log.info("--model_config_file %s: served models match it again", path)
        if error and error != reported:
            log.error(
                "--model_config_file %s: %s; keeping the %d models served; trying again every %gs",
                path,
                error,
                len(reloader.served()),
                interval,
            )
        reported = error
