"""The simulator's pattern generator, checked against Python's own ``re`` as the oracle.

Every string the generator emits must ``re.fullmatch`` its pattern; syntax outside the subset
raises ``UnsupportedPattern`` naming the pattern, and ``example_for`` then gives up (None).
JSON Schema's ``pattern`` keyword is an ECMA-262 regex, unanchored ("JSON Schema Validation",
section 6.3.3, https://json-schema.org/draft/2020-12/json-schema-validation#section-6.3.3).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, PydanticUserError

import shared.domain
from devhost.simulator.patterns import UnsupportedPattern, example_for, generate
from shared.domain import messages

# -- patterns built from the supported constructs -------------------------------------------------

_LITERALS = st.sampled_from([*"abcXYZ019 -_@:/", r"\.", r"\-", r"\\", r"\(", r"\+", "}"])
_SHORTHANDS = st.sampled_from([r"\d", r"\D", r"\w", r"\W", r"\s", r"\S", "."])
_RANGES = st.sampled_from(["a-z", "A-Z", "0-9", "a-f", "._:@", r"\d", r"\w", r"\s", r"\-"])


@st.composite
def _classes(draw: st.DrawFn) -> str:
    items = "".join(draw(st.lists(_RANGES, min_size=1, max_size=3)))
    return f"[{'^' if draw(st.booleans()) else ''}{items}]"


_QUANTIFIERS = st.sampled_from(
    ["", "", "?", "*", "+", "{2}", "{1,3}", "{0,}", "{,2}", "{2,}", "+?", "*?", "??", "{1,2}?"]
)
# Groups repeat a bounded number of times: a group repeated without bound around other repeats,
# ``(\D|.*)*aa``, sends ``re``'s backtracking exponential even on a string that matches.
_GROUP_QUANTIFIERS = st.sampled_from(["", "", "?", "{2}", "{1,2}", "{,2}", "??"])


def _patterns() -> st.SearchStrategy[str]:
    atoms = st.one_of(_LITERALS, _SHORTHANDS, _classes())

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        groups = st.tuples(
            st.sampled_from(["(", "(?:", "(?P<g>"]), st.lists(inner, min_size=1, max_size=3)
        ).map(lambda t: f"{t[0]}{'|'.join(t[1])})")
        return st.one_of(
            st.tuples(atoms, _QUANTIFIERS).map("".join),
            st.tuples(groups, _GROUP_QUANTIFIERS).map("".join),
            st.lists(inner, min_size=2, max_size=4).map("".join),
        )

    body = st.recursive(st.tuples(atoms, _QUANTIFIERS).map("".join), extend, max_leaves=8).filter(
        lambda p: "(?P<g>" not in p or p.count("(?P<g>") == 1
    )
    return st.tuples(
        st.sampled_from(["", "^", r"\A"]), body, st.sampled_from(["", "$", r"\Z"])
    ).map("".join)


@given(pattern=_patterns(), seed=st.integers(min_value=0, max_value=2**32))
def test_every_generated_string_fullmatches_its_pattern(pattern: str, seed: int) -> None:
    text = generate(pattern, random.Random(seed))
    assert re.fullmatch(pattern, text), (pattern, text)


# -- the project's own patterns ------------------------------------------------------------------


def _schema_patterns(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield schema["pattern"]
        for value in schema.values():
            yield from _schema_patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _schema_patterns(value)


def _project_patterns() -> list[str]:
    """Every ``pattern`` in the JSON schemas of the domain's pydantic models."""
    modules = [
        importlib.import_module(f"shared.domain.{info.name}")
        for info in pkgutil.iter_modules(shared.domain.__path__)
    ]
    models = {
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel
    }
    found: set[str] = set()
    for model in models:
        with contextlib.suppress(PydanticUserError):  # generic or incomplete models
            found.update(_schema_patterns(model.model_json_schema()))
    return sorted(found)


def test_the_project_schemas_carry_patterns() -> None:
    assert messages.ID_PATTERN in _project_patterns()


@pytest.mark.parametrize("pattern", _project_patterns())
def test_every_project_pattern_is_generated(pattern: str) -> None:
    for seed in range(50):
        text = generate(pattern, random.Random(seed))
        assert re.fullmatch(pattern, text), text


def test_seeds_give_varied_strings() -> None:
    texts = {generate(messages.ID_PATTERN, random.Random(seed)) for seed in range(20)}
    assert len(texts) > 10


# -- what is refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"^(?=a)a$", "'(?='"),
        (r"(?<!x)y", "'(?<'"),
        (r"(?i)abc", "'(?i'"),
        (r"(a)\1", "escape '\\1'"),
        (r"\bword\b", "escape '\\b'"),
        (r"\p{L}+", "not a regular expression"),
        (r"[a-z", "not a regular expression"),
        (r"a{3,1}", "not a regular expression"),
        (r"a^b", "does not match"),
        (r"[^\w\W]", "excludes every character"),
        (r"a*+", "repeated repeat"),
    ],
)
def test_unsupported_syntax_raises_an_error_naming_the_pattern(pattern: str, reason: str) -> None:
    with pytest.raises(UnsupportedPattern) as caught:
        generate(pattern, random.Random(0))
    assert repr(pattern) in str(caught.value)
    assert reason in str(caught.value)


def test_example_for_gives_up_on_unsupported_syntax() -> None:
    assert example_for(r"^(?=x)x$", random.Random(0)) is None
    assert example_for(r"[", random.Random(0)) is None


def test_example_for_keeps_a_natural_value_that_searches_the_unanchored_pattern() -> None:
    assert example_for(r"\d{3}", random.Random(0), preferred="order 123 late") == "order 123 late"


def test_literal_braces_are_literals_as_re_reads_them() -> None:
    for pattern in (r"^x{}$", r"^{a}$", r"^a{x$", r"^a{,}b$"):
        text = generate(pattern, random.Random(1))
        assert re.fullmatch(pattern, text), (pattern, text)
