"""Outside programs and modules of the tests: missing ones skip a test, or fail it with ``TACE_REQUIRE_EXTERNAL=1``."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

REQUIRE_VARIABLE = "TACE_REQUIRE_EXTERNAL"


def _missing(reason: str) -> None:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1 requires it)")
    pytest.skip(reason)


def require_program(name: str) -> str:
    """The path of the executable ``name`` on PATH; skips (or fails) the test when there is none."""
    path = shutil.which(name)
    if path is None:
        _missing(f"program {name!r} not found on PATH")
    return path


def require_module(name: str) -> ModuleType:
    """The imported module ``name``; skips (or fails) the test when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        _missing(f"Python module {name!r} cannot be imported: {error}")
