"""One line that says why labelling failed, from the ``failures`` of a labeller's report."""

from __future__ import annotations


def describe_failures(failures: list[dict], where: str = "the `report` output") -> str:
    """The first failed structure's error and how many more failed, e.g. ``structure 0: NotImplementedError: No
    EMT-potential for Si (and 3 more, in the `report` output)``; ``failures`` holds ``{"index", "error"}`` entries."""
    if not failures:
        return "no structure failed"
    first = failures[0]
    more = f" (and {len(failures) - 1} more, in {where})" if len(failures) > 1 else ""
    return f"structure {first['index']}: {first['error']}{more}"
