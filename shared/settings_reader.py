"""Settings as data: a row per setting (``SettingSpec``), and a reader that reads only through it.

A settings object lists every setting it reads in a table: its name, kind, default, bounds or
options, whether start-up needs it, and where it is set. ``SettingsReader`` takes its defaults,
bounds and options from that table, so the code that reads a setting and the table that describes
it cannot drift: reading a setting the table does not list, or reading it as another kind, is a
programming error (``UnlistedSetting``), while a bad *value* is a ``ConfigError`` naming the
setting. ``infra/checks`` imports the same tables to check the Bicep and the local sample.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from shared.errors import ConfigError

KEYVAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\((?P<body>.*)\)\s*$", re.IGNORECASE)
"""``@Microsoft.KeyVault(SecretUri=...)`` or ``@Microsoft.KeyVault(VaultName=...;SecretName=...)``
("Use Key Vault references as app settings",
https://learn.microsoft.com/azure/app-service/app-service-key-vault-references)."""

SecretResolver = Callable[[str, str], str]
"""(setting name, Key Vault reference body) -> secret value."""

PLATFORM_MARKERS = ("WEBSITE_SITE_NAME", "WEBSITE_INSTANCE_ID")
"""Settings App Service sets on every instance: either one means the code runs in Azure
("Environment variables and app settings in Azure App Service",
https://learn.microsoft.com/azure/app-service/reference-app-settings)."""


class Secret:
    """A string that never shows itself in ``repr``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Kind(StrEnum):
    """What a setting's value is, and so which reader method reads it."""

    NAME = "name"  # an Azure resource name: letters, digits, ``.``, ``_``, ``-``
    URL = "url"  # an http(s) URL
    SECRET = "secret"  # hidden in repr and logs
    CHOICE = "choice"  # one of ``options``, any case
    INTEGER = "integer"  # a whole number in [low, high]
    NUMBER = "number"  # a finite number in [low, high]
    BOOLEAN = "boolean"  # 1/0, true/false, yes/no, on/off
    LIST = "list"  # comma-separated
    MAPPING = "mapping"  # name=value,name=value
    TEXT = "text"  # free text: a path, a client id, a connection string


class Where(StrEnum):
    """Where a setting gets its value."""

    BICEP = "infra/main.bicep appSettings"
    SAMPLE = "local.settings.sample.json"
    KEY_VAULT = "a Key Vault reference in the Azure app settings"
    HOST = "the Functions host (App Service sets it on every instance)"
    DEVHOST = "the environment of devhost (never Azure)"
    LOCAL_ALTERNATIVE = (
        "local.settings.json by hand, as docs/amqp.md shows (neither Azure nor the sample)"
    )


AZURE_AND_LOCAL = (Where.BICEP, Where.SAMPLE)
LOCAL_ONLY = (Where.SAMPLE,)
HOST = (Where.HOST,)

Default = str | int | float | bool | None
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$")


@dataclass(frozen=True)
class SettingSpec:
    """One setting: how it is read and where it is set. ``note`` says why a setting is not set
    in both Azure and the sample (required then), or anything a reader of the table must know."""

    name: str
    kind: Kind
    default: Default = None
    low: int | float | None = None
    high: int | float | None = None
    options: tuple[str, ...] = ()
    required: bool = False
    required_when: str = ""
    set_in: tuple[Where, ...] = AZURE_AND_LOCAL
    note: str = ""

    def __post_init__(self) -> None:
        bounded = self.kind in (Kind.INTEGER, Kind.NUMBER)
        if bounded != (self.low is not None and self.high is not None):
            raise ValueError(f"{self.name}: low and high go with integer and number settings")
        if (self.kind is Kind.CHOICE) != bool(self.options):
            raise ValueError(f"{self.name}: options go with choice settings, and only there")
        if self.kind is Kind.CHOICE and self.default not in self.options:
            raise ValueError(f"{self.name}: default {self.default!r} is not one of its options")
        if self.kind is Kind.NAME and not _NAME.match(str(self.default)):
            raise ValueError(f"{self.name}: default {self.default!r} is not a resource name")
        if set(self.set_in) != set(AZURE_AND_LOCAL) and not self.note:
            raise ValueError(f"{self.name}: say in note why it is set in {self.set_in} only")

    @property
    def local_only(self) -> bool:
        """Set for local runs but deliberately left out of Azure."""
        local = Where.SAMPLE in self.set_in or Where.LOCAL_ALTERNATIVE in self.set_in
        return local and Where.BICEP not in self.set_in


def table_of(specs: Iterable[SettingSpec]) -> Mapping[str, SettingSpec]:
    """The specs by name; a name listed twice is a ``ValueError``."""
    table: dict[str, SettingSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"setting {spec.name} is listed twice")
        table[spec.name] = spec
    return table


class UnlistedSetting(LookupError):
    """The code read a setting its table does not list, or as another kind: a programming error."""


_T = TypeVar("_T")


class SettingsReader:
    """Typed reads of single settings listed in ``table``, each failing with the setting's name.

    Defaults, bounds and options come from the table; ``names_read`` records what was read."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        table: Mapping[str, SettingSpec],
        resolve_secret: SecretResolver | None = None,
    ) -> None:
        self._env = env
        self._table = table
        self._resolve = resolve_secret
        self.names_read: set[str] = set()

    def spec(self, key: str, *kinds: Kind) -> SettingSpec:
        """The row of ``key``, which must be of one of ``kinds``."""
        spec = self._table.get(key)
        if spec is None:
            raise UnlistedSetting(f"setting {key} is read but not listed in its settings table")
        if spec.kind not in kinds:
            raise UnlistedSetting(f"setting {key} is listed as {spec.kind}, read as {kinds}")
        self.names_read.add(key)
        return spec

    def _raw(self, key: str) -> str | None:
        value = self._env.get(key)
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        match = KEYVAULT_REFERENCE.match(value)
        if match:
            value = self._resolve_reference(key, match.group("body"))
        return value

    def _resolve_reference(self, key: str, body: str) -> str:
        if any(self._env.get(marker) for marker in PLATFORM_MARKERS):
            raise ConfigError(
                key,
                "is an unresolved Key Vault reference; check the app's identity has "
                "'Key Vault Secrets User' on the vault and the reference is correct",
            )
        if self._resolve is None:
            raise ConfigError(key, "is a Key Vault reference and no resolver is configured")
        try:
            return self._resolve(key, body)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                key, f"Key Vault reference could not be resolved ({exc.__class__.__name__})"
            ) from None

    def text(self, key: str) -> str | None:
        """Free text, else the table's default (which may be None)."""
        spec = self.spec(key, Kind.TEXT)
        return self._raw(key) or (None if spec.default is None else str(spec.default))

    def name(self, key: str) -> str:
        spec = self.spec(key, Kind.NAME)
        value = self._raw(key) or str(spec.default)
        if not _NAME.match(value):
            raise ConfigError(key, f"{value!r} is not a valid resource name")
        return value

    def url(self, key: str, *, required: bool | None = None) -> str | None:
        """An http(s) URL; missing is an error when ``required`` (default: the table's)."""
        spec = self.spec(key, Kind.URL)
        value = self._raw(key)
        if value is None:
            if spec.required if required is None else required:
                raise ConfigError(key, "missing")
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ConfigError(key, "must be an http(s) URL")
        return value

    def secret(self, key: str) -> Secret | None:
        self.spec(key, Kind.SECRET)
        value = self._raw(key)
        return Secret(value) if value is not None else None

    def choice(self, key: str) -> str:
        spec = self.spec(key, Kind.CHOICE)
        value = (self._raw(key) or str(spec.default)).lower()
        if value not in spec.options:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(spec.options)}")
        return value

    def integer(self, key: str) -> int:
        value = self.optional_integer(key)
        if value is None:
            raise UnlistedSetting(f"setting {key} has no default; read it with optional_integer")
        return value

    def optional_integer(self, key: str) -> int | None:
        spec = self.spec(key, Kind.INTEGER)
        text = self._raw(key)
        if text is None:
            return None if spec.default is None else int(spec.default)
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(key, f"{text!r} is not an integer") from None
        if not spec.low <= value <= spec.high:  # type: ignore[operator]
            raise ConfigError(key, f"{value} is outside [{spec.low}, {spec.high}]")
        return value

    def number(self, key: str) -> float:
        value = self.optional_number(key)
        if value is None:
            raise UnlistedSetting(f"setting {key} has no default; read it with optional_number")
        return value

    def optional_number(self, key: str) -> float | None:
        spec = self.spec(key, Kind.NUMBER)
        text = self._raw(key)
        if text is None:
            return None if spec.default is None else float(spec.default)
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(key, f"{text!r} is not a number") from None
        if not math.isfinite(value) or not spec.low <= value <= spec.high:  # type: ignore[operator]
            raise ConfigError(key, f"{value} is outside [{spec.low}, {spec.high}]")
        return value

    def boolean(self, key: str) -> bool:
        spec = self.spec(key, Kind.BOOLEAN)
        text = self._raw(key)
        if text is None:
            return bool(spec.default)
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"{text!r} is not a boolean")

    def list(self, key: str) -> tuple[str, ...]:
        self.spec(key, Kind.LIST)
        return self._items(key)

    def _items(self, key: str) -> tuple[str, ...]:
        text = self._raw(key)
        if text is None:
            return ()
        return tuple(part.strip() for part in text.split(",") if part.strip())

    def mapping(self, key: str, convert: Callable[[str], _T]) -> dict[str, _T]:
        """Parse ``name=value,name=value``, each value through ``convert``."""
        self.spec(key, Kind.MAPPING)
        result: dict[str, _T] = {}
        for item in self._items(key):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(key, f"{item!r} is not name=value")
            try:
                result[name.strip()] = convert(value.strip())
            except ValueError as exc:
                raise ConfigError(key, f"{item!r}: {exc}") from None
        return result
