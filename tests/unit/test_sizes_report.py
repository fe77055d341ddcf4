"""tools/sizes.py: long modules and functions need a stated reason."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _sizes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sizes_tool", ROOT / "tools" / "sizes.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sizes_tool"] = module
    spec.loader.exec_module(module)
    return module


def _write_tree(root: Path, function_lines: int, module_lines: int) -> None:
    package = root / "shared"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(function_lines - 1))
    filler = "\n" * (module_lines - function_lines)
    (package / "big.py").write_text(f"def long_one():\n{body}\n{filler}", encoding="utf-8")


def test_long_functions_and_modules_are_found_with_their_lengths(tmp_path: Path) -> None:
    sizes = _sizes()
    _write_tree(tmp_path, function_lines=61, module_lines=501)
    found = sizes.measure(tmp_path)
    assert found == {"shared/big.py": 501, "shared/big.py:long_one": 61}


def test_at_the_limits_nothing_is_reported(tmp_path: Path) -> None:
    sizes = _sizes()
    _write_tree(tmp_path, function_lines=60, module_lines=500)
    assert sizes.measure(tmp_path) == {}


def test_a_long_one_without_a_reason_is_missing_and_a_reason_for_a_short_one_is_stale() -> None:
    sizes = _sizes()
    found = {"shared/big.py": 700, "shared/big.py:long_one": 80}
    lines, missing = sizes.report(
        found, {"shared/big.py": "one state machine", "shared/gone.py": "was long"}
    )
    assert missing == ["shared/big.py:long_one"]
    assert any("one state machine" in line for line in lines)
    assert any("stale reason" in line and "shared/gone.py" in line for line in lines)


def test_the_project_tree_gives_every_long_one_a_reason() -> None:
    sizes = _sizes()
    found = sizes.measure(ROOT)
    _, missing = sizes.report(found, sizes.load_reasons(ROOT / "tools" / "sizes.toml"))
    assert missing == []
