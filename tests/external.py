"""Outside programs and modules of the tests: missing ones skip a test, or fail it with ``TACE_REQUIRE_EXTERNAL=1``.

A fast test that needs one is marked ``external``: CI runs the fast tests before it installs the programs,
and afterwards only the slow tests and the ``external`` ones (``-m "slow or external"``).
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

REQUIRE_VARIABLE = "TACE_REQUIRE_EXTERNAL"

#: The test being set up or run (set by ``tests/conftest.py``).
running_test: pytest.Item | None = None


def _missing(reason: str) -> None:
    if running_test is not None and not any(running_test.get_closest_marker(name) for name in ("external", "slow")):
        pytest.fail(f"{reason}; mark the test `external`, or CI will never run it with the program")
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
