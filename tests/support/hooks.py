"""The azd hooks under ``infra/hooks``, loaded as modules (they are scripts, not a package)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

INFRA = Path(__file__).resolve().parents[2] / "infra"


@functools.cache
def load_postdeploy_hook() -> ModuleType:
    """``infra/hooks/postdeploy.py``, loaded once per session so that every test sees the same
    classes (``CommandFailed`` raised by one load is caught by the same load's ``except``)."""
    spec = importlib.util.spec_from_file_location(
        "postdeploy_hook", INFRA / "hooks" / "postdeploy.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module
