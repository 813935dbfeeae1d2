"""The model repository extension (index, load, unload) over TF Serving's config reload.

Load and unload change the served model list through `ConfigReloader.reload`, the path of
`HandleReloadConfigRequest` and of the config file poll: the same checks, the same lock, the same
metrics and health refresh. The served list is TF Serving's `model_config_list`: unload removes the
model's entry (its versions leave the lookup at once and unload once their requests end); load adds
one, or re-syncs a model that is served (new versions on disk load, as Triton's reload of a loaded
model does).

Where load finds a model's base path, first to last:
1. the `base_path` parameter (a string: absolute, or relative to the `--model_config_file`'s folder);
2. the `config` parameter (what `tritonclient`'s `load_model(config=...)` sends: a JSON object)
   holding `base_path` (and optionally `model_platform`); Triton's own model config fields mean
   nothing here and are refused by name;
3. the model's config while it is served (a reload), or its last config if it was served by this
   process and unloaded since (as Triton finds a model in its repository folder by name);
otherwise the model is unknown: NOT_FOUND. The index lists the served models, one entry per version
(READY, LOADING, UNLOADING or UNAVAILABLE with the load error), and the unloaded ones as
UNAVAILABLE "unloaded", as Triton lists the models of its repository that are not loaded.

A load that leaves the model with no AVAILABLE version is INVALID_ARGUMENT (400), Triton's answer;
the model stays configured and is retried when its files change, like a failed version at start.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from serving.config import ModelConfig
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from serving.proto import config_pb2
from serving.protocol import Services
from serving.reload import ConfigReloader, ModelsNotAvailable
from serving.repository import State

log = logging.getLogger(__name__)

# ModelVersion state -> Triton's index state names.
_STATES = {
    State.START: "LOADING",
    State.LOADING: "LOADING",
    State.AVAILABLE: "READY",
    State.UNLOADING: "UNLOADING",
    State.END: "UNAVAILABLE",
}
_CONFIG_KEYS = ("base_path", "model_platform")


def config_message(models: Mapping[str, ModelConfig]) -> config_pb2.ModelServerConfig:
    """The `ModelServerConfig` that serves exactly `models` (what `HandleReloadConfigRequest` takes)."""
    message = config_pb2.ModelServerConfig()
    entries = message.model_config_list.config
    for config in models.values():
        entry = entries.add(name=config.name, base_path=str(config.base_path), model_platform=config.platform)
        policy = config.version_policy
        if policy.kind == "all":
            entry.model_version_policy.all.SetInParent()
        elif policy.kind == "specific":
            entry.model_version_policy.specific.versions.extend(policy.versions)
        else:
            entry.model_version_policy.latest.num_versions = policy.num_versions
        for label, version in config.version_labels.items():
            entry.version_labels[label] = version
    if not entries:
        message.model_config_list.SetInParent()  # an empty list: serve nothing
    return message


class ModelRepository:
    """Index, load and unload; one per reloader (REST and gRPC share it, see `for_services`)."""

    def __init__(self, reloader: ConfigReloader) -> None:
        self.reloader = reloader
        self.unloaded: dict[str, ModelConfig] = {}  # models unloaded here: their last config

    @staticmethod
    def for_services(services: Services) -> ModelRepository | None:
        if services.reloader is None:
            return None
        found = _BY_RELOADER.get(services.reloader)
        if found is None:
            found = _BY_RELOADER[services.reloader] = ModelRepository(services.reloader)
        return found

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        entries: list[dict[str, str]] = []
        for name, model in sorted(self.reloader.repository.models.items()):
            versions = sorted(model.versions.values(), key=lambda v: v.version)
            if not versions:
                reason = model.sync_error or f"no loadable version under {model.config.base_path}"
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
            for entry in versions:
                state = _STATES.get(entry.state, "UNKNOWN")
                if entry.error:
                    state = "UNAVAILABLE"
                entries.append(
                    {"name": name, "version": str(entry.version), "state": state, "reason": entry.error or ""}
                )
        for name in sorted(self.unloaded):
            if name not in self.reloader.repository.models:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
        if ready_only:
            entries = [e for e in entries if e["state"] == "READY"]
        return entries

    async def load(self, name: str, parameters: Mapping[str, Any]) -> None:
        self._check_offered()
        if not name:
            raise InvalidArgument("the model name is required")
        served = self.reloader.served()
        config = self._config_for(name, parameters, served)
        wanted = {**served, name: config}
        try:
            await self.reloader.reload(config_message(wanted))
        except ModelsNotAvailable as exc:
            raise InvalidArgument(f"failed to load '{name}': {exc.message}") from None
        self.unloaded.pop(name, None)
        log.info("model repository: loaded %s from %s", name, config.base_path)

    async def unload(self, name: str) -> None:
        self._check_offered()
        served = self.reloader.served()
        if name not in served:
            if name in self.unloaded:
                return  # already unloaded: nothing to do, as Triton
            raise NotFound(f"Servable not found for request: model '{name}' is not served")
        config = served.pop(name)
        await self.reloader.reload(config_message(served))
        self.unloaded[name] = config
        log.info("model repository: unloaded %s", name)

    def _check_offered(self) -> None:
        if self.reloader.workers > 1:
            raise FailedPrecondition(
                f"model load/unload would reach one of the {self.reloader.workers} worker processes "
                "(--workers) only; change the --model_config_file instead (with "
                "--model_config_file_poll_wait_seconds every worker re-reads it)"
            )

    def _config_for(self, name: str, parameters: Mapping[str, Any], served: Mapping[str, ModelConfig]) -> ModelConfig:
        given = dict(parameters)
        unknown = sorted(set(given) - {"config", *_CONFIG_KEYS})
        if unknown:
            raise InvalidArgument(
                f"unknown load parameter(s) {unknown}: this server takes 'base_path', 'model_platform' and "
                "'config' (model files cannot be uploaded: they are read from the base path)"
            )
        raw_config = given.pop("config", None)
        if raw_config is not None:
            given.update(_triton_config(raw_config))
        base_path = given.get("base_path")
        platform = given.get("model_platform")
        if platform is not None and not isinstance(platform, str):
            raise InvalidArgument("parameter 'model_platform' must be a string")
        known = served.get(name) or self.unloaded.get(name)
        if base_path is None:
            if known is None:
                raise NotFound(
                    f"model '{name}' is not known to this server: give its base path in the 'base_path' "
                    "parameter (or in the 'config' parameter's JSON, as {\"base_path\": ...})"
                )
            return replace(known, platform=platform) if platform else known
        if not isinstance(base_path, str) or not base_path:
            raise InvalidArgument("parameter 'base_path' must be a non-empty string")
        path = Path(base_path)
        if not path.is_absolute():
            if self.reloader.relative_to is None:
                raise InvalidArgument(
                    f"Expected model {name} to have an absolute path or URI; got base_path()={base_path}"
                )
            path = self.reloader.relative_to / path
        base = known if known is not None and known.base_path == path else ModelConfig(name=name, base_path=path)
        return replace(base, platform=platform) if platform else base


def _triton_config(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise InvalidArgument("parameter 'config' must be a string holding a JSON object")
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"parameter 'config' is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("parameter 'config' must hold a JSON object")
    unknown = sorted(set(parsed) - set(_CONFIG_KEYS))
    if unknown:
        raise InvalidArgument(
            f"parameter 'config': {unknown} are Triton model config fields this server does not read; "
            f"it reads {list(_CONFIG_KEYS)} (a model's signatures, batching and versions come from its "
            "files and the server's flags)"
        )
    return parsed


def unavailable_without_reloader() -> Unimplemented:
    return Unimplemented("the model repository extension is not offered by this server")


_BY_RELOADER: weakref.WeakKeyDictionary[ConfigReloader, ModelRepository] = weakref.WeakKeyDictionary()
