"""Report modules over 500 lines and functions over 60 lines in the application's packages.

Run by ``make lint``; it reports and does not fail: a long module or function should earn its
length, and this list is where a reviewer sees which ones have to.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOTS = ("shared", "functions", "devhost", "infra", "bench")
MODULE_LINES = 500
FUNCTION_LINES = 60


def report(root: Path) -> list[str]:
    lines: list[str] = []
    for package in ROOTS:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            count = text.count("\n")
            where = path.relative_to(root)
            if count > MODULE_LINES:
                lines.append(f"module   {count:5d}  {where}")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > FUNCTION_LINES:
                        lines.append(f"function {length:5d}  {where}:{node.lineno} {node.name}")
    return lines


def main() -> int:
    found = report(Path(__file__).resolve().parents[1])
    print(f"over {MODULE_LINES} lines per module or {FUNCTION_LINES} per function: {len(found)}")
    for line in sorted(found, key=lambda x: -int(x.split()[1])):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
