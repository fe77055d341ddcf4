"""The deployed set: requirements.in names what the Function App imports, requirements.txt locks it.

The Functions build installs requirements.txt; it must hold exact versions (``make lock`` makes
it from requirements.in) and nothing the app does not import. The imports are found statically
from function_app.py through every local module it can reach, lazy imports inside functions
included; an import inside ``if TYPE_CHECKING:`` never runs, and one inside a ``try`` whose
handler catches ImportError is optional (the code works without it).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.txt"
SPEC = ROOT / "requirements.in"
LOCAL_PACKAGES = frozenset({"function_app", "functions", "shared", "devhost", "bench", "infra"})
DEV_ONLY = ("aiohttp", "rich", "azure-eventhub", "azure-storage-blob", "tiktoken", "jsonschema")
"""devhost, benchmark, test and producer-side packages: the Function App must not need them."""

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;=]+)(\s*;.*)?$")
_OPTIONAL_HANDLERS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file: comments and blank lines left out."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def locked() -> dict[str, str]:
    return {
        canonicalize_name(m["name"]): m["version"]
        for m in (_PIN.match(line) for line in requirement_lines(LOCK))
        if m is not None
    }


def declared() -> dict[str, Requirement]:
    requirements = (Requirement(line) for line in requirement_lines(SPEC))
    return {canonicalize_name(r.name): r for r in requirements}


# -- the imports the Function App can make ---------------------------------------------------


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _catches_import_errors(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in _OPTIONAL_HANDLERS for n in names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, optional) for every import statement that can run."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(nodes: list[ast.stmt], optional: bool) -> Iterator[tuple[str, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, optional
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                # ``from pkg import name``: name is a submodule or an attribute of pkg. A local
                # pkg is walked, and pkg.name too when it is a module; a third-party one is
                # looked up as pkg.name (its distribution is pkg's when name is an attribute).
                if base.split(".")[0] in LOCAL_PACKAGES:
                    yield base, optional
                    names = [f"{base}.{a.name}" for a in node.names]
                    yield from ((n, optional) for n in names if _module_file(n) is not None)
                else:
                    yield from ((f"{base}.{a.name}", optional) for a in node.names)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from visit(node.orelse, optional)
            elif isinstance(node, ast.Try):
                guarded = any(_catches_import_errors(h) for h in node.handlers)
                yield from visit(node.body, optional or guarded)
                for handler in node.handlers:
                    yield from visit(handler.body, optional)
                yield from visit(node.orelse + node.finalbody, optional)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        statements = [c for c in children if isinstance(c, ast.stmt)]
                        statements += [
                            s
                            for c in children
                            if not isinstance(c, ast.stmt)
                            for s in getattr(c, "body", [])
                        ]
                        yield from visit(statements, optional)

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    yield from visit(tree.body, False)


@cache
def runtime_imports() -> tuple[frozenset[str], dict[str, bool]]:
    """The local modules reachable from function_app.py, and every third-party module they
    import (with whether every import of it is optional)."""
    seen: set[str] = set()
    third_party: dict[str, bool] = {}
    pending = ["function_app"]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        for imported, optional in _imports(module, path):
            top = imported.split(".")[0]
            if top in LOCAL_PACKAGES:
                pending.append(imported)
            elif top and top not in sys.stdlib_module_names:
                third_party[imported] = third_party.get(imported, True) and optional
    local = frozenset(m for m in seen if _module_file(m) is not None)
    return local, third_party


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


@cache
def _files_of(distribution: str) -> tuple[str, ...]:
    return tuple(str(f) for f in metadata.distribution(distribution).files or ())


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module`` (namespace packages such as
    ``azure`` and ``opentelemetry`` are shared, so the module's own files decide; a name that is
    an attribute, not a module, is looked up as its package). None: unknown or ambiguous."""
    parts = module.split(".")
    candidates = _packages_distributions().get(parts[0], [])
    for size in range(len(parts), 0, -1):
        prefix = "/".join(parts[:size])
        owners = {
            canonicalize_name(d)
            for d in candidates
            if any(f == f"{prefix}.py" or f.startswith(f"{prefix}/") for f in _files_of(d))
        }
        if len(owners) > 1:
            # A package that others extend (azure.core, which azure-core-tracing-opentelemetry
            # adds a subpackage to) belongs to the distribution with its __init__.py.
            owners = {
                canonicalize_name(d)
                for d in candidates
                if canonicalize_name(d) in owners and f"{prefix}/__init__.py" in _files_of(d)
            } or owners
        if owners:
            return owners.pop() if len(owners) == 1 else None
    return None


# -- the tests -------------------------------------------------------------------------------


def test_every_line_of_the_lock_pins_one_exact_version() -> None:
    lines = requirement_lines(LOCK)
    assert lines, "requirements.txt is empty"
    unpinned = [line for line in lines if _PIN.match(line) is None]
    assert unpinned == []
    assert len(locked()) == len(lines)  # no package twice


def test_the_lock_says_how_it_was_made() -> None:
    header = LOCK.read_text(encoding="utf-8").splitlines()[:2]
    assert header == [
        "# This file was autogenerated by uv via the following command:",
        "#    make lock",
    ]
    assert "uv pip compile requirements.in --output-file requirements.txt" in (
        ROOT / "Makefile"
    ).read_text(encoding="utf-8")


def test_every_declared_requirement_is_locked_within_its_range() -> None:
    pins = locked()
    for name, requirement in declared().items():
        assert name in pins, f"{name} is in requirements.in but not in the lock: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside {requirement.specifier}: run make lock"
        )


def test_the_lock_is_complete_and_is_what_the_tests_run_on() -> None:
    pins = locked()
    environment = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
    missing: list[str] = []
    for name, version in pins.items():
        installed = metadata.version(name)
        assert installed == version, f"{name} {installed} is installed, the lock says {version}"
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker is not None and not requirement.marker.evaluate(
                {**environment, "extra": ""}
            ):
                continue
            if canonicalize_name(requirement.name) not in pins:
                missing.append(f"{requirement.name} (needed by {name})")
    assert missing == []


def test_every_runtime_import_is_provided_by_a_declared_requirement() -> None:
    local, third_party = runtime_imports()
    assert {"shared.agents.structured", "shared.adapters.azure.openai_chat"} <= local
    assert not any(m.startswith(("devhost", "bench")) for m in local)
    names = declared()
    unprovided: dict[str, str | None] = {}
    for module, optional in sorted(third_party.items()):
        if optional:
            continue
        owner = distribution_of(module)
        if owner not in names:
            unprovided[module] = owner
    assert unprovided == {}, "add these distributions to requirements.in, then make lock"


def test_the_producer_and_devhost_packages_do_not_ship() -> None:
    _, third_party = runtime_imports()
    required = {distribution_of(m) for m, optional in third_party.items() if not optional}
    pins = locked()
    for name in DEV_ONLY:
        assert name not in pins
        assert name not in declared()
        assert name not in required
    assert "shared.adapters.azure.eventhub_producer" not in runtime_imports()[0]
    assert "shared.adapters.azure.blob_source" not in runtime_imports()[0]


def test_an_import_guarded_for_its_absence_is_optional() -> None:
    _, third_party = runtime_imports()
    assert third_party.get("tiktoken") is True  # shared/llm/tokens.py falls back to chars/4
    assert third_party.get("openai") is False
