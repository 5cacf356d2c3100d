"""Checks of user input before any work starts; every error names the offending key, value or frame.

Torch-free, so that the labeller and the AiiDA plugin can use it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.io import iread

from .neighbours import neighbour_pairs

#: Atoms nearer than this fraction of the sum of their covalent radii overlap. The shortest bond
#: known, H2's 0.74 Å, is 1.2 times the H-H sum (0.62 Å) and even megabar compression shortens
#: bonds by far less than half, so such a pair is a duplicated atom or a unit or coordinate mix-up,
#: not chemistry (H-H 0.31 Å, C-C 0.76 Å, Cu-Cu 1.32 Å).
OVERLAP_FRACTION = 0.5

#: Least volume (Å^3) per atom of a periodic cell: the densest solid, diamond, has 5.7 Å^3/atom.
MIN_VOLUME_PER_ATOM = 1.0

#: A range rule of a setting: (test, what the test requires, for the message).
Rule = tuple[Callable[[Any], bool], str]


def at_least(low: float) -> Rule:
    return (lambda value: value >= low, f">= {low}")


def greater_than(low: float) -> Rule:
    return (lambda value: value > low, f"> {low}")


def within(low: float, high: float) -> Rule:
    """``low <= value < high``."""
    return (lambda value: low <= value < high, f"in [{low}, {high})")


def one_of(*choices: str) -> Rule:
    return (lambda value: value in choices, "one of " + ", ".join(repr(c) for c in choices))


def each_at_least(low: int) -> Rule:
    return (lambda values: all(v >= low for v in values), f"a list of integers >= {low}")


NON_EMPTY: Rule = (lambda value: len(value) > 0, "non-empty")


def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as read from YAML or JSON) fits the type hint; NaN is no number, bool no int.

    A list fits a tuple hint and vice versa (YAML and JSON have only lists).
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(matches_type(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(matches_type(v, item) for v in value)
    if origin is dict:
        key, item = args
        return isinstance(value, dict) and all(matches_type(k, key) and matches_type(v, item) for k, v in value.items())
    return isinstance(value, origin or hint)


def describe_type(hint: Any) -> str:
    """``int | None`` -> ``an integer or null``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping", list: "a list"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple):
        return f"a list of {describe_type(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin is dict:
        return f"a mapping of {describe_type(args[0]).split(' ', 1)[-1]} to {describe_type(args[1]).split(' ', 1)[-1]}"
    return f"a {getattr(hint, '__name__', hint)}"


def check_settings(values: Mapping[str, Any], hints: Mapping[str, Any], rules: Mapping[str, Rule], what: str) -> None:
    """Type and range of every value; ``what`` names the kind (``training setting``) in the message."""
    for name, value in values.items():
        if not matches_type(value, hints[name]):
            raise ValueError(f"{what} {name}: {value!r} is not {describe_type(hints[name])}")
        if value is not None and name in rules and not rules[name][0](value):
            raise ValueError(f"{what} {name}={value!r} must be {rules[name][1]}")


def check_dataclass(instance: Any, rules: Mapping[str, Rule], what: str) -> None:
    """:func:`check_settings` on every field of a dataclass instance."""
    values = {f.name: getattr(instance, f.name) for f in fields(instance)}
    check_settings(values, get_type_hints(type(instance)), rules, what)


def read_structures(path: str | Path) -> list[Atoms]:
    """All frames of an extxyz (or other ASE-readable) file; a malformed file's error names the file,
    the frame and, for (ext)xyz, the line where that frame starts."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"structure file {path} does not exist")
    frames: list[Atoms] = []
    if path.stat().st_size > 0:
        try:
            frames.extend(iread(path, index=":"))
        except Exception as error:  # ASE raises many kinds of error (OSError, ValueError, KeyError ...) on bad files
            line = f" (from line {1 + sum(len(atoms) + 2 for atoms in frames)})" if path.suffix in (".xyz", ".extxyz") else ""
            raise ValueError(f"{path}: cannot read frame {len(frames)}{line}: {type(error).__name__}: {error}") from error
    if not frames:
        raise ValueError(f"{path} holds no structures")
    return frames


def overlapping_pair(atoms: Atoms) -> tuple[int, int, float, float] | None:
    """The nearest pair ``(i, j, distance, threshold)`` (Å) of overlapping atoms, periodic images
    included (``i == j`` for an atom and its own image); None when no atoms overlap."""
    radii = OVERLAP_FRACTION * covalent_radii[atoms.numbers]
    first, second, distances = neighbour_pairs("ijd", atoms, radii)
    if len(distances) == 0:
        return None
    nearest = int(distances.argmin())
    i, j = int(first[nearest]), int(second[nearest])
    return i, j, float(distances[nearest]), float(radii[i] + radii[j])


def check_structure(atoms: Atoms) -> None:
    """Refuse a structure without atoms, with non-finite positions, a periodic cell of (near) zero
    volume, or overlapping atoms (:data:`OVERLAP_FRACTION`); the message says what is wrong."""
    if len(atoms) == 0:
        raise ValueError("it has no atoms")
    not_finite = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
    if len(not_finite):
        raise ValueError(f"atom {not_finite[0]} has position {atoms.positions[not_finite[0]].tolist()} Å")
    if atoms.pbc.any():
        volume = abs(atoms.cell.volume)
        if not volume >= MIN_VOLUME_PER_ATOM * len(atoms):
            raise ValueError(
                f"its periodic cell (pbc {atoms.pbc.tolist()}) has a volume of {volume:.3g} Å^3 for {len(atoms)} atoms, "
                f"less than {MIN_VOLUME_PER_ATOM} Å^3 per atom: cell {np.round(atoms.cell[:], 4).tolist()} Å"
            )
    pair = overlapping_pair(atoms)
    if pair is not None:
        i, j, distance, threshold = pair
        symbols = atoms.get_chemical_symbols()
        which = f"atom {i} ({symbols[i]}) and its periodic image" if i == j else f"atoms {i} ({symbols[i]}) and {j} ({symbols[j]})"
        raise ValueError(
            f"{which} are {distance:.3g} Å apart, less than {threshold:.3g} Å "
            f"({OVERLAP_FRACTION} times the sum of their covalent radii): overlapping atoms"
        )


#: Model settings every member of one ensemble must share: its species and its cutoff (Å).
ENSEMBLE_SHARED = ("atomic_numbers", "r_max")


def check_ensemble(members: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse an ensemble (checkpoint file -> its model settings) whose members differ in
    :data:`ENSEMBLE_SHARED`; the message names the two files and the difference."""
    (first, reference), *others = members.items()
    for path, settings in others:
        for key in ENSEMBLE_SHARED:
            if settings[key] != reference[key]:
                raise ValueError(f"ensemble members {first} and {path} differ in {key}: {reference[key]} and {settings[key]}")
