"""Where devhost keeps its state and which app settings its processes run with."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devhost.settings import DevhostSettings
from shared.adapters.local.sqlite_store import SqliteDocumentStore
from shared.config import Settings
from shared.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SIMULATOR_KEY = "devhost-simulator-key"
"""The api-key devhost's own simulator accepts; it guards nothing but a loopback port."""


@dataclass(frozen=True)
class Workdir:
    """The ``.devhost`` folder: broker, store, blob inbox, runtime state."""

    root: Path

    @property
    def broker(self) -> Path:
        return self.root / "broker.sqlite3"

    @property
    def store(self) -> Path:
        return self.root / "store.sqlite3"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def simulator_admin_key(self) -> Path:
        """The running simulator's admin key (header ``x-sim-admin-key``), owner-only."""
        return self.root / "simulator-admin-key"

    def create(self) -> Workdir:
        for path in (self.root, self.inbox, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self


STATE_FRESH_S = 15.0
"""A host refreshes ``state.json`` every scaling step; older than this, it is not running."""


def open_store(workdir: Workdir, settings: Settings) -> SqliteDocumentStore:
    """The store the workers of ``workdir`` write to."""
    return SqliteDocumentStore(str(workdir.store), partition_keys=settings.container_partition_keys)


def running_host(workdir: Workdir, *, now: float | None = None) -> dict[str, Any] | None:
    """The state a live ``devhost run`` (or ``demo``) wrote in ``workdir``; None when none runs.

    Live means the process that wrote it still exists and wrote it recently.
    """
    try:
        state = json.loads(workdir.state.read_text(encoding="utf-8"))
        pid, at = int(state["pid"]), float(state["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (time.time() if now is None else now) - at > STATE_FRESH_S:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, under another user
    return dict(state)


def _file_values(path: Path) -> dict[str, str]:
    """The ``Values`` of a Core Tools settings file; ``ConfigError`` names a malformed one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path.name, f"cannot be read ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            path.name, f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(path.name, 'must be a JSON object with a "Values" object')
    values = document.get("Values", {})
    if not isinstance(values, dict):
        raise ConfigError(path.name, '"Values" must be an object of setting names to values')
    result: dict[str, str] = {}
    for key, value in values.items():
        if value in (None, "") or "<" in str(value):
            continue
        if isinstance(value, dict | list):
            raise ConfigError(
                f"{path.name} Values.{key}", "must be a string, number or boolean, not JSON"
            )
        result[key] = str(value)
    return result


def app_settings(
    workdir: Workdir,
    *,
    simulator_url: str | None,
    project_root: Path = PROJECT_ROOT,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The settings every devhost process sees, lowest to highest precedence:
    ``local.settings.sample.json`` (placeholders dropped), ``local.settings.json``, the
    environment, then devhost's own (the SQLite store and, unless an external endpoint is
    configured, the simulator).

    With ``DEVHOST_LLM=external`` the sample's model settings (:func:`names_a_model`) are left
    out: they describe the sample's Azure OpenAI deployments, so ``LLM_DEPLOYMENT`` alone then
    names the model of every stage, with no quota or price but what the user sets."""
    env = dict(os.environ if environ is None else environ)
    sample = _file_values(project_root / "local.settings.sample.json")
    local = _file_values(project_root / "local.settings.json")
    values = {**sample, **local, **env}
    devhost = DevhostSettings.from_env(values)
    if devhost.llm == "external":
        for key in sample:
            if names_a_model(key) and key not in local and key not in env:
                del values[key]
    values.update(devhost.as_env())
    values["STORE_BACKEND"] = "sqlite"
    values["SQLITE_PATH"] = str(workdir.store)
    # Worker processes share one quota ledger, so together they stay inside the deployment's TPM.
    values.setdefault("LLM_QUOTA_BACKEND", "sqlite")
    values.setdefault("LLM_QUOTA_SQLITE_PATH", str(workdir.root / "quota.sqlite3"))
    values.setdefault("TELEMETRY_EXPORTER", "none")
    if simulator_url is not None:
        values["AZURE_OPENAI_ENDPOINT"] = simulator_url
        values["AZURE_OPENAI_API_KEY"] = SIMULATOR_KEY
        values.pop("OPENAI_BASE_URL", None)
    return values


MODEL_SETTINGS = ("LLM_DEPLOYMENT", "LLM_FALLBACK_DEPLOYMENTS", "LLM_PRICES")
"""Prefixes of the settings that name deployments or are keyed by their names: the deployment
per stage, fallbacks, ``LLM_DEPLOYMENT_TPM`` and ``LLM_PRICES``."""


def names_a_model(key: str) -> bool:
    """Whether the setting ``key`` names a deployment or holds figures keyed by one."""
    return key.startswith(MODEL_SETTINGS)
