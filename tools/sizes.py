"""Modules over 500 lines and functions over 60 lines in the application's packages, each with
the reason it is that long; ``make lint`` fails on one without a reason.

A long module or function has to earn its length: the reasons live in ``tools/sizes.toml``
(``"path"`` for a module, ``"path:function"`` for a function), where a reviewer reads them
beside the code that changed. A reason for something no longer long is reported too, so the
list does not outlive what it explains.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOTS = ("shared", "functions", "devhost", "infra", "bench")
MODULE_LINES = 500
FUNCTION_LINES = 60


def measure(root: Path) -> dict[str, int]:
    """Every module over ``MODULE_LINES`` and function over ``FUNCTION_LINES``, by key, with
    its length. A function's key is ``path:name`` (nested and same-named ones share a key:
    the longest counts)."""
    found: dict[str, int] = {}
    for package in ROOTS:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(root).as_posix()
            count = text.count("\n")
            if count > MODULE_LINES:
                found[where] = count
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    key = f"{where}:{node.name}"
                    if length > FUNCTION_LINES and length > found.get(key, 0):
                        found[key] = length
    return found


def load_reasons(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    table = tomllib.loads(path.read_text(encoding="utf-8")).get("reasons", {})
    if not all(isinstance(v, str) and v.strip() for v in table.values()):
        raise ValueError(f"{path}: every reason must be a non-empty string")
    return dict(table)


def report(found: dict[str, int], reasons: dict[str, str]) -> tuple[list[str], list[str]]:
    """Lines to print, and the keys that are long without a reason."""
    lines: list[str] = []
    missing: list[str] = []
    for key, length in sorted(found.items(), key=lambda item: -item[1]):
        kind = "function" if ":" in key else "module"
        reason = reasons.get(key)
        if reason is None:
            missing.append(key)
        lines.append(f"  {kind:8} {length:5d}  {key}  -- {reason or 'NO REASON GIVEN'}")
    for key in sorted(set(reasons) - set(found)):
        lines.append(f"  stale reason (no longer long): {key}")
    return lines, missing


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    found = measure(root)
    lines, missing = report(found, load_reasons(root / "tools" / "sizes.toml"))
    print(
        f"over {MODULE_LINES} lines per module or {FUNCTION_LINES} per function: {len(found)}, "
        f"{len(missing)} without a reason"
    )
    print("\n".join(lines))
    if missing:
        print("give each a reason in tools/sizes.toml, or make it shorter", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
