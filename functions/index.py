"""The Function App indexed once per process, and the host's ``%SETTING%`` placeholders.

devhost (to run the functions) and the infra checks (to compare bindings with Bicep) both read
the app through :func:`indexed_functions`: ``app.get_functions()`` indexes an app once, and a
second call reports every function as a duplicate.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"%([^%]+)%")
"""``%NAME%`` in a binding: resolved from the app settings by the Functions host."""

_INDEXED: dict[int, tuple[Any, list[Any]]] = {}
"""By ``id(app)``, with the app itself held so that its id cannot be reused by another."""


def function_app(root: Path, *, module: str = "function_app") -> Any:
    """The ``FunctionApp`` that ``root/function_app.py`` builds (imported once per process)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(module).app


def indexed_functions(app: Any) -> list[Any]:
    """``app.get_functions()``, once per app."""
    key = id(app)
    if key not in _INDEXED:
        _INDEXED[key] = (app, list(app.get_functions()))
    return _INDEXED[key][1]
