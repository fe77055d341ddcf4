"""No import cycles among the modules of ``shared``, ``devhost`` and ``functions``.

The graph is grimp's (the library import-linter runs on), with every import counted: those inside
functions and under ``TYPE_CHECKING`` too, since both tie the modules together all the same. The
cycle search is the standard library's (``graphlib.TopologicalSorter``).
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping

import grimp
import pytest

PACKAGES = ("shared", "devhost", "functions")


def find_cycle(graph: Mapping[str, set[str]]) -> str | None:
    """One import cycle of ``graph`` (module -> the modules it imports), as ``a -> b -> a``."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        # graphlib lists each module before the one that imports it: reversed, importer first.
        return " -> ".join(reversed(exc.args[1]))
    return None


def import_graph() -> dict[str, set[str]]:
    built = grimp.build_graph(*PACKAGES, cache_dir=None)
    return {
        module: (set(built.find_modules_directly_imported_by(module)) & built.modules) - {module}
        for module in built.modules
        if module.split(".")[0] in PACKAGES
    }


def test_the_application_has_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {cycle}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, "a -> b -> a"),
        ({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}, "a -> b -> c -> a"),
    ],
)
def test_a_cycle_is_found_and_named_importer_first(
    graph: dict[str, set[str]], expected: str | None
) -> None:
    assert find_cycle(graph) == expected
