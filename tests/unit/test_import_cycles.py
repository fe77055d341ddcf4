"""No import cycles among the modules of ``shared``, ``devhost`` and ``functions``.

The graph is grimp's (the library import-linter runs on), with every import counted: those inside
functions and under ``TYPE_CHECKING`` too, since both tie the modules together all the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import grimp
import pytest

PACKAGES = ("shared", "devhost", "functions")


def strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, directly or not (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group: list[str] = []
                while not group or group[-1] != node:
                    group.append(stack.pop())
                    on_stack.discard(group[-1])
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def describe(group: list[str], graph: Mapping[str, set[str]]) -> str:
    """One cycle through ``group``'s first module, as ``a -> b -> a``."""
    members, start = set(group), group[0]
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return " -> ".join([*paths[node], start])
            if child not in paths:
                paths[child] = [*paths[node], child]
                frontier.append(child)
    return ", ".join(group)


def import_graph() -> dict[str, set[str]]:
    built = grimp.build_graph(*PACKAGES, cache_dir=None)
    return {
        module: set(built.find_modules_directly_imported_by(module)) & built.modules
        for module in built.modules
        if module.split(".")[0] in PACKAGES
    }


def test_the_application_has_no_import_cycles() -> None:
    graph = import_graph()
    cycles = [describe(group, graph) for group in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, ["a -> b -> a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"d"}}, ["a -> b -> c -> a"]),
        (
            {"x": {"y"}, "y": {"x"}, "p": {"q"}, "q": {"r"}, "r": {"p"}},
            ["p -> q -> r -> p", "x -> y -> x"],
        ),
    ],
)
def test_cycles_are_found_and_named(graph: dict[str, set[str]], expected: list[str]) -> None:
    assert sorted(describe(group, graph) for group in strongly_connected(graph)) == expected
