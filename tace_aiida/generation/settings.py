"""Transformation settings: one frozen dataclass per ``type``, read from plain dicts.

A transformation is written ``{"type": "strain", "volumetric": [-0.02, 0.02], ...}``; :func:`read_transformations`
checks every key and value and raises ``ValueError`` naming the step, the key and the value. Lengths in Å,
strains as fractions (0.02 = 2 %).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


def _numbers(value: Any, key: str, minimum: float | None = None, integer: bool = False) -> tuple:
    """``value`` (a number or a list of numbers) as a non-empty tuple; every item >= ``minimum``."""
    items = value if isinstance(value, list | tuple) else [value]
    kinds = (int,) if integer else (int, float)
    if not items or any(isinstance(item, bool) or not isinstance(item, kinds) for item in items):
        raise ValueError(f"{key} must be {'an integer' if integer else 'a number'} or a non-empty list of them, "
                         f"not {value!r}")
    if minimum is not None and any(item < minimum for item in items):
        raise ValueError(f"{key} must be >= {minimum}, not {value!r}")
    return tuple(items)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be an integer >= 1, not {value!r}")
    return value


def _species(value: Any, key: str) -> str:
    from pymatgen.core import Element

    if not isinstance(value, str) or not Element.is_valid_symbol(value):
        raise ValueError(f"{key} must be a chemical symbol such as 'Cu', not {value!r}")
    return value


@dataclass(frozen=True)
class Transformation:
    """Settings common to every transformation: ``keep_parents`` also passes the step's inputs on unchanged."""

    type: ClassVar[str]
    keep_parents: bool = False

    def check(self) -> None:
        if not isinstance(self.keep_parents, bool):
            raise ValueError(f"keep_parents must be true or false, not {self.keep_parents!r}")


@dataclass(frozen=True)
class Supercell(Transformation):
    """``matrix``: 3 integers (diagonal) or a 3x3 integer matrix, as pymatgen's ``make_supercell``."""

    type: ClassVar[str] = "supercell"
    matrix: Any = (1, 1, 1)

    def check(self) -> None:
        super().check()
        rows = self.matrix if isinstance(self.matrix, list | tuple) else None
        flat = [item for row in rows for item in (row if isinstance(row, list | tuple) else [row])] if rows else []
        if len(rows or []) != 3 or len(flat) not in (3, 9) or any(
                isinstance(item, bool) or not isinstance(item, int) for item in flat):
            raise ValueError(f"matrix must be 3 integers or a 3x3 integer matrix, not {self.matrix!r}")


@dataclass(frozen=True)
class Strain(Transformation):
    """``volumetric``: isotropic linear strains; ``shear``: engineering shear strains, each applied to yz, xz, xy."""

    type: ClassVar[str] = "strain"
    volumetric: tuple = ()
    shear: tuple = ()

    def check(self) -> None:
        super().check()
        if not self.volumetric and not self.shear:
            raise ValueError("give volumetric and/or shear strains, e.g. volumetric: [-0.02, 0.02]")
        for key in ("volumetric", "shear"):
            values = getattr(self, key)
            if values:
                _numbers(values, key, minimum=-0.5)


@dataclass(frozen=True)
class Rattle(Transformation):
    """``amplitudes``: standard deviations (Å) of Gaussian displacements (ASE ``rattle``); ``copies`` per amplitude."""

    type: ClassVar[str] = "rattle"
    amplitudes: tuple = (0.05,)
    copies: int = 1

    def check(self) -> None:
        super().check()
        _numbers(self.amplitudes, "amplitudes", minimum=0.0)
        _count(self.copies, "copies")


@dataclass(frozen=True)
class Vacancy(Transformation):
    """``count`` sites removed per variant (of ``species`` only, when given), ``variants`` random choices."""

    type: ClassVar[str] = "vacancy"
    count: int = 1
    variants: int = 1
    species: str | None = None

    def check(self) -> None:
        super().check()
        _count(self.count, "count")
        _count(self.variants, "variants")
        if self.species is not None:
            _species(self.species, "species")


@dataclass(frozen=True)
class Substitution(Transformation):
    """Replace a fraction of the ``replace`` sites by ``by`` (alloying): ``variants`` random choices per fraction."""

    type: ClassVar[str] = "substitution"
    replace: str = ""
    by: str = ""
    fractions: tuple = (0.5,)
    variants: int = 1

    def check(self) -> None:
        super().check()
        _species(self.replace, "replace")
        _species(self.by, "by")
        values = _numbers(self.fractions, "fractions", minimum=0.0)
        if any(value > 1 for value in values):
            raise ValueError(f"fractions must be in [0, 1], not {self.fractions!r}")
        _count(self.variants, "variants")


@dataclass(frozen=True)
class Surface(Transformation):
    """Slabs by pymatgen's ``SlabGenerator``: every termination of each of ``miller_indices``; sizes in Å."""

    type: ClassVar[str] = "surface"
    miller_indices: tuple = ((1, 1, 1),)
    min_slab_size: float = 8.0
    min_vacuum_size: float = 10.0

    def check(self) -> None:
        super().check()
        indices = self.miller_indices
        if not isinstance(indices, list | tuple) or not indices or any(
                not isinstance(index, list | tuple) or len(index) != 3 or not any(index)
                or any(isinstance(i, bool) or not isinstance(i, int) for i in index) for index in indices):
            raise ValueError(f"miller_indices must be a list of 3 integers each (not all 0), such as [[1, 1, 1]], "
                             f"not {indices!r}")
        _numbers(self.min_slab_size, "min_slab_size", minimum=1e-3)
        _numbers(self.min_vacuum_size, "min_vacuum_size", minimum=0.0)


@dataclass(frozen=True)
class Box(Transformation):
    """A molecule centred in a box with ``vacuum`` Å on every side (ASE ``Atoms.center``); ``periodic`` sets pbc."""

    type: ClassVar[str] = "box"
    vacuum: float = 6.0
    periodic: bool = False

    def check(self) -> None:
        super().check()
        _numbers(self.vacuum, "vacuum", minimum=0.0)
        if not isinstance(self.periodic, bool):
            raise ValueError(f"periodic must be true or false, not {self.periodic!r}")


TRANSFORMATIONS: dict[str, type[Transformation]] = {
    cls.type: cls for cls in (Supercell, Strain, Rattle, Vacancy, Substitution, Surface, Box)
}


def read_transformation(settings: Any) -> Transformation:
    """The checked transformation of one ``{"type": ..., **settings}`` dict."""
    if not isinstance(settings, dict) or "type" not in settings:
        raise ValueError(f"a transformation must be a dict with a 'type' among {sorted(TRANSFORMATIONS)}, "
                         f"not {settings!r}")
    kind = settings["type"]
    if kind not in TRANSFORMATIONS:
        raise ValueError(f"unknown transformation type {kind!r}; choose among {sorted(TRANSFORMATIONS)}")
    cls = TRANSFORMATIONS[kind]
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(settings) - known - {"type"})
    if unknown:
        raise ValueError(f"{kind}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    transformation = cls(**{key: value for key, value in settings.items() if key != "type"})
    try:
        transformation.check()
    except ValueError as error:
        raise ValueError(f"{kind}: {error}") from None
    return transformation


def read_transformations(settings: Any) -> list[Transformation]:
    """The checked chain of transformations; an error names the step (1-based), its type, key and value."""
    if not isinstance(settings, list | tuple) or not settings:
        raise ValueError(f"transformations must be a non-empty list of dicts, not {settings!r}")
    chain = []
    for step, item in enumerate(settings, start=1):
        try:
            chain.append(read_transformation(item))
        except ValueError as error:
            raise ValueError(f"transformation {step}: {error}") from None
    return chain

