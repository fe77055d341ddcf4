"""Settings: the code's settings table against the Bicep app settings and the local sample.

The settings the code reads are the rows of ``shared.config.SETTINGS`` (``Settings.from_env``
reads only through it), plus any literal ``os.environ`` read elsewhere in the app's code. Each
row says where the setting is set (``Where``); these checks hold ``infra/main.bicep`` and
``local.settings.sample.json`` to it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.checks.model import REPO
from shared.config import KEYVAULT_REFERENCE, SETTINGS, Kind, SettingSpec, Where

LOCAL_ONLY: dict[str, str] = {spec.name: spec.note for spec in SETTINGS if spec.local_only}
"""Settings the code reads that Azure deliberately leaves unset, each with its reason (from the
table: set in the sample, not in the Bicep)."""

PLATFORM_PROVIDED: dict[str, str] = {
    spec.name: spec.note for spec in SETTINGS if Where.HOST in spec.set_in
}
"""Settings the platform sets itself: neither the Bicep nor the sample lists them."""

OPTIONAL_UNSET: dict[str, str] = {
    "TIKTOKEN_CACHE_DIR": (
        "tiktoken's own cache location; unset means tiktoken's default, and without a cached "
        "encoding the estimator counts characters instead (shared/llm/tokens.py)."
    ),
    "DATA_GYM_CACHE_DIR": "tiktoken's older name for TIKTOKEN_CACHE_DIR; same reason.",
}
"""Settings of libraries the code honours outside the settings table, that neither Azure nor
the sample sets."""

DEVHOST_PREFIX = "DEVHOST_"
CODE_DIRS = ("shared", "functions")
CODE_FILES = ("function_app.py",)
TABLE = "shared/config.py SETTINGS"


@dataclass(frozen=True)
class CodeSetting:
    """One environment setting the code reads, where, and its default if any."""

    name: str
    where: str
    default: object = None


def settings_read_by_code(
    repo: Path = REPO, table: Sequence[SettingSpec] = SETTINGS
) -> dict[str, CodeSetting]:
    """Every row of the settings table, plus every literal ``os.environ`` / ``os.getenv`` read
    in the app's code (devhost-only ``DEVHOST_*`` aside)."""
    found = {spec.name: CodeSetting(spec.name, TABLE, spec.default) for spec in table}
    for path in _code_files(repo):
        for setting in environ_reads(path.read_text(encoding="utf-8")):
            if not setting.name.startswith(DEVHOST_PREFIX):
                found.setdefault(setting.name, _relocate(setting, path, repo))
    return found


def _relocate(setting: CodeSetting, path: Path, repo: Path) -> CodeSetting:
    where = f"{path.relative_to(repo).as_posix()}:{setting.where}"
    return CodeSetting(setting.name, where, setting.default)


def _code_files(repo: Path) -> Iterator[Path]:
    for directory in CODE_DIRS:
        yield from sorted((repo / directory).rglob("*.py"))
    for name in CODE_FILES:
        if (repo / name).is_file():
            yield repo / name


def _names_env(node: ast.expr) -> bool:
    """Whether ``node`` is the process environment or a mapping standing for it."""
    last = ast.unparse(node).split(".")[-1].lstrip("_")
    return last in ("env", "environ")


def _environ_key(node: ast.AST) -> ast.expr | None:
    """The key ``node`` reads from the environment, if it reads one."""
    if isinstance(node, ast.Subscript) and _names_env(node.value):
        return node.slice
    if isinstance(node, ast.Call) and node.args:
        function = node.func
        reads_env = isinstance(function, ast.Attribute) and (
            function.attr == "get" and _names_env(function.value)
        )
        if reads_env or ast.unparse(function) in ("os.getenv", "getenv"):
            return node.args[0]
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.In)
        and _names_env(node.comparators[0])
    ):
        return node.left
    return None


def environ_reads(source: str) -> list[CodeSetting]:
    """Literal keys read from the environment: ``os.environ[...]``, ``os.environ.get(...)``,
    ``os.getenv(...)``, and the same on an ``env`` mapping (``env``, ``self._env``) that stands
    for it, including ``"KEY" in env``."""
    found: list[CodeSetting] = []
    for node in ast.walk(ast.parse(source)):
        key = _environ_key(node)
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.append(CodeSetting(key.value, str(getattr(node, "lineno", 0))))
    return found


def setting_problems(
    read: Mapping[str, CodeSetting],
    bicep_settings: Iterable[str],
    sample_settings: Iterable[str],
    *,
    table: Sequence[SettingSpec] = SETTINGS,
) -> list[str]:
    """Every setting the code reads is set where its row says: in Azure unless local-only, in
    the local settings sample unless the platform sets it; local-only settings stay out of
    Azure; no row or allowlist entry is stale."""
    bicep = set(bicep_settings)
    sample = set(sample_settings)
    local_only = {spec.name: spec.note for spec in table if spec.local_only}
    platform = {
        spec.name
        for spec in table
        if Where.SAMPLE not in spec.set_in and Where.LOCAL_ALTERNATIVE not in spec.set_in
    }
    alternatives = {spec.name for spec in table if Where.LOCAL_ALTERNATIVE in spec.set_in}
    problems: list[str] = []
    for name, setting in sorted(read.items()):
        if name in platform or name in OPTIONAL_UNSET:
            continue
        if name in local_only:
            if name in bicep:
                problems.append(
                    f"{name} ({setting.where}) is local-only ({local_only[name]}) but "
                    "infra/main.bicep sets it"
                )
        elif name not in bicep:
            problems.append(
                f"{name} ({setting.where}) is read by the code but not set in "
                "infra/main.bicep appSettings"
            )
        if name in alternatives:
            if name in sample:
                problems.append(
                    f"{name} is an alternative set by hand ({local_only[name]}); "
                    "local.settings.sample.json must not list it"
                )
        elif name not in sample:
            problems.append(
                f"{name} ({setting.where}) is read by the code but missing from "
                "local.settings.sample.json"
            )
    for name in sorted((set(local_only) | platform | set(OPTIONAL_UNSET)) - set(read)):
        problems.append(
            f"{name} is listed in {TABLE} or OPTIONAL_UNSET but the code no longer reads it"
        )
    return problems


def secret_problems(
    app_settings: Mapping[str, str], table: Sequence[SettingSpec] = SETTINGS
) -> list[str]:
    """A secret the Bicep sets is a Key Vault reference, as its row says; never a plain value
    (https://learn.microsoft.com/azure/app-service/app-service-key-vault-references)."""
    problems: list[str] = []
    for spec in table:
        expression = app_settings.get(spec.name)
        if expression is None:
            continue
        reference = KEYVAULT_REFERENCE.match(expression.strip("'\" "))
        if spec.kind is Kind.SECRET and Where.KEY_VAULT not in spec.set_in:
            problems.append(
                f"{spec.name} is a secret but infra/main.bicep sets it; a secret in Azure is a "
                f"Key Vault reference, and its row in {TABLE} says Where.KEY_VAULT"
            )
        elif Where.KEY_VAULT in spec.set_in and reference is None:
            problems.append(
                f"{spec.name} is set by infra/main.bicep to {expression}, not to a Key Vault "
                "reference (@Microsoft.KeyVault(SecretUri=...))"
            )
    return problems
